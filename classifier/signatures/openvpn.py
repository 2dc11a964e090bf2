"""OpenVPN over UDP and TCP: plain, tls-auth and tls-crypt, handshake or mid-flow.

Packet layout (OpenVPN ssl_pkt.h, Wireshark packet-openvpn.c): the first byte is
opcode << 3 | key id. Control packets (hard/soft resets, CONTROL, ACK, CONTROL_WKC)
carry the sender's 8-byte session id next; with ``tls-auth`` an HMAC (16-64 bytes)
plus a 4-byte packet id and 4-byte time follow, with ``tls-crypt`` the packet id and
time come right after the session id and the rest is encrypted. Plain and tls-auth
control packets then carry an ACK array whose entries are followed by the peer's
session id (the echo). Data packets are P_DATA_V1 (opcode byte only) or P_DATA_V2
(opcode byte + 3-byte peer id; with AEAD ciphers a 4-byte packet id follows). Over
TCP each packet is prefixed with a 2-byte length; segments may hold several packets
and packets may be split across segments.

What makes a match (any port):
- the handshake: a client hard reset (v1/v2/v3) with key id 0 answered by a server
  hard reset, each side keeping one session id in all its control packets, and the
  opcode sequence following the protocol's state machine (the opcode fingerprint of
  Xue et al., USENIX Security 2022: resets first, then CONTROL/ACK, then data; no
  other opcode values);
- or, mid-flow, control packets with a constant session id in a direction and
  climbing packet ids; or P_DATA_V2 packets with one peer id and (AEAD) packet ids
  that climb per direction.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from classifier.signatures._base import (
    TCP,
    UDP,
    BatchView,
    Flow,
    Verdict,
    be32,
    framed_records,
    increasing,
)

NAME = "openvpn"

HARD_RESET_CLIENT = {1, 7, 10}
HARD_RESET_SERVER = {2, 8}
SOFT_RESET, CONTROL, ACK, DATA_V1, DATA_V2, CONTROL_WKC = 3, 4, 5, 6, 9, 11
CONTROL_OPS = HARD_RESET_CLIENT | HARD_RESET_SERVER | {SOFT_RESET, CONTROL, ACK, CONTROL_WKC}
VALID_OPS = CONTROL_OPS | {DATA_V1, DATA_V2}
_OP_NAMES = {1: "hard reset v1", 2: "hard reset v1", 7: "hard reset v2", 8: "hard reset v2",
             10: "hard reset v3"}
_HMAC_SIZES = (16, 20, 28, 32, 48, 64)
_CLIENT_RESET_BYTES = (0x08, 0x38, 0x50)
_SERVER_RESET_BYTES = (0x10, 0x40)


@dataclass(slots=True)
class _Pkt:
    dir: int
    op: int
    key: int
    data: bytes  # the OpenVPN packet (no TCP length prefix), stored bytes
    len: int
    ts: int


def candidates(v: BatchView) -> np.ndarray:
    """Rows whose first packet of a direction could start an OpenVPN exchange."""
    out = np.zeros(v.n, bool)
    if v.n == 0:
        return out
    rows = np.arange(v.n)
    for d in (0, 1):
        first = v.nth_slot(d, 0)
        second = v.nth_slot(d, 1)
        have = first >= 0
        sf = np.where(have, first, 0)
        for off, mask in ((0, v.udp), (2, v.tcp)):
            b = v.data[rows, sf, off].astype(np.int32)
            reset = np.isin(b, _CLIENT_RESET_BYTES + _SERVER_RESET_BYTES)
            data_v2 = (b >> 3) == DATA_V2
            control = np.isin(b >> 3, (CONTROL, ACK, SOFT_RESET, CONTROL_WKC))
            # A control or data packet mid-flow must repeat its 8-byte session id or
            # 3-byte peer id in the next packet of the same direction.
            sid_a = v.slot_bytes(first, off + 1, off + 9)
            sid_b = v.slot_bytes(second, off + 1, off + 9)
            same_sid = (second >= 0) & (sid_a == sid_b).all(axis=1)
            same_peer = (second >= 0) & (sid_a[:, :3] == sid_b[:, :3]).all(axis=1)
            b_next = v.data[rows, np.where(second >= 0, second, 0), off].astype(np.int32)
            next_ok = np.isin(b_next >> 3, list(VALID_OPS))
            hit = reset | (control & same_sid & next_ok) | (data_v2 & same_peer & ((b_next >> 3) == DATA_V2))
            if off == 2:
                ln = v.be16(0)[rows, sf]
                hit &= (ln >= 5) & (ln <= 2048)
            out |= mask & have & hit
    return out


def _packets(f: Flow) -> list[_Pkt]:
    out: list[_Pkt] = []
    if f.proto == UDP:
        for p in f.packets:
            if p.data:
                out.append(_Pkt(p.dir, p.data[0] >> 3, p.data[0] & 7, p.data, p.len, p.ts))
        return out
    for d, stream in enumerate(f.streams):
        # Records start at the first segment when the handshake was captured; mid-flow
        # the first seen segment may start inside a record, so try the next ones too.
        best = []
        for start in stream.segment_starts()[:4]:
            recs = framed_records(stream, d, start, max_len=2048)
            if len(recs) > len(best):
                best = recs
            if recs and len(recs) >= 2:
                break
        ts = {off: p.ts for off, p in stream.segments}
        for r in best:
            if r.body:
                t = max((v for k, v in ts.items() if k <= r.offset), default=0)
                out.append(_Pkt(d, r.body[0] >> 3, r.body[0] & 7, r.body, r.length, t))
    out.sort(key=lambda p: p.ts)
    return out


def _variant(pkts: list[_Pkt], sids: dict[int, bytes]) -> tuple[str, bool]:
    """Guess plain / tls-auth / tls-crypt and whether a peer echoed a session id."""
    echo = False
    for p in pkts:
        other = sids.get(1 - p.dir)
        if other and p.op in CONTROL_OPS and other in p.data[9:]:
            echo = True
            break
    ctrl = {d: [p for p in pkts if p.dir == d and p.op in CONTROL_OPS] for d in (0, 1)}
    # tls-crypt: packet id right after the session id, climbing; 4-byte time after it.
    for d in (0, 1):
        ps = [p for p in ctrl[d] if len(p.data) >= 17]
        if len(ps) >= 2 and increasing([be32(p.data, 9) for p in ps], 8) and \
                len({p.data[13:17] for p in ps}) <= 2 and not echo:
            return "tls-crypt", echo
    if any(p.op == 10 for p in pkts):
        return "tls-crypt-v2", echo
    for h in _HMAC_SIZES:
        for d in (0, 1):
            ps = [p for p in ctrl[d] if len(p.data) >= 17 + h]
            if len(ps) >= 2 and increasing([be32(p.data, 9 + h) for p in ps], 8) and \
                    len({p.data[13 + h : 17 + h] for p in ps}) <= 2:
                return f"tls-auth (HMAC {h * 8} bit)", echo
    plain = [p for p in pkts if p.op in HARD_RESET_CLIENT | HARD_RESET_SERVER and len(p.data) >= 10]
    if plain and all(p.data[9] <= 8 for p in plain) and any(p.len in (14, 26) for p in plain):
        return "no HMAC", echo
    return "tls-auth or unknown HMAC", echo


#: Unix times of the tls-auth / tls-crypt replay field that a live peer could send.
_TIME_MIN, _TIME_MAX = 0x4B000000, 0x88000000  # 2009 .. 2042


def _plausible_time(d: bytes, off: int) -> bool:
    return len(d) >= off + 4 and _TIME_MIN <= be32(d, off) <= _TIME_MAX


def _reset_layout(p: _Pkt) -> str | None:
    """Which wrapping a hard reset's layout fits (plain, tls-auth, tls-crypt), or None.

    A client reset acks nothing and has message packet id 0; a server reset acks the
    client's packet 0 and echoes its session id. With tls-auth a replay packet id
    (starting at 1) and a Unix time precede that, after the HMAC; with tls-crypt they
    follow the session id and the rest is encrypted.
    """
    d = p.data
    client = p.op in HARD_RESET_CLIENT
    if client and len(d) >= 14 and d[9] == 0 and be32(d, 10) == 0:
        return "no HMAC"
    if not client and len(d) >= 26 and d[9] == 1 and be32(d, 10) == 0 and be32(d, 22) == 0:
        return "no HMAC"
    for h in _HMAC_SIZES:
        o = 9 + h
        if len(d) < o + 13 or not 1 <= be32(d, o) <= 16 or not _plausible_time(d, o + 4):
            continue
        if client and d[o + 8] == 0 and be32(d, o + 9) == 0:
            return f"tls-auth (HMAC {h * 8} bit)"
        if not client and d[o + 8] == 1 and be32(d, o + 9) == 0:
            return f"tls-auth (HMAC {h * 8} bit)"
    if len(d) >= 17 and 1 <= be32(d, 9) & 0x00FFFFFF <= 16 and _plausible_time(d, 13):
        return "tls-crypt-v2" if p.op == 10 else "tls-crypt"
    return None


def _ids_climb(ps: list[_Pkt]) -> bool:
    """Replay or message packet ids rise over a direction's control packets."""
    if len(ps) < 3 or len({p.data for p in ps}) < len(ps):
        return False  # identical datagrams are repeats, not a session
    for off in (9, *(9 + h for h in _HMAC_SIZES)):
        if all(len(p.data) >= off + 8 for p in ps) and \
                increasing([be32(p.data, off) for p in ps], 8) and _plausible_time(ps[0].data, off + 4):
            return True
    # No HMAC: CONTROL packets carry a message packet id after the ACK block.
    ids = []
    for p in ps:
        if p.op not in (CONTROL, CONTROL_WKC):
            continue
        if len(p.data) < 10 or p.data[9] > 8:
            return False
        off = 10 + 4 * p.data[9] + (8 if p.data[9] else 0)
        if len(p.data) < off + 4:
            return False
        ids.append(be32(p.data, off))
    return len(ids) >= 2 and increasing(ids, 8)


