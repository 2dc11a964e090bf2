"""From per-file results to dataset partitions, incrementally, in file time order.

The client feeds files in time order (``add``) as soon as each one's result and the
next file's first timestamp are known; the ``Assembler`` stitches their boundary rows
(``classifier.batch.stitch``), hands out **label jobs** for chains that can no longer
grow, and yields each **partition** once its own flows, its merged heads and its
stitched flows are all known. Nothing here depends on the order in which workers
finish, so a local pool, a Dask cluster and the in-process path give the same bytes.

Label jobs group stitched flows by the file where they began (one job per file, the
flows in the order their chains ended): a job is ready once no open chain began in
that file. Flows are labelled by whichever worker takes the job
(``classifier.batch.work.label_rows``), so the client never loads the model.
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
    """Stitched raw rows of the flows that began in file ``index`` (path ``capture``)."""

    index: int
    capture: str
    rows: S.FlowState


class Assembler:
    """Stitch files fed in time order; emit label jobs and finished partitions.

    ``add(index, ...)`` must be called with consecutive indices 0, 1, 2, ...; ``close``
    after the last file; ``labelled(index, table)`` with each job's result (any order);
    ``partitions()`` yields ``(index, table)`` for every partition that became complete,
    in index order, with ``flow_id`` numbered across the whole dataset.
    """

    def __init__(self, config: FlowConfig) -> None:
        self.stitcher = Stitcher(config)
        self.paths: list[str] = []
        self.tables: list[Callable[[], pa.Table] | None] = []
        self.drops: list[list[np.ndarray]] = []
        self.buffers: dict[int, list[S.FlowState]] = {}
        self.labels: dict[int, pa.Table | None] = {}  # None: job out, result pending
        self.closed_upto = -1  # groups <= this index can no longer grow (when not open)
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
        rows, start = self.stitcher.take_done()
        if len(rows):
            order = np.argsort(start, kind="stable")
            bounds = np.flatnonzero(np.diff(start[order])) + 1
            for part in np.split(order, bounds):
                self.buffers.setdefault(int(start[part[0]]), []).append(rows.take(part))
        dfile, did = self.stitcher.take_drops()
        for k in np.unique(dfile):
            self.drops[int(k)].append(did[dfile == k])
        still_open = set() if self.finished else set(self.stitcher.open_start_files().tolist())
        jobs = []
        for k in range(self.closed_upto + 1, len(self.paths)):
            if k in still_open:
                break  # later groups wait too, so jobs go out in file order
            parts = self.buffers.pop(k, [])
            if parts:
                self.labels[k] = None
                jobs.append(LabelJob(k, self.paths[k], S.FlowState.concat(parts)))
            self.closed_upto = k
        return jobs

    def labelled(self, index: int, table: pa.Table) -> None:
        self.labels[index] = table

    def partitions(self) -> Iterator[tuple[int, pa.Table]]:
        """Partitions complete so far, in order; skips files left without flows."""
        while self.next_out <= self.closed_upto:
            k = self.next_out
            extra = self.labels.get(k, False)
            if extra is None:
                return  # its label job is still running
            self.next_out += 1
            table = self.tables[k]()
            self.tables[k] = None
            drops = self.drops[k]
            if drops:
                drop = np.concatenate(drops).astype(np.uint64)
                keep = pc.invert(pc.is_in(table.column("flow_id"), value_set=pa.array(drop)))
                table = table.filter(keep)
            if extra is not False:
                table = pa.concat_tables([table.select(extra.column_names), extra])
                del self.labels[k]
            if table.num_rows == 0:
                continue
            table = table.sort_by([("first_seen", "ascending"), ("flow_id", "ascending")])
            n = table.num_rows
            table = table.set_column(table.schema.get_field_index("flow_id"), CLASSIFY_SCHEMA.field("flow_id"),
                                     pa.array(np.arange(self.offset, self.offset + n, dtype=np.uint64)))
            self.offset += n
            yield k, table.combine_chunks()
