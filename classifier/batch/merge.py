"""Exact merging of raw flow state: one flow seen as two partial rows in consecutive captures.

A rotated capture (``tcpdump -G 300``) cuts long flows at file boundaries; each file's
meter reports the part it saw. Because the meter keeps sizes and inter-arrival times
as Welford accumulators (count, mean, M2), two parts combine exactly (Chan et al.):
only the samples at the seam are missing, i.e. the gap between the earlier part's last
packet and the later part's first one, per direction and in both directions together.
``merge_rows`` adds those samples with one Welford step each, so the merged row holds
the same statistics the meter would have computed over the unsplit capture (up to
floating-point rounding of the means and M2).

Everything is vectorized over all pairs merged at one file boundary.
"""

from __future__ import annotations

import numpy as np

from classifier.flows import state as S
from classifier.flows.batch import HEAD_PACKETS, HEAD_PACKETS_PER_DIR
from classifier.flows.schema import FIRST_PACKETS

#: int64 columns that come in (initiator, responder) pairs.
_PAIR_INT = (S.PK0, S.BY0, S.PL0, S.SMIN0, S.SMAX0, S.LTS0, S.IMIN0, S.IMAX0, S.FSEEN0, S.HD0, S.PPK0)
#: per-direction payload-size histograms: direction 0's bins, then direction 1's
_HIST0 = np.arange(S.PHIST0, S.PHIST0 + S.N_HIST)
_HIST1 = _HIST0 + S.N_HIST
#: float64 columns that come in pairs.
_PAIR_FLOAT = (S.F_SMEAN0, S.F_SM2_0, S.F_IMEAN0, S.F_IM2_0)
_BIG = np.int64(1) << np.int64(62)


def key_view(keys: np.ndarray) -> np.ndarray:
    """Flow keys (n, 5) uint64 as one opaque 40-byte value per row, for set operations."""
    return np.ascontiguousarray(keys, dtype=np.uint64).view(np.dtype((np.void, 40))).ravel()


def same_endpoints(keys: np.ndarray) -> np.ndarray:
    """Rows whose two endpoints are identical: the meter puts every packet in direction 0."""
    lo_port = (keys[:, 4] >> np.uint64(16)) & np.uint64(0xFFFF)
    hi_port = keys[:, 4] & np.uint64(0xFFFF)
    return (keys[:, 0] == keys[:, 2]) & (keys[:, 1] == keys[:, 3]) & (lo_port == hi_port)


def remap_directions(st: S.FlowState, swap: np.ndarray, copy: bool = True) -> S.FlowState:
    """``st`` (a copy unless ``copy`` is False) with initiator/responder exchanged where ``swap``.

    Needed because a continuation's first packet may come from the responder, so its
    meter called the other endpoint the initiator. In place is safe: every swapped
    value is read (fancy indexing copies) before it is written.
    """
    out = st.take(np.arange(len(st))) if copy else st
    if not swap.any():
        return out
    rows = np.flatnonzero(swap)
    for c in _PAIR_INT:
        out.si[rows, c], out.si[rows, c + 1] = st.si[rows, c + 1], st.si[rows, c]
    for c in _PAIR_FLOAT:
        out.sf[rows, c], out.sf[rows, c + 1] = st.sf[rows, c + 1], st.sf[rows, c]
    out.si[np.ix_(rows, _HIST0)], out.si[np.ix_(rows, _HIST1)] = st.si[np.ix_(rows, _HIST1)], st.si[np.ix_(rows, _HIST0)]
    fvalid = np.arange(FIRST_PACKETS)[None, :] < st.si[rows, S.FN][:, None]
    out.fdir[rows] = np.where(fvalid, 1 - st.fdir[rows], st.fdir[rows])
    hvalid = np.arange(HEAD_PACKETS)[None, :] < st.si[rows, S.HEADN][:, None]
    out.hdir[rows] = np.where(hvalid, 1 - st.hdir[rows], st.hdir[rows])
    out.si[rows, S.INIT_LOW] = 1 - st.si[rows, S.INIT_LOW]
    return out