def check(f: Flow) -> Verdict | None:
    if f.proto not in (UDP, TCP):
        return None
    pkts = _packets(f)
    if not pkts:
        return None
    transport = "udp" if f.proto == UDP else "tcp"
    if any(p.op not in VALID_OPS for p in pkts):
        return None
    return _handshake(f, pkts, transport) or _midflow_control(f, pkts, transport) or \
        _midflow_data(f, pkts, transport)


def _sid_consistent(pkts: list[_Pkt], d: int) -> tuple[bytes | None, int]:
    ctrl = [p for p in pkts if p.dir == d and p.op in CONTROL_OPS and len(p.data) >= 9]
    if not ctrl:
        return None, 0
    sids = {p.data[1:9] for p in ctrl}
    if len(sids) != 1:
        return None, -1
    return ctrl[0].data[1:9], len(ctrl)


def _state_machine_ok(pkts: list[_Pkt], d: int) -> bool:
    """Opcode order of one direction: resets only at the start, data only after control."""
    ops = [p.op for p in pkts if p.dir == d]
    if not ops:
        return True
    seen_data = False
    for i, op in enumerate(ops):
        # Retransmitted resets come right at the start, never after data.
        if op in HARD_RESET_CLIENT | HARD_RESET_SERVER and (seen_data or i > 2):
            return False
        if op in (DATA_V1, DATA_V2):
            seen_data = True
    return True


