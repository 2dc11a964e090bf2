"""PPTP: the TCP control connection (RFC 2637) and its enhanced-GRE data channel.

Control messages start with length (2), message type 1 and the magic cookie
0x1A2B3C4D, then a control message type 1..15; the length covers the whole message.
The data channel is GRE version 1 (RFC 2637 section 4.1): key bit set, protocol
0x880B (PPP), a payload length and call id in the key field. The TCP port (1723)
is not used as evidence; the cookie is.
"""

from __future__ import annotations

import numpy as np

from classifier.signatures._base import TCP, BatchView, Flow, Verdict, be16, be32

NAME = "pptp"
GRE = 47
MAGIC = 0x1A2B3C4D
_CTRL_NAMES = {1: "Start-Control-Connection-Request", 2: "Start-Control-Connection-Reply",
               7: "Outgoing-Call-Request", 8: "Outgoing-Call-Reply", 15: "Set-Link-Info"}


def candidates(v: BatchView) -> np.ndarray:
    ctrl = (v.be32(4) == MAGIC) & (v.be16(2) == 1)
    return (v.tcp & v.any_slot(ctrl)) | (v.proto == GRE)


def gre_v1_ppp(d: bytes, length: int) -> int | None:
    """Call id of an enhanced GRE (version 1, PPP) header, or None."""
    if len(d) < 8:
        return None
    flags, ver = d[0], d[1]
    # C, R, s and recursion must be 0, K must be 1; version 1; A bit may be set.
    if flags & 0xEF != 0x20 or ver & 0x7F != 0x01 or be16(d, 2) != 0x880B:
        return None
    hdr = 8 + (4 if flags & 0x10 else 0) + (4 if ver & 0x80 else 0)
    if be16(d, 4) + hdr > length + 4:  # payload length cannot exceed the packet
        return None
    return be16(d, 6)


def check(f: Flow) -> Verdict | None:
    if f.proto == GRE:
        return _gre(f)
    if f.proto != TCP:
        return None
    msgs = []
    for d, stream in enumerate(f.streams):
        off = 0
        while len(msgs) < 32:
            h = stream.read(off, 10)
            if h is None:
                break
            length = be16(h, 0)
            if be16(h, 2) != 1 or be32(h, 4) != MAGIC or not 1 <= be16(h, 8) <= 15 or length < 12:
                break
            msgs.append((d, be16(h, 8)))
            off += length
    if not msgs:
        return None
    names = [_CTRL_NAMES.get(t, f"type {t}") for _, t in msgs[:3]]
    dirs = {d for d, _ in msgs}
    conf = 0.99 if len(dirs) == 2 else 0.95
    ev = f"pptp tcp control: {len(msgs)} messages with magic cookie 0x1A2B3C4D ({', '.join(names)})"
    return Verdict(NAME, conf, ev, midflow=not f.tcp_start_seen)


def _gre(f: Flow) -> Verdict | None:
    calls: dict[int, set[int]] = {}
    for p in f.packets:
        cid = gre_v1_ppp(p.data, p.len)
        if cid is None:
            return None
        calls.setdefault(p.dir, set()).add(cid)
    # One call id per call; a capture may hold a few calls between the same hosts.
    if not calls or any(len(c) > 4 for c in calls.values()):
        return None
    n = len(f.packets)
    conf = 0.97 if n >= 2 else 0.9
    ev = f"pptp gre: {n} enhanced GRE v1 packets carrying PPP (protocol 0x880B), {max(len(c) for c in calls.values())} call id(s) per direction"
    return Verdict(NAME, conf, ev, midflow=False)
