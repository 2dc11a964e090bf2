"""Split a classic pcap file into consecutive pieces, like a rotating ``tcpdump -G``.

Used by the tests (a split capture must give the same flows as the whole one) and by
the batch benchmark (many rotated files from one generated capture). Finding record
boundaries is a sequential walk, done in a compiled loop; the pieces are then plain
byte ranges written after a copy of the file header.
"""

from __future__ import annotations

import os
from pathlib import Path

import numba as nb
import numpy as np

from classifier.output import atomic_path

_MAGICS = {b"\xd4\xc3\xb2\xa1": ("<", 1000), b"\xa1\xb2\xc3\xd4": (">", 1000),
           b"\x4d\x3c\xb2\xa1": ("<", 1), b"\xa1\xb2\x3c\x4d": (">", 1)}


@nb.njit(cache=True)
def _walk(buf, big, mul):
    n_max = (len(buf) - 24) // 16 + 1
    offs = np.empty(n_max, np.int64)
    ts = np.empty(n_max, np.int64)
    pos = 24
    n = 0
    while pos + 16 <= len(buf):
        if big:
            sec = (np.int64(buf[pos]) << 24) | (np.int64(buf[pos + 1]) << 16) | (np.int64(buf[pos + 2]) << 8) \
                | np.int64(buf[pos + 3])
            sub = (np.int64(buf[pos + 4]) << 24) | (np.int64(buf[pos + 5]) << 16) \
                | (np.int64(buf[pos + 6]) << 8) | np.int64(buf[pos + 7])
            cap = (np.int64(buf[pos + 8]) << 24) | (np.int64(buf[pos + 9]) << 16) \
                | (np.int64(buf[pos + 10]) << 8) | np.int64(buf[pos + 11])
        else:
            sec = (np.int64(buf[pos + 3]) << 24) | (np.int64(buf[pos + 2]) << 16) \
                | (np.int64(buf[pos + 1]) << 8) | np.int64(buf[pos])
            sub = (np.int64(buf[pos + 7]) << 24) | (np.int64(buf[pos + 6]) << 16) \
                | (np.int64(buf[pos + 5]) << 8) | np.int64(buf[pos + 4])
            cap = (np.int64(buf[pos + 11]) << 24) | (np.int64(buf[pos + 10]) << 16) \
                | (np.int64(buf[pos + 9]) << 8) | np.int64(buf[pos + 8])
        if pos + 16 + cap > len(buf):
            break
        offs[n] = pos
        ts[n] = sec * 1_000_000_000 + sub * mul
        n += 1
        pos += 16 + cap
    return offs[:n], ts[:n], pos


def record_index(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, int]:
    """(record offsets, timestamps in ns, end of the last whole record) of a classic pcap."""
    buf = np.fromfile(path, np.uint8)
    magic = bytes(buf[:4])
    if magic not in _MAGICS:
        raise ValueError(f"{path}: not a classic pcap file (magic {magic.hex()})")
    order, mul = _MAGICS[magic]
    offs, ts, end = _walk(buf, order == ">", mul)
    return offs, ts, end


def split_pcap(path: str | os.PathLike, out_dir: str | os.PathLike, *, pieces: int | None = None,
               seconds: float | None = None, at: list[int] | None = None, prefix: str = "part") -> list[Path]:
    """Cut ``path`` into pieces; returns the written files in order.

    ``pieces``: that many pieces with equal packet counts; ``seconds``: a new piece every
    so many seconds of capture time (as ``tcpdump -G``); ``at``: explicit packet indices
    where new pieces start.
    """
    buf = np.fromfile(path, np.uint8)
    offs, ts, end = record_index(path)
    n = len(offs)
    if at is not None:
        starts = sorted({0, *[i for i in at if 0 < i < n]})
    elif pieces is not None:
        starts = sorted({round(i * n / pieces) for i in range(pieces)})
    elif seconds is not None:
        if n == 0:
            starts = [0]
        else:
            slot = (ts - ts[0]) // int(seconds * 1e9)
            starts = [0, *np.flatnonzero(np.diff(slot) != 0) + 1]
    else:
        raise ValueError("give pieces, seconds or at")
    bounds = [*(int(offs[s]) if s < n else end for s in starts), end]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    header = buf[:24].tobytes()
    for i in range(len(starts)):
        target = out / f"{prefix}-{i:04d}.pcap"
        with atomic_path(target) as tmp, open(tmp, "wb") as fh:
            fh.write(header)
            fh.write(buf[bounds[i]:bounds[i + 1]].tobytes())
        written.append(target)
    return written
