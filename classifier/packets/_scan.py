"""Compiled record scanners: find every record in a buffer of pcap or pcapng data.

Finding record boundaries is a sequential walk (each record's length says where the
next one starts), so it cannot be a numpy expression; these numba kernels do it at
memory speed and fill preallocated offset/length/timestamp arrays. They stop and
return a status when Python must act: more data needed, a non-packet pcapng block,
the output full, or a bad length.
"""

from __future__ import annotations

import numba as nb
import numpy as np

# Return statuses
NEED_MORE = 0  # incomplete record at ``pos``: read more data (or it is a truncated last record)
BLOCK = 1  # pcapng: a non-packet block at ``pos`` for Python to parse
FULL = 2  # output arrays full
BAD_LENGTH = 3  # absurd record/block length at ``pos``
BAD_IFACE = 4  # pcapng packet names an interface that was never described

MAX_RECORD = 1 << 18  # libpcap's MAXIMUM_SNAPLEN: longer records are corrupt


@nb.njit(cache=True, inline="always")
def _u32(buf: np.ndarray, p: int, big: bool) -> int:
    if big:
        return (np.int64(buf[p]) << 24) | (np.int64(buf[p + 1]) << 16) | (np.int64(buf[p + 2]) << 8) | buf[p + 3]
    return (np.int64(buf[p + 3]) << 24) | (np.int64(buf[p + 2]) << 16) | (np.int64(buf[p + 1]) << 8) | buf[p]


@nb.njit(cache=True)
def scan_pcap(buf, pos, end, big, nanos, snaplen, base_off, linktype,
              rec_off, data_off, cap_len, wire_len, ts, lt, n_max):
    """Walk classic pcap records in ``buf[pos:end]``; returns (pos, n, status)."""
    n = 0
    limit = max(snaplen, MAX_RECORD)
    mul = 1 if nanos else 1000
    while True:
        if n >= n_max:
            return pos, n, FULL
        if pos + 16 > end:
            return pos, n, NEED_MORE
        caplen = _u32(buf, pos + 8, big)
        origlen = _u32(buf, pos + 12, big)
        if caplen > limit:
            return pos, n, BAD_LENGTH
        if pos + 16 + caplen > end:
            return pos, n, NEED_MORE
        sec = _u32(buf, pos, big)
        frac = _u32(buf, pos + 4, big)
        rec_off[n] = base_off + pos
        data_off[n] = pos + 16
        cap_len[n] = caplen
        wire_len[n] = max(origlen, caplen)
        ts[n] = sec * 1_000_000_000 + frac * mul
        lt[n] = linktype
        n += 1
        pos += 16 + caplen


@nb.njit(cache=True)
def _pcapng_ts(raw, mode, exp, offset_s):
    """Convert a pcapng timestamp in units of if_tsresol to ns."""
    if mode == 0:  # 10^-exp seconds
        if exp <= 9:
            v = raw * 10 ** (9 - exp)
        else:
            v = raw // 10 ** (exp - 9)
    else:  # 2^-exp seconds
        sec = raw >> exp
        frac = raw & ((np.int64(1) << exp) - 1)
        v = sec * 1_000_000_000 + (frac * 1_000_000_000 >> exp) if exp < 34 else sec * 1_000_000_000
    return v + offset_s * 1_000_000_000


@nb.njit(cache=True)
def scan_pcapng(buf, pos, end, big, base_off, if_lt, if_mode, if_exp, if_off, if_snap, last_ts,
                rec_off, data_off, cap_len, wire_len, ts, lt, n_max):
    """Walk pcapng packet blocks (EPB, SPB, OPB); returns (pos, n, status, last_ts).

    Stops with BLOCK at any other block type (section or interface description,
    statistics, ...) so that Python parses it and calls again.
    """
    n = 0
    n_if = if_lt.shape[0]
    while True:
        if n >= n_max:
            return pos, n, FULL, last_ts
        if pos + 12 > end:
            return pos, n, NEED_MORE, last_ts
        btype = _u32(buf, pos, big)
        blen = _u32(buf, pos + 4, big)
        if btype == 0x0A0D0D0A:
            return pos, n, BLOCK, last_ts
        if blen < 12 or blen % 4 != 0 or blen > (1 << 24):
            return pos, n, BAD_LENGTH, last_ts
        if pos + blen > end:
            return pos, n, NEED_MORE, last_ts
        if _u32(buf, pos + blen - 4, big) != blen:
            return pos, n, BAD_LENGTH, last_ts
        if btype == 6 or btype == 2:  # enhanced / obsolete packet block
            if blen < 32:
                return pos, n, BAD_LENGTH, last_ts
            if btype == 6:
                iface = _u32(buf, pos + 8, big)
            elif big:
                iface = (np.int64(buf[pos + 8]) << 8) | buf[pos + 9]
            else:
                iface = (np.int64(buf[pos + 9]) << 8) | buf[pos + 8]
            if iface >= n_if:
                return pos, n, BAD_IFACE, last_ts
            raw = (_u32(buf, pos + 12, big) << 32) | _u32(buf, pos + 16, big)
            caplen = _u32(buf, pos + 20, big)
            origlen = _u32(buf, pos + 24, big)
            if 28 + caplen > blen - 4:
                return pos, n, BAD_LENGTH, last_ts
            t = _pcapng_ts(raw, if_mode[iface], if_exp[iface], if_off[iface])
            rec_off[n] = base_off + pos
            data_off[n] = pos + 28
            cap_len[n] = caplen
            wire_len[n] = max(origlen, caplen)
            ts[n] = t
            lt[n] = if_lt[iface]
            last_ts = t
            n += 1
        elif btype == 3:  # simple packet block: interface 0, no timestamp
            if n_if == 0:
                return pos, n, BAD_IFACE, last_ts
            origlen = _u32(buf, pos + 8, big)
            caplen = min(origlen, blen - 16)
            if if_snap[0] > 0:
                caplen = min(caplen, if_snap[0])
            rec_off[n] = base_off + pos
            data_off[n] = pos + 12
            cap_len[n] = caplen
            wire_len[n] = max(origlen, caplen)
            ts[n] = last_ts
            lt[n] = if_lt[0]
            n += 1
        elif btype == 1:
            return pos, n, BLOCK, last_ts  # interface description: Python reads its options
        pos += blen
