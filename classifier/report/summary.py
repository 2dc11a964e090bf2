"""``summary.json``: the report's figures in one machine-readable document.

Why JSON beside the Parquet files: dashboards, tickets and a sensor's monitoring read
a handful of numbers ("how many unregistered VPN clients today?") without a Parquet
reader. The terminal summary and the HTML page are rendered from the same dict, so
the three never disagree.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from classifier._version import __version__
from classifier.report import aggregate as agg

if TYPE_CHECKING:  # pragma: no cover
    from classifier.report.build import ReportBuilder


def iso(ns: int | None) -> str | None:
    """ns since the epoch -> ISO 8601 UTC with milliseconds."""
    if ns is None:
        return None
    stamp = dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _records(table: pa.Table, n: int | None = None) -> list[dict[str, Any]]:
    rows = table.slice(0, n).to_pylist() if n is not None else table.to_pylist()
    for row in rows:
        for k, v in row.items():
            if isinstance(v, dt.datetime):
                row[k] = v.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return rows


def _by_detection(vpn: pa.Table) -> dict[str, int]:
    """VPN flows per ``detection``: signature, model, endpoint (docs/model.md, Endpoint context)."""
    counts = {"signature": 0, "model": 0, "endpoint": 0}
    if vpn.num_rows:
        for c in pc.value_counts(pc.fill_null(vpn.column("detection"), "unknown")).to_pylist():
            counts[c["values"]] = c["counts"]
    return counts


def build_summary(builder: ReportBuilder, vpn: pa.Table, use: pa.Table, unreg: pa.Table, near: pa.Table,
                  files: dict[str, str], days: list[str]) -> dict[str, Any]:
    ctx = builder.context
    top = ctx.top
    reg = pc.fill_null(vpn.column("registered"), False) if vpn.num_rows else pa.array([], pa.bool_())
    reg_flows = int(pc.sum(pc.cast(reg, pa.int64())).as_py() or 0) if vpn.num_rows else 0
    un_flows = agg.unregistered_flows(vpn)
    clients = agg.top_endpoints(vpn, "client")
    servers = agg.top_endpoints(vpn, "server")
    return {
        "tool": "vpnid",
        "version": __version__,
        "generated_at": ctx.generated_at,
        "inputs": ctx.inputs,
        "captures": [{"capture": k, "flows": v} for k, v in builder.captures.items()],
        "model": {"name": ctx.model, "version": ctx.model_version} if ctx.model else None,
        "registry": ctx.registry,
        "anonymized": ctx.anonymized,
        "time_span": {"first_seen": iso(builder.first_ns), "last_seen": iso(builder.last_ns)},
        "flows": {
            "total": builder.flows,
            "bytes": builder.bytes,
            "packets": builder.packets,
            "vpn": vpn.num_rows,
            "vpn_bytes": int(pc.sum(vpn.column("bytes")).as_py() or 0) if vpn.num_rows else 0,
            "registered": reg_flows,
            "unregistered": vpn.num_rows - reg_flows,
            "unregistered_bytes": int(pc.sum(un_flows.column("bytes")).as_py() or 0) if un_flows.num_rows else 0,
            "non_vpn_tunnels": builder.tunnels,
            "vpn_by_detection": _by_detection(vpn),
        },
        "vpn_use": {
            "pairs": use.num_rows,
            "unregistered_pairs": unreg.num_rows,
            "unregistered_clients": clients.num_rows,
            "unregistered_servers": servers.num_rows,
        },
        "protocols": _records(agg.protocol_mix(vpn)),
        "registered_use": _records(agg.registered_use(vpn)),
        "top_unregistered_clients": _records(clients, top),
        "top_unregistered_servers": _records(servers, top),
        "unregistered_findings": _records(unreg.drop_columns(["registered_flows", "registration_id",
                                                              "organization", "matched_endpoint"]), top),
        # the model leaned VPN under its threshold: not findings (classifier.report.review)
        "for_review": {"floor": ctx.review_floor, "flows": near.num_rows,
                       "top": _records(near, top)},
        "errors": ctx.errors,
        "outputs": {**files, "flows_partitions": days} if days else files,
    }
