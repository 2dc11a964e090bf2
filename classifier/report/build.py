"""Building a report directory from labeled flow tables.

``ReportBuilder`` takes the classified (and registry-annotated) tables batch by batch,
as the pipeline produces them: every flow is streamed to ``flows.parquet`` (memory stays
bounded by the batch), while only the VPN flows and the flows for review, without list
columns, are kept for the aggregates, plots and the HTML page, which are written by
``finish()``.

Outputs (all written atomically, Parquet files carrying ``base_metadata``):
``flows.parquet`` (or the ``flows/`` dataset), ``vpn_use.parquet``,
``unregistered.parquet``, ``for_review.parquet`` (classifier.report.review), ``summary.json``
and ``report.html``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from classifier.flows.schema import REPORT_SCHEMA
from classifier.output import TableSink, base_metadata, write_text_atomic
from classifier.report import aggregate as agg
from classifier.report import review
from classifier.report.flows_writer import FlowsWriter


@dataclass
class ReportContext:
    """What produced the report: recorded in every file's metadata and in the page."""

    inputs: list[str]
    registry: dict[str, Any] | None = None  # Registry.describe()
    model: str | None = None  # "name version", or None when signatures only
    model_version: str | None = None
    anonymized: bool = False
    top: int = 20
    review_floor: float | None = review.DEFAULT_FLOOR  # None: no review list
    generated_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    errors: list[str] = field(default_factory=list)

    def metadata(self) -> dict[str, str]:
        reg = self.registry or {}
        return base_metadata(
            inputs=self.inputs,
            model=self.model or "none (signatures only)",
            model_version=self.model_version or "none",
            registry=reg.get("path") or "none",
            registry_sha256=reg.get("sha256") or "none",
            anonymized=self.anonymized,
            generated_at=self.generated_at,
        )


@dataclass
class ReportResult:
    """What ``finish()`` wrote and the figures the terminal summary prints."""

    out_dir: Path
    summary: dict[str, Any]
    vpn_use: pa.Table
    unregistered: pa.Table
    for_review: pa.Table
    files: dict[str, str]


class ReportBuilder:
    """Streams flows out and collects what the aggregates need; see the module docstring."""

    def __init__(self, out_dir: str | Path, context: ReportContext, partition_by: str | None = None,
                 anonymizer: Any = None) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.context = context
        self.anonymizer = anonymizer
        if anonymizer is not None:  # addresses may hide in file names too (capture-10.1.2.3.pcap)
            context.anonymized = True
            context.inputs = [anonymizer.text(x) for x in context.inputs]
        self._meta = context.metadata()
        self._flows = FlowsWriter(self.out_dir, REPORT_SCHEMA, self._meta, partition_by)
        self._vpn: list[pa.Table] = []
        self._review: list[pa.Table] = []
        self.flows = 0
        self.bytes = 0
        self.packets = 0
        self.tunnels = 0
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.captures: dict[str, int] = {}

    def add(self, table: pa.Table) -> None:
        """One labeled, registry-annotated batch (``REPORT_SCHEMA`` columns)."""
        if table.num_rows == 0:
            return
        if self.anonymizer is not None:
            table = self.anonymizer.table(table, text_columns=("evidence", "capture"))
        table = table.select(REPORT_SCHEMA.names)
        self._flows.write(table)
        n = table.num_rows
        self.flows += n
        self.bytes += int(pc.sum(table.column("bytes")).as_py() or 0)
        self.packets += int(pc.sum(table.column("packets")).as_py() or 0)
        self.tunnels += n - table.column("tunnel").null_count
        lo = pc.cast(pc.min(table.column("first_seen")), pa.int64()).as_py()
        hi = pc.cast(pc.max(table.column("last_seen")), pa.int64()).as_py()
        self.first_ns = lo if self.first_ns is None else min(self.first_ns, lo)
        self.last_ns = hi if self.last_ns is None else max(self.last_ns, hi)
        for cap, cnt in zip(*_value_counts(table.column("capture")), strict=True):
            self.captures[cap] = self.captures.get(cap, 0) + cnt
        vpn = table.filter(pc.fill_null(table.column("is_vpn"), False))
        if vpn.num_rows:
            self._vpn.append(vpn.select(list(agg.VPN_COLUMNS)))
        near = review.select_for_review(table, self.context.review_floor)
        if near.num_rows:
            self._review.append(near)

    def abort(self) -> None:
        self._flows.abort()

    def vpn_table(self) -> pa.Table:
        if self._vpn:
            return pa.concat_tables(self._vpn)
        return pa.schema([REPORT_SCHEMA.field(c) for c in agg.VPN_COLUMNS]).empty_table()

    def finish(self) -> ReportResult:
        """Write everything; returns what was written."""
        from classifier.report.html import render_html
        from classifier.report.summary import build_summary

        if self.anonymizer is not None:
            self.context.errors = [self.anonymizer.text(x) for x in self.context.errors]
        try:
            days = self._flows.close()
        except BaseException:
            self._flows.abort()
            raise
        vpn = self.vpn_table()
        use = agg.vpn_use(vpn)
        unreg = agg.unregistered_use(vpn)
        near = review.ranked(self._review)
        files = {
            "flows": str(self._flows.path),
            "vpn_use": str(self.out_dir / "vpn_use.parquet"),
            "unregistered": str(self.out_dir / "unregistered.parquet"),
            "for_review": str(self.out_dir / "for_review.parquet"),
            "summary": str(self.out_dir / "summary.json"),
            "html": str(self.out_dir / "report.html"),
        }
        for name, table, schema in (("vpn_use", use, agg.VPN_USE_SCHEMA), ("unregistered", unreg, agg.VPN_USE_SCHEMA),
                                    ("for_review", near, review.REVIEW_SCHEMA)):
            with TableSink(files[name], schema, "parquet", self._meta) as sink:
                sink.write(table)
        summary = build_summary(self, vpn, use, unreg, near, files, days)
        write_text_atomic(files["summary"], json.dumps(summary, indent=2, sort_keys=False) + "\n")
        write_text_atomic(files["html"], render_html(summary, vpn, use, unreg, self.context))
        return ReportResult(self.out_dir, summary, use, unreg, near, files)


def _value_counts(column: pa.ChunkedArray) -> tuple[list[str], list[int]]:
    vc = pc.value_counts(column)
    return vc.field("values").to_pylist(), vc.field("counts").to_pylist()

