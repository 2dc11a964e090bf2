"""From per-file results to dataset partitions, incrementally, in file time order.

The client feeds files in time order (``add``) as soon as each one's result and the
next file's first timestamp are known; the ``Assembler`` stitches their boundary rows
(``classifier.batch.stitch``), hands out **label jobs** for chains that can no longer
grow, and yields each **partition** once its own flows, its merged heads and its
stitched flows are all known. Nothing here depends on the order in which workers
finish, so a local pool, a Dask cluster and the in-process path give the same bytes.

Label jobs hold the chains that ended at one step (one job per file fed, when any
ended): they go out at once, so labelling runs on the workers while later files are
still being metered, and only the chains still open at the end are labelled after the
last file. Flows are labelled by whichever worker takes the job
(``classifier.batch.work.label_rows``), so the client never loads the model. A
partition is complete once no open chain began in its file and every job holding
some of its flows has returned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from classifier.batch.stitch import FileEdges, Stitcher
from classifier.flows import state as S
from classifier.flows.config import FlowConfig
from classifier.flows.schema import CLASSIFY_SCHEMA


@dataclass
class LabelJob:
    """Stitched raw rows of the chains that ended at one step, and the file each began in."""

    index: int  # job number (the order in which jobs were handed out)
    rows: S.FlowState
    start_file: np.ndarray  # int64 per row
    captures: list[str]  # path of every file index up to the last one fed

    def capture_of_rows(self) -> list[str]:
        return [self.captures[k] for k in self.start_file.tolist()]


class Assembler:
    """Stitch files fed in time order; emit label jobs and finished partitions.

    ``add(index, ...)`` must be called with consecutive indices 0, 1, 2, ...; ``close``
    after the last file; ``labelled(job, table)`` with each job's result (any order);
    ``partitions()`` yields ``(index, table)`` for every partition that became complete,
    in index order, with ``flow_id`` numbered across the whole dataset.
    """

    def __init__(self, config: FlowConfig) -> None:
        self.stitcher = Stitcher(config)
        self.paths: list[str] = []
        self.tables: list[Callable[[], pa.Table] | None] = []
        self.drops: list[list[np.ndarray]] = []
        self.extra: dict[int, list[pa.Table]] = {}  # labelled stitched rows per file where they began
        self.waiting: dict[int, set[int]] = {}  # file index -> label jobs holding some of its rows
        self.jobs: dict[int, np.ndarray] = {}  # job -> start file of each row
        self.n_jobs = 0
        self.closed_upto = -1  # files <= this index have no open chain any more
        self.next_out = 0
        self.offset = 0
        self.finished = False

    @property
    def merges(self) -> int:
        return self.stitcher.merges

    def add(self, index: int, path: str, first_ts: int | None, last_ts: int, edges: tuple,
            table: Callable[[], pa.Table], next_first_ts: int | None) -> list[LabelJob]:
        """Stitch one file; ``edges`` is ``(FlowState, is_head, is_tail)`` from its worker."""
        if index != len(self.paths):
            raise ValueError("files must be added in consecutive index order")
        self.paths.append(path)
        self.tables.append(table)
        self.drops.append([])
        st, is_head, is_tail = edges
        self.stitcher.add(FileEdges(index, first_ts, last_ts, st, is_head, is_tail), next_first_ts)
        return self._collect()

    def close(self) -> list[LabelJob]:
        """End the chains still open after the last file; returns the remaining jobs."""
        self.stitcher.close()
        self.finished = True
        return self._collect()

    def _collect(self) -> list[LabelJob]:
        """One label job for the chains that ended at this step (labelled as soon as they end)."""
        jobs = []
        rows, start = self.stitcher.take_done()
        if len(rows):
            j = self.n_jobs
            self.n_jobs += 1
            self.jobs[j] = start
            for k in np.unique(start).tolist():
                self.waiting.setdefault(k, set()).add(j)
            jobs.append(LabelJob(j, rows, start, list(self.paths)))
        dfile, did = self.stitcher.take_drops()
        for k in np.unique(dfile):
            self.drops[int(k)].append(did[dfile == k])
        if self.finished:
            self.closed_upto = len(self.paths) - 1
        else:
            still_open = self.stitcher.open_start_files()
            first_open = int(still_open.min()) if len(still_open) else len(self.paths)
            self.closed_upto = first_open - 1
        return jobs

    def labelled(self, job: int, table: pa.Table) -> None:
        """Result of a label job: its rows go to the partitions of the files where they began."""
        start = self.jobs.pop(job)
        for k in np.unique(start).tolist():
            self.extra.setdefault(k, []).append(table.filter(pa.array(start == k)))
            self.waiting[k].discard(job)

    def partitions(self) -> Iterator[tuple[int, pa.Table]]:
        """Partitions complete so far, in order; skips files left without flows."""
        while self.next_out <= self.closed_upto:
            k = self.next_out
            if self.waiting.get(k):
                return  # a label job with some of its flows is still running
            self.next_out += 1
            self.waiting.pop(k, None)
            table = self.tables[k]()
            self.tables[k] = None
            drops = self.drops[k]
            if drops:
                drop = np.concatenate(drops).astype(np.uint64)
                keep = pc.invert(pc.is_in(table.column("flow_id"), value_set=pa.array(drop)))
                table = table.filter(keep)
            extra = self.extra.pop(k, [])
            if extra:
                table = pa.concat_tables([table.select(extra[0].column_names), *extra])
            if table.num_rows == 0:
                continue
            table = table.sort_by([("first_seen", "ascending"), ("flow_id", "ascending")])
            n = table.num_rows
            table = table.set_column(table.schema.get_field_index("flow_id"), CLASSIFY_SCHEMA.field("flow_id"),
                                     pa.array(np.arange(self.offset, self.offset + n, dtype=np.uint64)))
            self.offset += n
            yield k, table.combine_chunks()
