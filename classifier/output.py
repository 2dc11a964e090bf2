"""Writing tables: Parquet (zstd, with metadata), CSV or JSON lines, always atomically.

Why atomic: a crash or Ctrl-C must never leave a half-written file that looks
finished. Every writer streams into ``.NAME.tmp-PID`` beside the target and renames it
into place on ``close()``; ``abort()`` (or an exception inside ``with``) removes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from classifier._version import __version__

FORMATS = ("parquet", "csv", "jsonl")


def tmp_path_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``path``, on failure remove it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def base_metadata(**extra: object) -> dict[str, str]:
    """File metadata every output carries: tool version plus what the caller adds (inputs, model, ...)."""
    meta: dict[str, str] = {"vpnid.version": __version__}
    for k, v in extra.items():
        meta[f"vpnid.{k}"] = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return meta


def format_from_path(path: str, explicit: str | None = None) -> str:
    if explicit:
        return explicit
    suffix = Path(path).suffix.lower()
    return {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}.get(suffix, "parquet")


class TableSink:
    """Streams record batches of one schema into a file; atomic on close.

    ``path`` of ``-`` writes CSV/JSON lines to standard output (not atomic, by nature).
    """

    def __init__(self, path: str, schema: pa.Schema, fmt: str = "parquet",
                 metadata: dict[str, str] | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.path = path
        self.fmt = fmt
        self.schema = schema.with_metadata({**(schema.metadata or {}), **(metadata or {})})
        self.rows = 0
        self._stdout = path == "-"
        if self._stdout and fmt == "parquet":
            raise ValueError("Parquet cannot be written to standard output; give -o FILE")
        self._tmp: Path | None = None
        self._fh: IO[bytes] | None = None
        self._writer: object | None = None
        self._open()

    def _open(self) -> None:
        if self._stdout:
            self._fh = sys.stdout.buffer
        else:
            target = Path(self.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = tmp_path_for(target)
            self._fh = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        if self.fmt == "parquet":
            self._writer = pq.ParquetWriter(self._fh, self.schema, compression="zstd")
        elif self.fmt == "csv":
            self._writer = None  # opened on the first batch: CSV cannot hold list columns natively

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        if table.num_rows == 0:
            return
        table = table.cast(self.schema.remove_metadata()) if table.schema != self.schema.remove_metadata() \
            else table
        self.rows += table.num_rows
        if self.fmt == "parquet":
            self._writer.write(table)  # type: ignore[union-attr]
        elif self.fmt == "csv":
            flat = _flatten_lists(table)
            if self._writer is None:
                self._writer = pacsv.CSVWriter(self._fh, flat.schema)
            self._writer.write(flat)  # type: ignore[union-attr]
        else:
            for row in _timestamps_as_text(table).to_pylist():
                self._fh.write((json.dumps(row, default=_json_default) + "\n").encode())  # type: ignore[union-attr]

    def close(self) -> None:
        if self.fmt == "parquet":
            self._writer.close()  # type: ignore[union-attr]
        elif self.fmt == "csv":
            if self._writer is None:  # no rows: still write the header
                self._writer = pacsv.CSVWriter(self._fh, _flatten_lists(self.schema.empty_table()).schema)
            self._writer.close()  # type: ignore[union-attr]
        if self._stdout:
            self._fh.flush()  # type: ignore[union-attr]
            return
        self._fh.close()  # type: ignore[union-attr]
        os.replace(self._tmp, self.path)  # type: ignore[arg-type]

    def abort(self) -> None:
        if self._stdout:
            return
        # Close the writer before its file: otherwise its finalizer later writes to a closed
        # file and Python prints an "Exception ignored" traceback at exit.
        with contextlib.suppress(Exception):
            if self._writer is not None:
                self._writer.close()  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):
            self._fh.close()  # type: ignore[union-attr]
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()  # type: ignore[union-attr]

    def __enter__(self) -> TableSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _timestamps_as_text(table: pa.Table) -> pa.Table:
    """ISO 8601 text with all nine fractional digits (Python datetimes would keep only six)."""
    import pyarrow.compute as pc

    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type):
            text = pc.strftime(table.column(i), format="%Y-%m-%dT%H:%M:%SZ") if table.num_rows else \
                table.column(i).cast(pa.string())
            table = table.set_column(i, pa.field(field.name, pa.string()), text)
    return table


def _flatten_lists(table: pa.Table) -> pa.Table:
    """CSV has no lists: write list columns as space-separated values."""
    import pyarrow.compute as pc

    cols, names = [], []
    for name, col in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_list(col.type):
            col = pa.array([" ".join(map(str, v)) if v is not None else None for v in col.to_pylist()],
                           pa.string())
        elif pa.types.is_timestamp(col.type):
            col = pc.strftime(col, format="%Y-%m-%dT%H:%M:%SZ") if len(col) else \
                col.cast(pa.string())
        cols.append(col)
        names.append(name)
    return pa.table(cols, names=names)


def _json_default(v: object) -> object:
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)
