"""Ended flows of a live capture -> one Parquet file per period, each closed atomically.

Why rotate: a sensor runs for weeks; files of a few minutes each can be picked up,
copied and deleted while the capture goes on, and a crash loses at most the file being
written (it only ever exists under a temporary name). Files are named after the start
of their period (``flows-20250102T030500Z.parquet``); periods are aligned to multiples
of the rotation interval so names line up across sensors. The counters that describe
a period (kernel drops included) are only known when it ends, so they go into the
file's key-value metadata just before it is closed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from classifier.output import TableSink, base_metadata


class _PeriodSink(TableSink):
    """A Parquet TableSink that can add key-value metadata just before it closes."""

    def close_with(self, metadata: dict[str, str]) -> None:
        self._writer.add_key_value_metadata(metadata)  # type: ignore[union-attr]
        self.close()


def _stamp(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y%m%dT%H%M%SZ")


class RotatingParquet:
    """Writes tables into ``DIR/flows-<period start>.parquet``, a new file every ``period_s``.

    ``closing_metadata()`` is called when a file closes and returns what to add (drop
    counters, flow counts); ``metadata`` is fixed at open (interface, options).
    """

    def __init__(self, directory: str | Path, schema: pa.Schema, period_s: float,
                 metadata: dict[str, object], closing_metadata: Callable[[], dict[str, object]]) -> None:
        if period_s <= 0:
            raise ValueError("the rotation period must be positive")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.period_ns = int(period_s * 1e9)
        self.metadata = metadata
        self.closing_metadata = closing_metadata
        self.sink: _PeriodSink | None = None
        self.start_ns = 0
        self.files: list[Path] = []

    def _path_for(self, start_ns: int) -> Path:
        base = f"flows-{_stamp(start_ns)}"
        path = self.directory / f"{base}.parquet"
        n = 1
        while path.exists():  # a restart within the same period must not overwrite
            path = self.directory / f"{base}-{n}.parquet"
            n += 1
        return path

    def due(self, now_ns: int) -> bool:
        """Has the open file's period ended?"""
        return self.sink is not None and now_ns >= self.start_ns + self.period_ns

    def write(self, table: pa.Table, now_ns: int) -> None:
        """Append rows to the file of the period containing ``now_ns`` (rotating first if due)."""
        if table.num_rows == 0:
            return
        if self.due(now_ns):
            self.close(now_ns)
        if self.sink is None:
            self.start_ns = now_ns - now_ns % self.period_ns
            path = self._path_for(self.start_ns)
            meta = base_metadata(period_start=datetime.fromtimestamp(self.start_ns / 1e9, UTC).isoformat(),
                                 **self.metadata)
            self.sink = _PeriodSink(str(path), self.schema, "parquet", meta)
        self.sink.write(table)

    def close(self, now_ns: int) -> Path | None:
        """Close the open file (atomically renamed into place); returns its path."""
        if self.sink is None:
            return None
        extra = {"period_end": datetime.fromtimestamp(now_ns / 1e9, UTC).isoformat(),
                 "flows": self.sink.rows, **self.closing_metadata()}
        sink, self.sink = self.sink, None
        try:
            sink.close_with(base_metadata(**extra))
        except BaseException:
            sink.abort()
            raise
        path = Path(sink.path)
        self.files.append(path)
        return path

    def abort(self) -> None:
        if self.sink is not None:
            self.sink.abort()
            self.sink = None
