"""WireGuard (and its Cloudflare WARP variant; Tailscale is labelled by tailscale.py).

Message layout (WireGuard whitepaper, section 5.4): a type byte (1 initiation,
2 response, 3 cookie reply, 4 transport data) followed by three reserved zero bytes.
Initiation is exactly 148 bytes, response 92, cookie reply 64; a transport message
has a 16-byte header (receiver index, 64-bit little-endian counter) and an AEAD
payload padded to 16 bytes, so its length is 32 + 16n (32 = keepalive), except
near the tunnel MTU, where padding is cut short.

What makes a match: the handshake pair (the response's receiver index equals the
initiation's sender index), or, mid-flow, transport messages whose receiver index
stays constant per direction while the counter climbs. The port plays no part.

Cloudflare WARP reuses the reserved bytes as a client id and sets the two top bits
of the type byte; its transport messages are not padded. It gets its own label,
``wireguard-warp``, and is recognised from transport messages only (counter + index).
"""

from __future__ import annotations

import numpy as np

from classifier.signatures._base import UDP, BatchView, Flow, Packet, Verdict, be32, increasing, le64, plural
from classifier.signatures.tailscale import DISCO_MAGIC, TAILSCALE_PORT, is_disco

NAME = "wireguard"
_SIZES = {1: 148, 2: 92, 3: 64}
#: Padding to 16 bytes stops at the interface MTU, so near it any length occurs.
_MTU_BOUND = 1232


def candidates(v: BatchView) -> np.ndarray:
    b0 = v.b(0)
    zero_res = (v.b(1) == 0) & (v.b(2) == 0) & (v.b(3) == 0)
    lens = v.lens
    plain = zero_res & (
        ((b0 == 1) & (lens == 148))
        | ((b0 == 2) & (lens == 92))
        | ((b0 == 3) & (lens == 64))
        | ((b0 == 4) & (lens >= 32) & ((lens % 16 == 0) | (lens >= _MTU_BOUND)))
    )
    warp = (b0 >= 0xC1) & (b0 <= 0xC4) & ~zero_res & (lens >= 32)
    disco = v.starts_with(DISCO_MAGIC)
    return v.udp & v.any_slot(plain | warp | disco)


def _kind(p: Packet) -> int:
    """Plain WireGuard message type of a packet, 0 if it is not one."""
    d = p.data
    if len(d) < 4 or d[1:4] != b"\0\0\0":
        return 0
    t = d[0]
    if t in _SIZES:
        if p.len == _SIZES[t]:
            return t
        # Some clients append bytes to handshake messages; such a message only counts
        # when the handshake pairing confirms it (see check()).
        return -t if t in (1, 2) and _SIZES[t] < p.len <= _SIZES[t] + 128 else 0
    if t == 4 and p.len >= 32 and (p.len % 16 == 0 or p.len >= _MTU_BOUND) and len(d) >= 16:
        return 4
    return 0


def _transport_ok(pkts: list[Packet], handshakes: int) -> tuple[bool, int]:
    """Per direction and receiver index, counters climbing; few indices (one per session).

    A rekey (a new handshake every two minutes) starts a new session: a new receiver
    index whose counter restarts at zero. Returns (ok, number of sessions with >= 2 messages).
    """
    groups: dict[tuple[int, int], list[Packet]] = {}
    for p in pkts:
        groups.setdefault((p.dir, be32(p.data, 4)), []).append(p)
    per_dir: dict[int, int] = {}
    for d, _ in groups:
        per_dir[d] = per_dir.get(d, 0) + 1
    if any(n > 1 + handshakes for n in per_dir.values()):
        return False, 0
    multi = 0
    for ps in groups.values():
        if len(ps) >= 2:
            counters = [le64(p.data, 8) for p in ps]
            if not increasing(counters, 256) or counters[0] >= 1 << 48:
                return False, 0
            multi += 1
    return True, multi


