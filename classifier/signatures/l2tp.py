"""L2TP: version 2 control and data (RFC 2661) and version 3 (RFC 3931) over UDP or IP 115.

v2 header: flags/version word (T, L, S, O, P bits, version 2, every reserved bit
zero), optional length, tunnel id, session id, optional Ns/Nr and offset. A control
message has exactly the flags T, L, S (0xC802), a length equal to the payload and,
unless it is a zero-length ack, a first AVP carrying the message type (vendor 0,
attribute 0, value 1..20). A data message carries a PPP frame (address/control
0xFF03 or a known PPP protocol number). v3 control over UDP uses 0xC803 and a
32-bit control connection id; over IP protocol 115 a zero session id marks control.
"""

from __future__ import annotations

import numpy as np

from classifier.signatures._base import UDP, BatchView, Flow, Verdict, be16, be32

NAME = "l2tp"
L2TP_IP = 115
_PPP_PROTOCOLS = {0x0021, 0x0057, 0xC021, 0x8021, 0xC023, 0xC223, 0x80FD, 0x00FD, 0x8057, 0x8281, 0x0281}
_MSG_TYPES = set(range(1, 21))


def candidates(v: BatchView) -> np.ndarray:
    w = v.be16(0)
    ctrl = ((w == 0xC802) | (w == 0xC803)) & (v.be16(2) == v.lens)
    data_v2 = ((w & 0xB4F0) == 0) & ((w & 0x000F) == 2) & (v.lens >= 8)
    data_v3 = (w == 0x0003) & (v.be16(2) == 0) & (v.be32(4) != 0)
    return (v.udp & v.any_slot(ctrl | data_v2 | data_v3)) | (v.proto == L2TP_IP)


def _ppp_ok(b: bytes) -> bool:
    if len(b) >= 4 and b[0:2] == b"\xff\x03":
        return be16(b, 2) in _PPP_PROTOCOLS
    if len(b) >= 2 and be16(b, 0) in _PPP_PROTOCOLS:
        return True
    return len(b) >= 1 and b[0] in (0x21, 0x57, 0xFD)


def _control(d: bytes, length: int, version: int) -> str | None:
    """Message description of a valid control message, or None."""
    if len(d) < 12 or be16(d, 2) != length:
        return None
    if length == 12:
        return "ZLB ack"
    if len(d) < 20:
        return "control (AVPs not stored)"
    avp_flags = be16(d, 12)
    avp_len = avp_flags & 0x03FF
    if avp_flags & 0x3C00 or avp_len != 8 or be16(d, 14) != 0 or be16(d, 16) != 0:
        return None
    mtype = be16(d, 18)
    return f"message type {mtype}" if mtype in _MSG_TYPES else None


def _data_v2(d: bytes) -> tuple[int, int] | None:
    """(tunnel id, session id) of a valid v2 data message carrying PPP, or None."""
    if len(d) < 6:
        return None
    w = be16(d, 0)
    if w & 0x8000 or w & 0x34F0 or w & 0x000F != 2:
        return None
    off = 2
    if w & 0x4000:
        off += 2
    tid, sid = be16(d, off), be16(d, off + 2)
    off += 4
    if w & 0x0800:
        off += 4
    if w & 0x0200:
        if len(d) < off + 2:
            return None
        off += 2 + be16(d, off)
    if tid == 0 or not _ppp_ok(d[off:]):
        return None
    return tid, sid


#: Start-Control-Connection-Request: the first message of a control connection (v2 and v3).
SCCRQ = "message type 1"


def unanswered_request(f: Flow, ctrl: list[str], n_data: int) -> bool:
    """A control-connection request (SCCRQ), alone or retransmitted, that nothing answered: no tunnel.

    nmap's UDP scan sends exactly this to 1701 (its payload for the port is an SCCRQ), and a
    client whose server is down or blocked sends it again and again; neither is a tunnel,
    just as an unanswered IKE initiation is none (ike.py). Any reply, any later control
    message or any data message makes the flow an L2TP exchange again.
    """
    return len(f.directions) == 1 and n_data == 0 and set(ctrl) == {SCCRQ}


def check(f: Flow) -> Verdict | None:
    if f.proto == L2TP_IP:
        return _over_ip(f)
    if f.proto != UDP:
        return None
    ctrl: list[str] = []
    data: dict[int, set] = {}
    v3 = 0
    for p in f.packets:
        w = be16(p.data, 0) if len(p.data) >= 2 else -1
        if w in (0xC802, 0xC803):
            m = _control(p.data, p.len, w & 0xF)
            if m is None:
                return None
            ctrl.append(m)
            v3 += w == 0xC803
            continue
        if w == 0x0003 and len(p.data) >= 8 and be32(p.data, 4):
            v3 += 1
            data.setdefault(p.dir, set()).add(p.data[4:8])
            continue
        ids = _data_v2(p.data)
        if ids is None:
            return None
        data.setdefault(p.dir, set()).add(ids)
    if any(len(ids) > 2 for ids in data.values()):
        return None
    n_data = sum(1 for p in f.packets) - len(ctrl)
    if unanswered_request(f, ctrl, n_data):
        return None
    version = "v3" if v3 else "v2"
    if ctrl and any(m.startswith("message type") for m in ctrl):
        conf = 0.99 if len(ctrl) >= 2 else 0.95
    elif ctrl:
        conf = 0.85
    elif n_data >= 2:
        conf = 0.9
    else:
        conf = 0.8
    parts = [f"l2tp {version} udp: {len(ctrl)} control ({', '.join(sorted(set(ctrl))[:3])})" if ctrl
             else f"l2tp {version} udp: no control message seen"]
    if n_data:
        parts.append(f"{n_data} data messages with constant tunnel/session ids carrying PPP")
    return Verdict(NAME, conf, ", ".join(parts), midflow=not ctrl)


def _over_ip(f: Flow) -> Verdict | None:
    ctrl = data = 0
    sessions: set[bytes] = set()
    for p in f.packets:
        if len(p.data) < 4:
            return None
        if p.data[:4] == b"\0\0\0\0":
            if _control(p.data[4:], p.len - 4, 3) is None:
                return None
            ctrl += 1
        else:
            sessions.add(p.data[:4])
            data += 1
    if not ctrl and (data < 3 or len(sessions) > 2):
        return None
    conf = 0.95 if ctrl else 0.75
    ev = f"l2tp v3 over ip proto 115: {ctrl} control (length and AVP valid), {data} data messages, " \
         f"{len(sessions)} session ids"
    return Verdict(NAME, conf, ev, midflow=not ctrl)
