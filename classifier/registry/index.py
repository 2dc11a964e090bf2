"""Interval matching of many addresses against many (possibly overlapping) blocks.

Why segments: registry blocks may overlap (a bank's /16 and one branch's /32 with a
different registration, or the same block registered twice for successive periods),
so "the block whose start is just below x" is not enough. All block starts and
``end + 1`` values cut the address line into elementary segments; every address in a
segment is covered by exactly the same entries. For each segment the covering entries
are listed once, most specific first (longest prefix, then file order), in one flat
array with offsets (CSR). A lookup is then one ``searchsorted`` per address, and the
validity dates are checked candidate by candidate, vectorized over all addresses: the
loop runs once per nesting level (a handful), not once per address.

CIDR blocks nest or are disjoint, so the candidate lists stay short (at most the
number of prefix lengths a chain of nested blocks can have).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FamilyIndex:
    """Segments and candidate lists of the entries of one address family.

    ``bounds`` are segment starts (sorted keys, ``uint64`` or ``S16``); ``offsets[s]:
    offsets[s+1]`` indexes ``candidates`` (entry numbers, most specific first).
    """

    bounds: np.ndarray
    offsets: np.ndarray  # int64, len(bounds) + 1
    candidates: np.ndarray  # int64 entry numbers (global, into the registry's entry arrays)
    max_depth: int

    @classmethod
    def build(cls, starts: np.ndarray, ends_excl: np.ndarray, open_end: np.ndarray,
              rank: np.ndarray, entry_ids: np.ndarray) -> FamilyIndex:
        """Build from block starts, exclusive ends (ignored where ``open_end``: the block
        runs to the top of the address space), a specificity rank (lower = preferred) and
        the entries' global numbers."""
        m = len(starts)
        if m == 0:
            return cls(starts[:0], np.zeros(1, np.int64), np.zeros(0, np.int64), 0)
        bounds = np.unique(np.concatenate([starts, ends_excl[~open_end]]))
        first = np.searchsorted(bounds, starts)
        last = np.where(open_end, len(bounds), np.searchsorted(bounds, ends_excl))
        counts = (last - first).astype(np.int64)
        total = int(counts.sum())
        owner = np.repeat(np.arange(m), counts)
        step = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        seg = np.repeat(first, counts) + step
        order = np.lexsort((rank[owner], seg))
        seg, owner = seg[order], owner[order]
        per_seg = np.bincount(seg, minlength=len(bounds))
        offsets = np.zeros(len(bounds) + 1, np.int64)
        np.cumsum(per_seg, out=offsets[1:])
        return cls(bounds, offsets, entry_ids[owner].astype(np.int64), int(per_seg.max(initial=0)))

    def candidates_of(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per key: (first position in ``candidates``, number of candidates)."""
        n = len(keys)
        if n == 0 or len(self.bounds) == 0:
            return np.zeros(n, np.int64), np.zeros(n, np.int64)
        seg = np.searchsorted(self.bounds, keys, side="right") - 1
        inside = seg >= 0
        seg = np.where(inside, seg, 0)
        lo = self.offsets[seg]
        return lo, np.where(inside, self.offsets[seg + 1] - lo, 0)

    def resolve(self, lo: np.ndarray, count: np.ndarray, times: np.ndarray, valid_from: np.ndarray,
                valid_until: np.ndarray) -> np.ndarray:
        """Entry number of the first candidate valid at each time
        (``valid_from <= t < valid_until``), or -1; one pass per nesting level."""
        found = np.full(len(lo), -1, np.int64)
        pending = np.flatnonzero(count > 0)
        for k in range(self.max_depth):
            if len(pending) == 0:
                break
            pending = pending[count[pending] > k]
            entry = self.candidates[lo[pending] + k]
            t = times[pending]
            ok = (valid_from[entry] <= t) & (t < valid_until[entry])
            found[pending[ok]] = entry[ok]
            pending = pending[~ok]
        return found

    def lookup(self, keys: np.ndarray, times: np.ndarray, valid_from: np.ndarray,
               valid_until: np.ndarray) -> np.ndarray:
        """Entry number of the most specific entry covering each key and valid at its
        time, or -1."""
        lo, count = self.candidates_of(keys)
        return self.resolve(lo, count, times, valid_from, valid_until)
