"""Turning address strings into integers, a whole column at a time.

Why not ``ipaddress`` per row: a report over a day of mirrored traffic holds millions of
flows, and a Python object per address costs seconds. Addresses repeat (a client opens
many flows), so a column is dictionary-encoded first and only its distinct values are
parsed: dotted quads with a vectorized regular expression in Arrow, IPv6 text with
``socket.inet_pton`` once per distinct address (IPv6 text has too many spellings for a
regular expression to be worth it, and distinct IPv6 addresses are few next to flows).

Keys that the matcher compares:

- IPv4: ``uint64`` holding the 32-bit address (64 bits so that ``end + 1`` of the last
  block, 2**32, still fits);
- IPv6: ``S16``, the 16 address bytes in network order. NumPy orders and searches
  fixed-width byte strings lexicographically, which for big-endian bytes is numeric order,
  so 128-bit keys need no custom arithmetic.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_QUAD = r"^(?P<a>\d{1,3})\.(?P<b>\d{1,3})\.(?P<c>\d{1,3})\.(?P<d>\d{1,3})$"
V6_DTYPE = np.dtype("S16")


@dataclass
class ParsedAddresses:
    """Row-aligned parse of an address column.

    ``family`` is 4, 6, or 0 for a null or unparseable value; ``v4`` is valid where
    ``family == 4``, ``v6`` where ``family == 6`` (other rows hold zeros).
    """

    family: np.ndarray  # uint8
    v4: np.ndarray  # uint64
    v6: np.ndarray  # S16


def _parse_v4(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Dotted quads -> (ok mask, uint64 value), vectorized in Arrow."""
    n = len(values)
    ok = pc.fill_null(pc.match_substring_regex(values, _QUAD), False).to_numpy(zero_copy_only=False)
    out = np.zeros(n, np.uint64)
    if not ok.any():
        return ok, out
    idx = np.flatnonzero(ok)
    parts = pc.extract_regex(values.take(pa.array(idx)), _QUAD)
    octets = np.stack(
        [pc.cast(parts.field(k), pa.uint16()).to_numpy().astype(np.uint64) for k in "abcd"], axis=1
    )
    in_range = (octets <= 255).all(axis=1)
    value = (octets[:, 0] << 24) | (octets[:, 1] << 16) | (octets[:, 2] << 8) | octets[:, 3]
    out[idx] = np.where(in_range, value, 0)
    ok[idx] = in_range
    return ok, out


def _parse_v6(values: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """IPv6 text -> (ok mask, S16 keys); one ``inet_pton`` call per value."""
    n = len(values)
    ok = np.zeros(n, bool)
    raw = bytearray(16 * n)
    for i, text in enumerate(values):
        if text is None:
            continue
        pct = text.find("%")  # scoped addresses (fe80::1%eth0): the zone is not part of the address
        try:
            packed = socket.inet_pton(socket.AF_INET6, text if pct < 0 else text[:pct])
        except (OSError, ValueError):
            continue
        raw[16 * i : 16 * i + 16] = packed
        ok[i] = True
    return ok, np.frombuffer(bytes(raw), V6_DTYPE) if n else np.zeros(0, V6_DTYPE)


def parse_unique(values: pa.Array) -> ParsedAddresses:
    """Parse an array of (mostly distinct) address strings."""
    values = values.cast(pa.string()) if values.type != pa.string() else values
    n = len(values)
    family = np.zeros(n, np.uint8)
    v6 = np.zeros(n, V6_DTYPE)
    ok4, v4 = _parse_v4(values)
    family[ok4] = 4
    colon = pc.fill_null(pc.match_substring(values, ":"), False).to_numpy(zero_copy_only=False)
    cand6 = np.flatnonzero(colon & ~ok4)
    if len(cand6):
        ok6, keys6 = _parse_v6(values.take(pa.array(cand6)).to_pylist())
        family[cand6[ok6]] = 6
        v6[cand6[ok6]] = keys6[ok6]
    return ParsedAddresses(family, v4, v6)


def parse_distinct(column: pa.Array | pa.ChunkedArray) -> tuple[ParsedAddresses, np.ndarray]:
    """Parse the distinct values of an address column.

    Returns the parsed distinct values and, per row, the index of its value (-1 for
    null), so that later per-address work (the registry lookup) also runs once per
    distinct address and is spread to the rows with one ``take``.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    encoded = column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)
    uniq = parse_unique(encoded.dictionary)
    idx = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.intp)
    return uniq, idx


def parse_column(column: pa.Array | pa.ChunkedArray) -> ParsedAddresses:
    """Parse a column of address strings (row-aligned result), each distinct value once."""
    uniq, idx = parse_distinct(column)
    valid = idx >= 0
    safe = np.where(valid, idx, 0)
    if len(uniq.family) == 0:
        n = len(idx)
        return ParsedAddresses(np.zeros(n, np.uint8), np.zeros(n, np.uint64), np.zeros(n, V6_DTYPE))
    family = np.where(valid, uniq.family[safe], 0).astype(np.uint8)
    return ParsedAddresses(family, uniq.v4[safe], uniq.v6[safe])


def v6_key(value: int) -> bytes:
    """A 128-bit integer as the ``S16`` key bytes."""
    return value.to_bytes(16, "big")


def format_v4(values: np.ndarray) -> list[str]:
    """uint32/uint64 IPv4 values -> dotted quads (for small arrays: results, tests)."""
    return [socket.inet_ntop(socket.AF_INET, int(v).to_bytes(4, "big")) for v in values]


def format_v6(keys: np.ndarray) -> list[str]:
    """S16 keys -> canonical IPv6 text (for small arrays)."""
    return [socket.inet_ntop(socket.AF_INET6, bytes(k).ljust(16, b"\0")) for k in keys]