def _chan(na: np.ndarray, ma: np.ndarray, m2a: np.ndarray, nb: np.ndarray, mb: np.ndarray,
          m2b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Combine two (count, mean, M2) accumulators; exact when either side is empty."""
    n = na + nb
    safe = np.maximum(n, 1).astype(np.float64)
    delta = mb - ma
    mean = ma + delta * (nb / safe)
    m2 = m2a + m2b + delta * delta * (na * (nb / safe))
    empty = n == 0
    return n, np.where(empty, 0.0, mean), np.where(empty, 0.0, m2)


def _add_sample(n: np.ndarray, mean: np.ndarray, m2: np.ndarray, x: np.ndarray,
                valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One Welford update (the meter's own formula) on rows where ``valid``."""
    n1 = n + 1
    delta = x - mean
    mean1 = mean + delta / n1
    m2_1 = m2 + delta * (x - mean1)
    return np.where(valid, n1, n), np.where(valid, mean1, mean), np.where(valid, m2_1, m2)


def first_ts_per_direction(st: S.FlowState) -> np.ndarray:
    """(n, 2) timestamp of each row's first packet in each direction (0 where none).

    Exact from the first-packets arrays when the direction appears there; otherwise
    rebuilt from the direction's inter-arrival accumulator, whose samples add up to
    ``last - first`` (exact while timestamps do not go backwards; rounded to the ns).
    """
    n = len(st)
    out = np.zeros((n, 2), np.int64)
    slot_ok = np.arange(FIRST_PACKETS)[None, :] < st.si[:, S.FN][:, None]
    rows = np.arange(n)
    for d in (0, 1):
        m = slot_ok & (st.fdir == d)
        has = m.any(axis=1)
        idx = np.argmax(m, axis=1)
        cnt = st.si[:, S.PK0 + d]
        rebuilt = st.si[:, S.LTS0 + d] - np.rint(np.maximum(cnt - 1, 0) * st.sf[:, S.F_IMEAN0 + d]).astype(np.int64)
        out[:, d] = np.where(has, st.fts[rows, idx], np.where(cnt > 0, rebuilt, 0))
    return out


def merge_rows(p: S.FlowState, c: S.FlowState, copy: bool = True) -> S.FlowState:
    """Merge continuation rows ``c`` into earlier partial rows ``p`` (row i with row i).

    Keeps ``p``'s identity (flow id, key, initiator, first packet flags) and takes the
    end reason from ``c``; the caller decides the final end reason. With ``copy`` False
    the result is ``p`` itself, updated in place, and ``c`` may be modified: for callers
    that own both (each copy is a full pass over the payload heads).
    """
    swap = (c.si[:, S.INIT_LOW] != p.si[:, S.INIT_LOW]) & ~same_endpoints(p.keys)
    c = remap_directions(c, swap, copy=copy)
    if copy:
        m = p.take(np.arange(len(p)))
        ps, pf = p.si, p.sf
    else:
        m = p
        ps, pf = p.si.copy(), p.sf.copy()  # the formulas below read P's values after writing M's
    cs, ms = c.si, m.si
    cf, mf = c.sf, m.sf

    for col in (S.PK0, S.PK0 + 1, S.BY0, S.BY0 + 1, S.PL0, S.PL0 + 1, S.TRUNC, S.FRAGS, *range(S.TCP0, S.TCP0 + 8),
                S.PPK0, S.PPK0 + 1, *_HIST0, *_HIST1):
        ms[:, col] = ps[:, col] + cs[:, col]
    for d in (0, 1):
        ms[:, S.SMIN0 + d] = np.minimum(ps[:, S.SMIN0 + d], cs[:, S.SMIN0 + d])
        ms[:, S.SMAX0 + d] = np.maximum(ps[:, S.SMAX0 + d], cs[:, S.SMAX0 + d])
        ms[:, S.FSEEN0 + d] = ps[:, S.FSEEN0 + d] | cs[:, S.FSEEN0 + d]
    ms[:, S.FIRST] = ps[:, S.FIRST]
    ms[:, S.LAST] = np.maximum(ps[:, S.LAST], cs[:, S.LAST])

    # Packet sizes: plain combination of the two accumulators.
    for d in (0, 1):
        _, mf[:, S.F_SMEAN0 + d], mf[:, S.F_SM2_0 + d] = _chan(
            ps[:, S.PK0 + d], pf[:, S.F_SMEAN0 + d], pf[:, S.F_SM2_0 + d],
            cs[:, S.PK0 + d], cf[:, S.F_SMEAN0 + d], cf[:, S.F_SM2_0 + d])

    # Inter-arrival times per direction: P's samples, the seam sample, C's samples.
    c_first = first_ts_per_direction(c)
    for d in (0, 1):
        n_p, n_c = ps[:, S.PK0 + d], cs[:, S.PK0 + d]
        seam_ok = (n_p > 0) & (n_c > 0)
        seam = np.maximum(c_first[:, d] - ps[:, S.LTS0 + d], 0)
        i_n, i_mean, i_m2 = _add_sample(np.maximum(n_p - 1, 0), pf[:, S.F_IMEAN0 + d], pf[:, S.F_IM2_0 + d],
                                        seam.astype(np.float64), seam_ok)
        _, mf[:, S.F_IMEAN0 + d], mf[:, S.F_IM2_0 + d] = _chan(
            i_n, i_mean, i_m2, np.maximum(n_c - 1, 0), cf[:, S.F_IMEAN0 + d], cf[:, S.F_IM2_0 + d])
        seam_min = np.where(seam_ok, seam, _BIG)
        seam_max = np.where(seam_ok, seam, 0)
        ms[:, S.IMIN0 + d] = np.minimum(np.minimum(ps[:, S.IMIN0 + d], cs[:, S.IMIN0 + d]), seam_min)
        ms[:, S.IMAX0 + d] = np.maximum(np.maximum(ps[:, S.IMAX0 + d], cs[:, S.IMAX0 + d]), seam_max)
        ms[:, S.LTS0 + d] = np.where(n_c > 0, cs[:, S.LTS0 + d], ps[:, S.LTS0 + d])

    # Inter-arrival times over both directions: the seam is C's first packet after P's last.
    tot_p = ps[:, S.PK0] + ps[:, S.PK0 + 1]
    tot_c = cs[:, S.PK0] + cs[:, S.PK0 + 1]
    seam = np.maximum(cs[:, S.FIRST] - ps[:, S.LAST], 0)
    ok = (tot_p > 0) & (tot_c > 0)
    b_n, b_mean, b_m2 = _add_sample(np.maximum(tot_p - 1, 0), pf[:, S.F_BIMEAN], pf[:, S.F_BIM2],
                                    seam.astype(np.float64), ok)
    _, mf[:, S.F_BIMEAN], mf[:, S.F_BIM2] = _chan(b_n, b_mean, b_m2, np.maximum(tot_c - 1, 0),
                                                  cf[:, S.F_BIMEAN], cf[:, S.F_BIM2])
    ms[:, S.BIMIN] = np.minimum(np.minimum(ps[:, S.BIMIN], cs[:, S.BIMIN]), np.where(ok, seam, _BIG))
    ms[:, S.BIMAX] = np.maximum(np.maximum(ps[:, S.BIMAX], cs[:, S.BIMAX]), np.where(ok, seam, 0))

    # TCP state: a reset anywhere wins; FIN both ways (seen in either part) closes.
    fin_both = (ms[:, S.FSEEN0] & 1).astype(bool) & (ms[:, S.FSEEN0 + 1] & 1).astype(bool)
    rst = (ps[:, S.CLOSED] == 2) | (cs[:, S.CLOSED] == 2)
    fin = (ps[:, S.CLOSED] == 1) | (cs[:, S.CLOSED] == 1) | fin_both
    ms[:, S.CLOSED] = np.where(rst, 2, np.where(fin, 1, 0))
    ms[:, S.END] = cs[:, S.END]
    ms[:, S.ACTIVE] = cs[:, S.ACTIVE]

    _append_first_packets(m, c)
    _append_heads(m, c)
    return m


def _append_first_packets(m: S.FlowState, c: S.FlowState) -> None:
    """Append C's first packets after M's, up to FIRST_PACKETS (arrival order kept)."""
    rows = np.arange(len(m))
    for j in range(FIRST_PACKETS):
        fn = m.si[:, S.FN]
        ok = (j < c.si[:, S.FN]) & (fn < FIRST_PACKETS)
        if not ok.any():
            break
        r, dst = rows[ok], fn[ok]
        m.fsize[r, dst] = c.fsize[r, j]
        m.fdir[r, dst] = c.fdir[r, j]
        m.fts[r, dst] = c.fts[r, j]
        m.si[r, S.FN] += 1


def _append_heads(m: S.FlowState, c: S.FlowState) -> None:
    """Append C's payload heads after M's, packet by packet, with the meter's limits."""
    rows = np.arange(len(m))
    for j in range(HEAD_PACKETS):
        valid = j < c.si[:, S.HEADN]
        if not valid.any():
            break
        d = c.hdir[:, j].astype(np.int64)
        per_dir = m.si[rows, S.HD0 + np.minimum(d, 1)]
        ok = valid & (per_dir < HEAD_PACKETS_PER_DIR) & (m.si[:, S.HEADN] < HEAD_PACKETS)
        if not ok.any():
            continue
        r = rows[ok]
        dst = m.si[r, S.HEADN]
        for name in ("hdir", "hlen", "hcap", "hts", "hseq", "hdata"):
            getattr(m, name)[r, dst] = getattr(c, name)[r, j]
        m.si[r, S.HEADN] += 1
        m.si[r, S.HD0 + d[ok]] += 1