def _counts(pkts: list[_Pkt]) -> str:
    c = Counter(p.op for p in pkts)
    parts = []
    ctrl = c[CONTROL] + c[CONTROL_WKC] + c[SOFT_RESET]
    if ctrl:
        parts.append(f"{ctrl} control")
    if c[ACK]:
        parts.append(f"{c[ACK]} ack")
    if c[DATA_V1]:
        parts.append(f"{c[DATA_V1]} data v1")
    if c[DATA_V2]:
        parts.append(f"{c[DATA_V2]} data v2")
    return ", ".join(parts)


def _handshake(f: Flow, pkts: list[_Pkt], transport: str) -> Verdict | None:
    firsts = {d: next((p for p in pkts if p.dir == d), None) for d in (0, 1)}
    client = next((d for d in (0, 1) if firsts[d] and firsts[d].op in HARD_RESET_CLIENT
                   and firsts[d].key == 0), None)
    server = next((d for d in (0, 1) if firsts[d] and firsts[d].op in HARD_RESET_SERVER
                   and firsts[d].key == 0), None)
    if client is None and server is None:
        return None
    if client is not None and server is not None and client == server:
        return None
    sids: dict[int, bytes] = {}
    n_ctrl = {}
    for d in (0, 1):
        sid, n = _sid_consistent(pkts, d)
        if n < 0:
            return None
        if sid is not None:
            sids[d] = sid
            n_ctrl[d] = n
        if not _state_machine_ok(pkts, d):
            return None
    if len(sids) == 2 and sids[0] == sids[1]:
        return None
    variant, echo = _variant(pkts, sids)
    layouts = [_reset_layout(firsts[d]) for d in (client, server) if d is not None]
    layout_ok = any(layouts)
    both = client is not None and server is not None
    most = max(n_ctrl.values(), default=0)
    climbing = [d for d in (0, 1) if _ids_climb([p for p in pkts if p.dir == d and p.op in CONTROL_OPS])]
    if both and (echo or layout_ok) and most >= 2:
        conf = 0.99
    elif both and (echo or layout_ok or climbing):
        conf = 0.95
    elif both and len(n_ctrl) == 2 and min(n_ctrl.values()) >= 2 and \
            all(len({p.data for p in pkts if p.dir == d}) >= 2 for d in (0, 1)):
        # Wide HMACs (SHA-512) push the checkable fields past the stored bytes; two
        # distinct session ids, each kept over several packets, still pin it down.
        conf = 0.95
    elif layout_ok and climbing and most >= 3:
        conf = 0.9  # one direction only: reset + control packets under one session id
    else:
        return None
    if variant.startswith("tls-auth or") and any(layouts):
        variant = next(x for x in layouts if x)
    resets = []
    if client is not None:
        resets.append(f"client {_OP_NAMES[firsts[client].op]}")
    if server is not None:
        resets.append(f"server {_OP_NAMES[firsts[server].op]}")
    one_way = "" if len(f.directions) == 2 else " (one direction captured)"
    ev = [f"openvpn {transport}{one_way}: {'/'.join(resets)}", variant]
    ev.append("session ids echoed" if echo else "session id constant per direction")
    counts = _counts(pkts)
    if counts:
        ev.append(counts)
    ev.append(f"opcode sequence valid over {len(pkts)} packets")
    return Verdict(NAME, conf, ", ".join(ev), midflow=transport == "tcp" and not f.tcp_start_seen)


