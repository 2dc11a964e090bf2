"""The report's flow records: one Parquet file, or a dataset partitioned by day.

Why a partitioned dataset: a sensor's report over weeks of traffic is read a day at a
time (``pyarrow.dataset``/DuckDB/Spark prune the other days by directory name). The
layout is Hive style, ``flows/date=YYYY-MM-DD/part-0.parquet``, the day being the UTC
date of the flow's ``first_seen``; the ``date`` column lives in the directory name only.

Both forms are atomic: a single file goes through ``TableSink``; a dataset is written
into a hidden sibling directory and renamed into place when every file is complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from classifier.output import TableSink

PARTITIONS = ("date",)
_NS_PER_DAY = 86_400 * 10**9


class FlowsWriter:
    """Streams labeled flow tables to ``DIR/flows.parquet`` or ``DIR/flows/date=.../``."""

    def __init__(self, out_dir: Path, schema: pa.Schema, metadata: dict[str, str],
                 partition_by: str | None = None) -> None:
        if partition_by not in (None, *PARTITIONS):
            raise ValueError(f"cannot partition by {partition_by!r}; choose one of {', '.join(PARTITIONS)}")
        self.schema = schema
        self.metadata = metadata
        self.partition_by = partition_by
        self.rows = 0
        if partition_by is None:
            self.path = out_dir / "flows.parquet"
            self._sink: TableSink | None = TableSink(str(self.path), schema, "parquet", metadata)
            self._tmp_dir: Path | None = None
        else:
            self.path = out_dir / "flows"
            self._sink = None
            self._tmp_dir = out_dir / f".flows.tmp-{os.getpid()}"
            if self._tmp_dir.exists():
                shutil.rmtree(self._tmp_dir)
            self._tmp_dir.mkdir(parents=True)
        self._parts: dict[str, TableSink] = {}

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.rows += table.num_rows
        if self._sink is not None:
            self._sink.write(table)
            return
        ns = pc.cast(table.column("first_seen"), pa.int64()).to_numpy()
        uniq, inverse = np.unique(ns // _NS_PER_DAY, return_inverse=True)
        for i, day_number in enumerate(uniq):
            day = str(np.datetime64(int(day_number), "D"))  # UTC calendar day
            part = self._parts.get(day)
            if part is None:
                path = self._tmp_dir / f"date={day}" / "part-0.parquet"  # type: ignore[operator]
                part = TableSink(str(path), self.schema, "parquet", {**self.metadata, "vpnid.partition": day})
                self._parts[day] = part
            part.write(table.take(pa.array(np.flatnonzero(inverse == i))))

    def close(self) -> list[str]:
        """Finish every file and move the output into place; returns the days written."""
        if self._sink is not None:
            self._sink.close()
            return []
        for part in self._parts.values():
            part.close()
        if not self._parts:  # no flows: still leave a readable (empty) dataset
            empty = self._tmp_dir / "part-0.parquet"  # type: ignore[operator]
            TableSink(str(empty), self.schema, "parquet", self.metadata).close()
        old = self.path.with_name(f".flows.old-{os.getpid()}")
        if self.path.exists():
            os.replace(self.path, old)
        os.replace(self._tmp_dir, self.path)  # type: ignore[arg-type]
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
        return sorted(self._parts)

    def abort(self) -> None:
        if self._sink is not None:
            self._sink.abort()
            return
        for part in self._parts.values():
            part.abort()
        if self._tmp_dir is not None:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self._tmp_dir)
