"""Stitching flows across rotated capture files, in file time order, on the client.

Each file's worker reports two kinds of boundary rows (``FileEdges``):

* tails: flows still open when the file ended (the meter's ``flush``);
* heads: for each flow key, the first flow of the file, if it started within the
  idle timeout of the file's first packet. Only such a flow can continue a tail of an
  earlier file, because the gap from that tail's last packet would otherwise exceed
  the idle timeout.

Walking the files in order, an open chain (a tail, possibly already merged) is
continued by the head with the same key when the meter would have done the same on
the unsplit stream:

* the gap from the chain's last packet to the head's first is within the idle timeout;
* the chain would not pass the active timeout inside the head (see docs/scale.md: if
  it would, the flow is cut at the file boundary, with reason ``active``);
* a closed chain (FIN both ways or RST) only takes a head made of late packets of the
  close: within the linger time and without a new SYN.

Chains that end are emitted as raw rows to finalize and label (every chain began as a
tail, and workers leave tails unlabelled); the worker rows they replace (merged heads)
are listed in ``drops``. Rows whose worker result stays valid are not touched, so only
boundary flows are recomputed. ``add`` can run while later files are still being
processed: the runner feeds files as soon as their results (and the next file's first
timestamp) are known, and sends ended chains out for labelling right away.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from classifier.batch.merge import key_view, merge_rows
from classifier.flows import state as S
from classifier.flows.config import FlowConfig


@dataclass
class FileEdges:
    """Boundary rows of one file, as produced by its worker."""

    index: int  # position of the file in time order
    first_ts: int | None  # first packet, ns (None when the file had no usable packet)
    last_ts: int  # latest packet, ns
    edges: S.FlowState
    is_head: np.ndarray  # bool per edge row
    is_tail: np.ndarray  # bool per edge row


@dataclass
class StitchResult:
    """Rows to finalize on the client, and the worker rows they replace."""

    rows: S.FlowState
    start_file: np.ndarray  # int64 per row: file index where the flow began
    drop_file: np.ndarray  # int64: (file index, local flow id) pairs of worker rows to drop
    drop_id: np.ndarray
    merges: int = 0


@dataclass
class _Chains:
    """Open chains: raw state plus bookkeeping, one row per key."""

    st: S.FlowState = field(default_factory=lambda: S.FlowState.allocate(0))
    start_file: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    last_file: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.st)

    def take(self, idx: np.ndarray) -> _Chains:
        return _Chains(self.st.take(idx), self.start_file[idx], self.last_file[idx])

    @staticmethod
    def concat(parts: list[_Chains]) -> _Chains:
        parts = [p for p in parts if len(p)]
        if not parts:
            return _Chains()
        return _Chains(S.FlowState.concat([p.st for p in parts]),
                       np.concatenate([p.start_file for p in parts]),
                       np.concatenate([p.last_file for p in parts]))


def _closed_reason(si: np.ndarray) -> np.ndarray:
    return np.where(si[:, S.CLOSED] == 2, S.REASON_RST, S.REASON_FIN)


def timer_reason(si: np.ndarray, config: FlowConfig) -> np.ndarray:
    """End reason of open flows ended by a timer: whichever of idle/active expires first.

    The meter checks idle before active at a sweep; a flow whose idle deadline falls
    within the same sweep interval after its active deadline could be labelled either
    way (docs/scale.md).
    """
    idle, active, _, _ = config.ns
    idle_at = si[:, S.LAST] + idle
    active_at = si[:, S.FIRST] + active
    return np.where(idle_at <= active_at, S.REASON_IDLE, S.REASON_ACTIVE)


class Stitcher:
    """Feed ``FileEdges`` in file order with ``add``; ``finish`` returns the stitched rows."""

    def __init__(self, config: FlowConfig | None = None) -> None:
        self.config = config or FlowConfig()
        self.open = _Chains()
        self.done: list[_Chains] = []
        self.drop_file: list[np.ndarray] = []
        self.drop_id: list[np.ndarray] = []
        self.merges = 0
        self._last_index = -1
        self._last_data_index = -1
        self._max_ts = 0

    def add(self, fe: FileEdges, next_first_ts: int | None) -> None:
        """Process one file; ``next_first_ts`` is the next file's first packet (None if last)."""
        if fe.index <= self._last_index:
            raise ValueError("files must be added in increasing index order")
        self._last_index = fe.index
        if fe.first_ts is not None:
            self._last_data_index = fe.index
            self._max_ts = max(self._max_ts, fe.last_ts)
        idle, active, linger, _ = self.config.ns
        e = fe.edges
        head_idx = np.flatnonzero(fe.is_head)
        merged_edge = np.zeros(len(e), bool)
        keep_open = np.ones(len(self.open), bool)
        continued: list[_Chains] = []

        if len(self.open) and len(head_idx):
            _, oi, hi = np.intersect1d(key_view(self.open.st.keys), key_view(e.keys[head_idx]),
                                       assume_unique=True, return_indices=True)
            if len(oi):
                hrow = head_idx[hi]
                pi, ci = self.open.st.si[oi], e.si[hrow]  # decisions need only the scalar columns
                idle_ok = ci[:, S.FIRST] - pi[:, S.LAST] <= idle
                active_ok = ci[:, S.LAST] - pi[:, S.FIRST] <= active
                closed = pi[:, S.CLOSED] != 0
                closed_ok = (ci[:, S.LAST] - pi[:, S.LAST] <= linger) & (ci[:, S.TCP0 + 1] == 0)
                merge = idle_ok & active_ok & (~closed | closed_ok)

                # Chains not continued end here.
                stop = ~merge
                if stop.any():
                    ended = self.open.take(oi[stop])
                    si = ended.st.si
                    open_ = si[:, S.CLOSED] == 0
                    reason = np.where(~open_, _closed_reason(si),
                                      np.where(idle_ok[stop], S.REASON_ACTIVE, timer_reason(si, self.config)))
                    si[:, S.END] = reason
                    self.done.append(ended)
                # Chains continued by the head.
                if merge.any():
                    ch = self.open.take(oi[merge])
                    cm = e.take(hrow[merge])
                    m = merge_rows(ch.st, cm, copy=False)  # both are fresh copies
                    self.merges += int(merge.sum())
                    self.drop_file.append(np.full(len(cm), fe.index, np.int64))
                    self.drop_id.append(cm.si[:, S.FLOW_ID].copy())
                    merged_edge[hrow[merge]] = True
                    still_open = fe.is_tail[hrow[merge]]
                    fin = ~still_open
                    if fin.any():
                        si = m.si
                        c_first_active = si[:, S.FIRST] + active
                        timer = np.where(cm.si[:, S.LAST] + idle <= c_first_active, S.REASON_IDLE, S.REASON_ACTIVE)
                        si[:, S.END] = np.where(si[:, S.CLOSED] != 0, _closed_reason(si), timer)
                    chains = _Chains(m, ch.start_file, np.full(len(m), fe.index, np.int64))
                    if fin.any():
                        self.done.append(chains.take(np.flatnonzero(fin)))
                    if still_open.any():
                        continued.append(chains.take(np.flatnonzero(still_open)))
                keep_open[oi] = False

        # Unmatched open chains: end them once no later file can continue them.
        rest = self.open.take(np.flatnonzero(keep_open))
        if len(rest):
            si = rest.st.si
            if next_first_ts is None:
                expire = np.zeros(len(rest), bool)
            else:
                gap = next_first_ts - si[:, S.LAST]
                closed = si[:, S.CLOSED] != 0
                expire = (gap > idle) | (next_first_ts - si[:, S.FIRST] > active) | (closed & (gap > linger))
            if expire.any():
                self._end(rest.take(np.flatnonzero(expire)))
                rest = rest.take(np.flatnonzero(~expire))

        # New chains: this file's tails that did not continue anything.
        new_tail = np.flatnonzero(fe.is_tail & ~merged_edge)
        fresh = _Chains(e.take(new_tail), np.full(len(new_tail), fe.index, np.int64),
                        np.full(len(new_tail), fe.index, np.int64))
        if len(rest) and len(fresh):
            # A newer flow of the same key proves an older chain over (only possible when
            # timestamps go backwards): end the older one.
            _, ri, _ = np.intersect1d(key_view(rest.st.keys), key_view(fresh.st.keys), assume_unique=True,
                                      return_indices=True)
            if len(ri):
                self._end(rest.take(ri))
                keep = np.ones(len(rest), bool)
                keep[ri] = False
                rest = rest.take(np.flatnonzero(keep))
        self.open = _Chains.concat([rest, *continued, fresh])

    def _end(self, ended: _Chains) -> None:
        """End chains no later file continues: closed reason, or whichever timer expired first."""
        esi = ended.st.si
        reason = np.where(esi[:, S.CLOSED] != 0, _closed_reason(esi), timer_reason(esi, self.config))
        esi[:, S.END] = reason
        self.done.append(ended)

    def close(self) -> None:
        """End the chains still open at the end of input (after the last ``add``)."""
        idle, active, _, _ = self.config.ns
        rest = self.open
        if len(rest):
            si = rest.st.si
            # Flows of the last file keep the meter's own verdict (eof, or closed); older
            # ones ended by a timer once the input went on past their deadline.
            older = rest.last_file < self._last_data_index
            expired = older & ((self._max_ts - si[:, S.LAST] > idle) | (self._max_ts - si[:, S.FIRST] > active))
            reason = np.where(si[:, S.CLOSED] != 0, _closed_reason(si),
                              np.where(expired, timer_reason(si, self.config), S.REASON_EOF))
            si[:, S.END] = reason
            self.done.append(rest)
            self.open = _Chains()

    def take_done(self) -> tuple[S.FlowState, np.ndarray]:
        """Chains that ended since the last call: (raw rows, file index where each began).

        Every chain began as a tail, which the worker did not label: all of them are
        finalized and labelled (``classifier.batch.work.label_rows``).
        """
        out = _Chains.concat(self.done)
        self.done = []
        return out.st, out.start_file

    def take_drops(self) -> tuple[np.ndarray, np.ndarray]:
        """(file index, local flow id) of worker rows merged into a chain since the last call."""
        f = np.concatenate(self.drop_file).astype(np.int64) if self.drop_file else np.zeros(0, np.int64)
        i = np.concatenate(self.drop_id).astype(np.int64) if self.drop_id else np.zeros(0, np.int64)
        self.drop_file, self.drop_id = [], []
        return f, i

    def open_start_files(self) -> np.ndarray:
        """File indices where the still-open chains began (their flows may grow further)."""
        return np.unique(self.open.start_file)

    def finish(self) -> StitchResult:
        """End the chains still open at the end of input and return everything to finalize."""
        self.close()
        rows, start = self.take_done()
        drop_file, drop_id = self.take_drops()
        return StitchResult(rows, start, drop_file, drop_id, self.merges)