def check(f: Flow) -> Verdict | None:
    if f.proto != UDP:
        return None
    disco = [p for p in f.packets if is_disco(p)]
    pkts = [p for p in f.packets if not is_disco(p)]
    kinds = [_kind(p) for p in pkts]
    wg = [p for p, k in zip(pkts, kinds, strict=True) if k]
    extended = sum(1 for k in kinds if k < 0)
    if pkts and len(wg) < len(pkts):
        # Every packet of a WireGuard socket is a WireGuard message (or a Tailscale
        # disco message); one foreign packet means this is something else.
        return _check_warp(f, pkts) if not wg else None
    if not wg:
        return None
    init = [p for p in wg if p.data[0] == 1]
    resp = [p for p in wg if p.data[0] == 2]
    cookie = [p for p in wg if p.data[0] == 3]
    data = [p for p in wg if p.data[0] == 4]
    paired = any(
        r.dir != i.dir and be32(r.data, 8) == be32(i.data, 4) for i in init for r in resp if len(r.data) >= 12
    )
    ok, multi = _transport_ok(data, len(init) + len(resp))
    if not ok:
        return None
    if data and paired:
        # Transport messages must address an index chosen in a handshake (those seen
        # before the first captured handshake may belong to an earlier session).
        senders = {be32(p.data, 4) for p in init + resp}
        if not {be32(p.data, 4) for p in data} & senders:
            return None
    if extended and not paired:
        return None
    keepalive = sum(1 for p in data if p.len == 32)
    parts = []
    if paired:
        parts.append("handshake initiation/response with matching indices")
    elif init or resp:
        parts.append(f"{plural(len(init), 'initiation')} (148 B), {plural(len(resp), 'response')} (92 B)")
    if extended:
        parts.append(f"{extended} handshake messages longer than standard (extra trailing bytes)")
    if cookie:
        parts.append(plural(len(cookie), "cookie reply"))
    if data:
        parts.append(f"{len(data)} transport (constant receiver index, counter rising{', ' + str(keepalive) + ' keepalive' if keepalive else ''})")
    midflow = not (init or resp or cookie)
    if paired:
        conf = 0.99
    elif (init or resp) and data:
        conf = 0.97
    elif init or resp:
        conf = 0.85 if len(init) + len(resp) >= 2 else 0.75
    elif multi >= 2 and len(data) >= 4:
        conf = 0.95
    elif multi >= 1 and len(data) >= 3:
        conf = 0.9
    else:
        return None  # one or two bare transport messages are not enough
    proto = NAME
    if disco or f.has_port(TAILSCALE_PORT):
        proto = "tailscale"
        parts.append(f"{plural(len(disco), 'Tailscale disco message')}" if disco else "Tailscale port 41641")
    label = "tailscale: wireguard" if proto == "tailscale" else "wireguard"
    evidence = f"{label} udp: {', '.join(parts)}; {len(wg)} of {len(f.packets)} payload packets checked"
    if midflow:
        evidence += "; mid-flow (no handshake seen)"
    return Verdict(proto, conf, evidence, midflow)


def _check_warp(f: Flow, pkts: list[Packet]) -> Verdict | None:
    """Cloudflare WARP: type byte 0xC1..0xC4, reserved bytes carry a client id."""
    data = [p for p in pkts if len(p.data) >= 16 and p.data[0] == 0xC4 and p.data[1:4] != b"\0\0\0"]
    hs = [p for p in pkts if len(p.data) >= 4 and p.data[0] in (0xC1, 0xC2, 0xC3)]
    if len(data) + len(hs) < len(pkts) or len(data) < 3:
        return None
    by_dir: dict[int, list[Packet]] = {}
    for p in data:
        by_dir.setdefault(p.dir, []).append(p)
    for ps in by_dir.values():
        if len({p.data[1:8] for p in ps}) != 1:
            return None
        if len(ps) >= 2 and not increasing([le64(p.data, 8) for p in ps], 256):
            return None
    if max(len(ps) for ps in by_dir.values()) < 3:
        return None
    midflow = not hs
    evidence = (f"wireguard-warp udp: {len(data)} transport messages with type 0xC4, client id in the "
                f"reserved bytes, constant receiver index, counter rising; {len(hs)} handshake-type messages")
    return Verdict("wireguard-warp", 0.9 if hs else 0.85, evidence, midflow)
