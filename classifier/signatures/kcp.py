"""KCP: the reliable transport over UDP that many online games use, and no VPN.

Why a signature for something that is not a VPN: a KCP datagram carries a cleartext
segment header that repeats the conversation id in every packet of both sides and a
sequence number that grows by one per segment, which is how a tunnel's header looks (an
SPI or receiver index, then a counter). The model alone took a game's KCP session of the
public corpus (miHoYo's Genshin Impact) for a tunnel. Naming it keeps it out of the model.

What is checked (ikcp.c, the reference implementation; all fields little-endian): every
segment is a 24-byte header, conversation id (4), command (1: 81 push, 82 ack, 83
window probe, 84 window size), fragment (1), window (2), timestamp (4), sequence number
(4), next expected number (4), data length (4), then that many bytes; several segments
may share a datagram, so the first segment's length must end the datagram or leave room
for another header, and only a push carries data. miHoYo's games put a 4-byte token after
the id (a 28-byte header) and open the conversation with a 20-byte handshake in network
byte order: 255, the id, the token, 1234567890 and 0xffffffff; the server answers 325,
the id, the token, 1234567890 and 0x14514545 (a disconnect is 404 … 0x19419494).

A flow is named when at least three of its datagrams, from both sides, hold such a
header with one conversation id (random bytes share a 32-bit id once in 2^32, and an
encrypted tunnel's first bytes are a header of its own or random); a handshake whose id
is the one the segments carry makes it certain. Other datagrams may share the flow (an
application's own pings beside its KCP conversation); the evidence counts them. The
verdict has ``is_vpn`` False: the flow is explained and does not go to the model
(``pipeline.signature_split``).

Not seen: kcptun and other tools that encrypt KCP (kcp-go puts a nonce and a checksum
before the header and encrypts all of it); those are the model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from classifier.signatures._base import UDP, BatchView, Flow, Packet, Verdict, be32, plural

NAME = "kcp"
HEADER = 24
#: Bytes after the conversation id before the command: 0 in ikcp.c, 4 (a token) in miHoYo's games.
LAYOUTS = (0, 4)
PUSH, ACK, WASK, WINS = 81, 82, 83, 84
COMMANDS = {PUSH: "push", ACK: "ack", WASK: "window probe", WINS: "window size"}
#: The handshake datagram: its first word, and its last word, per kind (network byte order).
HANDSHAKE_LEN = 20
HANDSHAKE_MAGIC = 1234567890  # word 3 of connect and accept
HANDSHAKES = {0xFF: ("connect", 0xFFFFFFFF), 0x145: ("accept", 0x14514545), 0x194: ("disconnect", 0x19419494)}
MIN_SEGMENTS = 3


def candidates(v: BatchView) -> np.ndarray:
    """UDP flows with at least three datagrams whose stored first segment header is well formed in
    one of the two layouts (what ``check`` then reads per flow), or a handshake datagram."""
    hit = np.zeros(v.n, bool)
    for token in LAYOUTS:
        hit |= (_segment_slots(v, token).sum(axis=1) >= MIN_SEGMENTS)
    rows, slots = np.nonzero((v.lens == HANDSHAKE_LEN) & (v.caps >= HANDSHAKE_LEN) & v.valid)
    words = v.data[rows, slots, :HANDSHAKE_LEN].reshape(-1, 5, 4).astype(np.uint32)
    words = (words[:, :, 0] << 24) | (words[:, :, 1] << 16) | (words[:, :, 2] << 8) | words[:, :, 3]
    shake = np.isin(words[:, 0], list(HANDSHAKES)) & (words[:, 3] == HANDSHAKE_MAGIC)
    hit[rows[shake]] = True
    return v.udp & hit


def _segment_slots(v: BatchView, token: int) -> np.ndarray:
    """(n, K) bool: the slot holds a well-formed first segment header in this layout.

    The command byte screens every slot (4 values of 256); the length field is read and
    checked only where it passed, so the module costs about what one byte comparison does."""
    size = HEADER + token
    cmd = v.data[:, :, 4 + token]
    hit = ((cmd - np.uint8(PUSH)) < len(COMMANDS)) & v.valid & (v.caps >= size)
    rows, slots = np.nonzero(hit)
    field = v.data[rows, slots, 20 + token:24 + token].astype(np.int64)
    length = field[:, 0] | (field[:, 1] << 8) | (field[:, 2] << 16) | (field[:, 3] << 24)
    rest = v.lens[rows, slots].astype(np.int64) - size - length
    hit[rows, slots] = (((cmd[rows, slots] == PUSH) | (length == 0)) & (rest >= 0)
                        & ((rest == 0) | (rest >= size)))
    return hit


@dataclass(slots=True)
class _Segment:
    dir: int
    conv: bytes
    cmd: int
    sn: int


def _segment(p: Packet, token: int) -> _Segment | None:
    """The first segment header of a datagram, as ``_segment_slots`` tests it."""
    size = HEADER + token
    d = p.data
    if len(d) < size or d[4 + token] not in COMMANDS:
        return None
    length = int.from_bytes(d[20 + token:24 + token], "little")
    rest = p.len - size - length
    if rest < 0 or 0 < rest < size or (length and d[4 + token] != PUSH):
        return None
    return _Segment(p.dir, d[:4 + token], d[4 + token], int.from_bytes(d[12 + token:16 + token], "little"))


def _handshake(p: Packet) -> tuple[str, bytes] | None:
    """(kind, id and token in the segments' byte order) of a handshake datagram."""
    d = p.data
    if p.len != HANDSHAKE_LEN or len(d) < HANDSHAKE_LEN or be32(d, 12) != HANDSHAKE_MAGIC:
        return None
    kind = HANDSHAKES.get(be32(d, 0))
    if kind is None or be32(d, 16) != kind[1]:
        return None
    return kind[0], d[4:8][::-1] + d[8:12][::-1]


def check(f: Flow) -> Verdict | None:
    if f.proto != UDP:
        return None
    shakes = [h for h in map(_handshake, f.packets) if h is not None]
    for token in LAYOUTS:
        segments = [s for s in (_segment(p, token) for p in f.packets) if s is not None]
        convs = {s.conv for s in segments}
        if len(segments) < MIN_SEGMENTS or len(convs) != 1 or {s.dir for s in segments} != {0, 1}:
            continue
        (conv,) = convs
        matched = any(token and ident == conv for _, ident in shakes)
        others = len(f.packets) - len(segments) - len(shakes)
        return Verdict(NAME, 0.95 if matched else 0.9, _evidence(segments, conv, token, shakes, matched, others),
                       midflow=not (shakes or any(s.cmd == PUSH and s.sn == 0 for s in segments)), is_vpn=False)
    return None


def _evidence(segments: list[_Segment], conv: bytes, token: int, shakes: list[tuple[str, bytes]], matched: bool,
              others: int) -> str:
    counts = {name: sum(s.cmd == c for s in segments) for c, name in COMMANDS.items()}
    kinds = ", ".join(f"{name} {n}" for name, n in counts.items() if n)
    ident = f"{int.from_bytes(conv[:4], 'little'):#010x}" + (" with a 4-byte token" if token else "")
    text = (f"kcp (reliable UDP, games): {plural(len(segments), 'datagram')} opening with a KCP segment header "
            f"({kinds}), one conversation id {ident} both ways")
    if shakes:
        text += (f"; {' and '.join(dict.fromkeys(kind for kind, _ in shakes))} handshake"
                 + (", which names that id" if matched else ""))
    if others:
        text += f"; {plural(others, 'other datagram')}"
    return text + "; a game's transport, not a VPN"
