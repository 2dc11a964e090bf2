"""QuickTun (``nacltai``): every datagram opens with a TAI64NA timestamp used as the nonce.

Layout (QuickTun's proto.nacltai.c): a 16-byte nonce in the clear, then the NaCl box (a
16-byte authenticator and the encrypted inner packet). The nonce is a TAI64NA label:
8 bytes of 2^62 + seconds (so it starts 0x40000000 until the year 2106), 4 bytes of
nanoseconds and 4 of attoseconds, each below 10^9. A sender's nonces only grow, because
the receiver drops anything not newer than the last one it took. Random bytes pass the
prefix test once in 2^32 datagrams, so three well-formed, rising nonces in one direction
name the flow. The port (2998 by default) is not evidence.
"""

from __future__ import annotations

import itertools

import numpy as np

from classifier.signatures._base import UDP, BatchView, Flow, Verdict, be32

NAME = "quicktun"
_PREFIX = b"\x40\x00\x00\x00"
_GIGA = 1_000_000_000
_MIN_LEN = 32  # nonce + authenticator, before any inner byte
_MIN_RISING = 3


def candidates(v: BatchView) -> np.ndarray:
    fields = (v.be32(8) < _GIGA) & (v.be32(12) < _GIGA) & (v.lens >= _MIN_LEN)
    return v.udp & v.any_slot(v.starts_with(_PREFIX) & fields)


def _nonce(data: bytes, length: int) -> int | None:
    """The TAI64NA nonce as one integer, or None when the datagram does not start with one."""
    if length < _MIN_LEN or len(data) < 16 or not data.startswith(_PREFIX):
        return None
    if be32(data, 8) >= _GIGA or be32(data, 12) >= _GIGA:
        return None
    return int.from_bytes(data[:16], "big")


def check(f: Flow) -> Verdict | None:
    if f.proto != UDP:
        return None
    rising, others = [], 0
    for d in sorted(f.directions):
        parsed = [_nonce(p.data, p.len) for p in f.of(d)]
        nonces = [n for n in parsed if n is not None]
        # A full-size inner packet makes the datagram too long for the path: its later IP
        # fragments join the flow with no nonce of their own. They may not be the majority.
        others += len(parsed) - len(nonces)
        if len(nonces) < _MIN_RISING or 2 * len(nonces) < len(parsed):
            return None
        if any(b <= a for a, b in itertools.pairwise(nonces)):
            return None
        rising.append(len(nonces))
    conf = 0.95 if len(rising) == 2 else 0.85
    ev = (f"quicktun nacltai: a TAI64NA nonce (0x40000000…) opening the datagrams, rising in "
          f"{' and '.join(map(str, rising))} packets per direction"
          + (f" ({others} packets without one: later IP fragments carry none)" if others else ""))
    return Verdict(NAME, conf, ev, midflow=False)