def _midflow_control(f: Flow, pkts: list[_Pkt], transport: str) -> Verdict | None:
    ctrl_dirs = []
    for d in (0, 1):
        ps = [p for p in pkts if p.dir == d and p.op in CONTROL_OPS]
        if not ps:
            continue
        sid, n = _sid_consistent(pkts, d)
        if sid is None or n < 3 or not _state_machine_ok(pkts, d) or not _ids_climb(ps):
            return None
        ctrl_dirs.append(d)
    if not ctrl_dirs:
        return None
    ev = (f"openvpn {transport}: mid-flow control channel, session id constant and packet ids rising over "
          f"{sum(1 for p in pkts if p.op in CONTROL_OPS)} control/ack packets, {_counts(pkts)}")
    return Verdict(NAME, 0.85 if len(ctrl_dirs) == 1 else 0.9, ev, midflow=True)


def _midflow_data(f: Flow, pkts: list[_Pkt], transport: str) -> Verdict | None:
    if f.has_port(500, 4500):
        return None  # port hint: there an SPI + sequence header is ESP-in-UDP (ike.py decides)
    data = [p for p in pkts if p.op == DATA_V2 and len(p.data) >= 8]
    if len(data) < 3 or len(data) < len(pkts) - 1:
        return None
    peers = {p.data[1:4] for p in data}
    if len(peers) != 1 or len({p.key for p in data}) > 2:
        return None
    peer = int.from_bytes(next(iter(peers)), "big")
    dirs = {p.dir for p in data}
    climbing = 0
    for d in dirs:
        ps = [p for p in data if p.dir == d]
        if len(ps) >= 3 and increasing([be32(p.data, 4) for p in ps], 32):
            climbing += 1
    both = len(dirs) == 2 and all(sum(1 for p in data if p.dir == d) >= 2 for d in dirs)
    if climbing:
        conf = 0.92 if both else 0.88
    elif both and len(data) >= 6 and (peer < 1 << 16 or peer == 0xFFFFFF):
        conf = 0.8  # CBC ciphers hide the packet id; a small shared peer id is what is left
    else:
        return None
    ev = (f"openvpn {transport}: mid-flow, {len(data)} data v2 packets with constant peer id {peer}"
          f"{', packet ids climbing' if climbing else ''}"
          f"{', both directions' if both else ', one direction'}; no handshake seen")
    return Verdict(NAME, conf, ev, midflow=True)
