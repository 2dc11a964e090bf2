"""SoftEther VPN: its UDP acceleration / NAT-traversal messages in clear text.

Two shapes (SoftEther Pack format, as nDPI's softether.c also reads them):
- ``IP=<address>,PORT=<port>`` replies to 1-byte 0x41 probes;
- a serialized Pack: element count (4), then per element a name length + 1 (4), the
  name, a value type 0..4 (4) and a value count (4).
Either one, fully parsed, identifies the flow. The port (5004) is not evidence.
"""

from __future__ import annotations

import re

import numpy as np

from classifier.signatures._base import UDP, BatchView, Flow, Verdict, be32

NAME = "softether"
_IP_PORT = re.compile(rb"^IP=[0-9a-fA-F:.]{2,45},PORT=[0-9]{1,5}$")
_NAME = re.compile(rb"^[A-Za-z_][A-Za-z0-9_.]*$")


def candidates(v: BatchView) -> np.ndarray:
    ip = v.starts_with(b"IP=")
    count, nlen = v.be32(0), v.be32(4)
    pack = (count >= 1) & (count <= 4096) & (nlen >= 2) & (nlen <= 64) & (v.lens >= 20)
    return v.udp & v.any_slot(ip | pack)


def _pack(d: bytes, length: int) -> str | None:
    """Name of the first element of a well-formed Pack, or None."""
    if len(d) < 12 or length < 20:
        return None
    count, nlen = be32(d, 0), be32(d, 4)
    if not 1 <= count <= 4096 or not 2 <= nlen <= 64 or 8 + nlen - 1 + 8 > len(d):
        return None
    name = d[8 : 8 + nlen - 1]
    if not _NAME.match(name):
        return None
    off = 8 + nlen - 1
    vtype, nvals = be32(d, off), be32(d, off + 4)
    if vtype > 4 or not 1 <= nvals <= 4096:
        return None
    return name.decode()


def check(f: Flow) -> Verdict | None:
    if f.proto != UDP:
        return None
    ipport = packs = probes = other = 0
    names: list[str] = []
    for p in f.packets:
        if p.data.startswith(b"IP=") and len(p.data) == p.len and _IP_PORT.match(p.data):
            ipport += 1
        elif p.len == 1 and p.data == b"\x41":
            probes += 1
        elif (n := _pack(p.data, p.len)) is not None:
            packs += 1
            names.append(n)
        else:
            other += 1
    if not (ipport or packs) or other > ipport + packs + probes:
        return None
    parts = []
    if ipport:
        parts.append(f"{ipport} 'IP=...,PORT=...' replies")
    if probes:
        parts.append(f"{probes} 1-byte probes")
    if packs:
        parts.append(f"{packs} Pack messages (first elements: {', '.join(sorted(set(names))[:3])})")
    conf = 0.95 if ipport + packs >= 2 else 0.85
    return Verdict(NAME, conf, f"softether udp: {', '.join(parts)}", midflow=False)
