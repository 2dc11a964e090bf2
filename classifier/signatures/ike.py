"""IPsec key exchange: IKEv1 (ISAKMP) and IKEv2 over UDP, NAT-T (UDP 4500) and TCP.

IKE header (RFC 2408 section 3.1, RFC 7296 section 3.1): initiator SPI (8, never zero),
responder SPI (8, zero in the first message), next payload, version (0x10 or 0x20),
exchange type, flags, message id (4) and the total length (4), which must equal the
message length on the wire. On UDP 4500 IKE messages follow a 4-byte zero non-ESP
marker (RFC 3948) and share the port with UDP-encapsulated ESP (SPI, sequence) and
1-byte 0xFF NAT keepalives. Over TCP (RFC 8229) the stream starts with ``IKETCP``
and every message is prefixed with a 2-byte length that includes itself.

A flow matches when at least one message passes every header check (length equal
to the payload, version and exchange type and next payload valid for that version,
reserved flag bits clear). The port only orders checks.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from classifier.signatures._base import TCP, UDP, BatchView, Flow, Packet, Verdict, be32, increasing

NAME = "ipsec-ike"

_V1_EXCH = {1, 2, 3, 4, 5, 6, 32, 33}
_V2_EXCH = {34, 35, 36, 37, 38, 39, 40, 41, 43, 44}
_V1_NEXT = set(range(0, 34)) | {130, 131, 132}
_V2_NEXT = {0} | set(range(33, 56))
_EXCH_NAMES = {1: "base", 2: "main mode", 3: "auth only", 4: "aggressive mode", 5: "informational",
               6: "transaction", 32: "quick mode", 33: "new group", 34: "IKE_SA_INIT", 35: "IKE_AUTH",
               36: "CREATE_CHILD_SA", 37: "INFORMATIONAL", 38: "IKE_SESSION_RESUME",
               43: "IKE_INTERMEDIATE", 44: "IKE_FOLLOWUP_KE"}
_MARKER = b"\0\0\0\0"


def _header_ok_vec(v: BatchView, off: int, length: np.ndarray) -> np.ndarray:
    ver = v.b(off + 17)
    return (v.be32(off + 24) == length.astype(np.uint32)) & ((ver == 0x10) | (ver == 0x20)) & (length >= 28)


def candidates(v: BatchView) -> np.ndarray:
    lens = v.lens.astype(np.int64)
    plain = _header_ok_vec(v, 0, lens) | ((v.be32(24) == 0) & (v.b(17) == 0x10) & (v.b(16) == 1))
    natt = (v.be32(0) == 0) & ((v.b(21) == 0x10) | (v.b(21) == 0x20)) & (v.be32(28) >= (lens - 4).astype(np.uint32))
    udp = v.udp & v.any_slot(plain | natt)
    tcp = v.tcp & v.any_slot(v.starts_with(b"IKETCP") | ((v.be32(2) == 0) & (v.be16(0) >= 32)))
    return udp | tcp


def parse_header(msg: bytes, length: int, loose: bool = False) -> tuple[int, int, int, bytes, bytes] | None:
    """(version, exchange type, message id, initiator SPI, responder SPI) of a valid IKE header.

    ``loose`` accepts a length field larger than the datagram seen, as when the engine
    kept only the first IP fragment of a large IKE_AUTH; both SPIs must then be set.
    """
    if len(msg) < 28 or length < 28:
        return None
    total = be32(msg, 24)
    # A zero length field in an otherwise valid IKEv1 first message (SA payload first) is
    # a known malformation some stacks send; Wireshark then stops, nDPI still says IPsec.
    zero_v1 = total == 0 and msg[16] == 1 and msg[17] == 0x10 and msg[8:16] == b"\0" * 8
    if total != length and not zero_v1 and \
            not (loose and length < total <= 65535 and msg[8:16] != b"\0" * 8):
        return None
    ispi, rspi = msg[0:8], msg[8:16]
    nxt, ver, exch, flags = msg[16], msg[17], msg[18], msg[19]
    if ispi == b"\0" * 8:
        return None
    if ver == 0x10:
        if exch not in _V1_EXCH or nxt not in _V1_NEXT or flags & 0xF8:
            return None
    elif ver == 0x20:
        if exch not in _V2_EXCH or nxt not in _V2_NEXT or flags & 0xC7:
            return None
    else:
        return None
    return ver >> 4, exch, be32(msg, 20), ispi, rspi


def _messages(f: Flow) -> tuple[list[tuple[int, tuple]], list[Packet], int, int, int]:
    """IKE headers (dir, header), ESP-in-UDP packets, keepalives, other packets, fragment heads."""
    ike: list[tuple[int, tuple]] = []
    esp: list[Packet] = []
    keepalive = other = 0
    fragments = 0
    if f.proto == UDP:
        for p in f.packets:
            h = parse_header(p.data, p.len)
            if h is None and p.data.startswith(_MARKER):
                h = parse_header(p.data[4:], p.len - 4)
            if h is None and p.data.startswith(_MARKER):
                h = parse_header(p.data[4:], p.len - 4, loose=True)
                if h is not None:
                    fragments += 1
            if h is not None:
                ike.append((p.dir, h))
            elif p.len == 1 and p.data == b"\xff":
                keepalive += 1
            elif p.len >= 16 and len(p.data) >= 8 and not p.data.startswith(_MARKER):
                esp.append(p)
            else:
                other += 1
        return ike, esp, keepalive, other, fragments
    for d, stream in enumerate(f.streams):
        off = 6 if stream.read(0, 6) == b"IKETCP" else 0
        n = 0
        while n < 32:
            head = stream.read(off, 2)
            if head is None:
                break
            total = int.from_bytes(head, "big")
            if total < 3:
                break
            body = stream.read_upto(off + 2, total - 2) or b""
            if body.startswith(_MARKER):
                h = parse_header(body[4:], total - 6)
                if h is not None:
                    ike.append((d, h))
                else:
                    other += 1
            elif total - 2 >= 16 and len(body) >= 8:
                esp.append(Packet(d, total - 2, body, 0, 0))
            off += total
            n += 1
    return ike, esp, keepalive, other, 0


def esp_pattern(pkts: list[Packet], min_spi: int = 256, max_sas: int = 4) -> tuple[bool, int]:
    """SPI + sequence shape: per SA (direction, SPI) the sequence numbers climb.

    A direction may carry a few SAs (rekeying, several child SAs); SPIs below
    ``min_spi`` are reserved by RFC 4303 (0 always is). Returns (ok, longest run).
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for p in pkts:
        groups.setdefault((p.dir, be32(p.data, 0)), []).append(be32(p.data, 4))
    per_dir: dict[int, int] = {}
    for d, spi in groups:
        if spi == 0 or spi < min_spi:
            return False, 0
        per_dir[d] = per_dir.get(d, 0) + 1
    if any(n > max_sas for n in per_dir.values()):
        return False, 0
    run = 0
    for seqs in groups.values():
        if len(seqs) >= 2 and not increasing(seqs, 64):
            return False, 0
        run = max(run, len(seqs))
    return True, run


def unanswered_initiation(f: Flow, ike: list[tuple[int, tuple]], esp: list[Packet], keepalive: int) -> bool:
    """An initiator's first message, alone or repeated, that nothing answered: no tunnel.

    Every message has a zero responder SPI (IKEv1 main or aggressive mode message 1, IKEv2
    IKE_SA_INIT) and all come from one side, with no ESP and no keepalive. That is what a
    scanner's probe looks like (nmap's UDP scan and ike-scan send exactly this to 500 and
    4500), and also a client whose server never answered: in neither case does a tunnel
    exist. A tap that sees one direction of a real tunnel sees more: the initiator's
    IKE_AUTH or quick mode carries the responder's SPI, and ESP follows.
    """
    return (len(f.directions) == 1 and not esp and not keepalive
            and all(h[4] == b"\0" * 8 for _, h in ike))


def check(f: Flow) -> Verdict | None:
    if f.proto not in (UDP, TCP):
        return None
    ike, esp, keepalive, other, frags = _messages(f)
    if not ike:
        return None
    if unanswered_initiation(f, ike, esp, keepalive):
        return None
    # Everything else on an IKE socket is ESP-in-UDP, keepalives or IKE fragments we
    # failed to parse; too many foreign packets means the header match was chance.
    if other > len(ike):
        return None
    vers = Counter(h[0] for _, h in ike)
    ispis = Counter(h[3] for _, h in ike)
    main_spi, main_n = ispis.most_common(1)[0]
    dirs_main = {d for d, h in ike if h[3] == main_spi}
    initial = any(h[4] == b"\0" * 8 for _, h in ike)
    # The flow's own start: an initial exchange, or (NAT-T port change) the first
    # IKE_AUTH / main-mode message; anything later means the capture began mid-flow.
    started = initial or any((h[0] == 2 and h[2] <= 1 and h[1] in (34, 35)) or
                             (h[0] == 1 and h[1] in (2, 4) and h[2] == 0) for _, h in ike)
    exch = Counter(_EXCH_NAMES.get(h[1], str(h[1])) for _, h in ike)
    esp_ok, _ = esp_pattern(esp) if esp else (True, 0)
    if len(dirs_main) == 2 and main_n >= 2:
        conf = 0.99
    elif main_n >= 2 or initial:
        conf = 0.95
    else:
        conf = 0.9
    if frags == len(ike):
        conf = min(conf, 0.85)
    zero = sum(1 for p in f.packets if f.proto == UDP and len(p.data) >= 28 and be32(p.data, 24) == 0)
    if zero == len(ike):
        conf = 0.7
    transport = "tcp (RFC 8229)" if f.proto == TCP else "udp"
    if f.proto == UDP and any(p.data.startswith(_MARKER) for p in f.packets):
        transport = "udp with non-ESP marker (NAT-T)"
    ver = "/".join(f"IKEv{k}" for k in sorted(vers))
    parts = [f"ipsec-ike {transport}: {len(ike)} {ver} messages ({', '.join(f'{n} {e}' for e, n in exch.items())})",
             "length field zero (malformed first message)" if zero == len(ike) else
             "length field equal to payload" if frags < len(ike) else "header fields valid"]
    parts.append("initiator SPI constant, both directions" if len(dirs_main) == 2 else
                 "one direction captured" if len(f.directions) == 1 else "initiator SPI constant")
    if esp:
        parts.append(f"{len(esp)} ESP-in-UDP packets{' (SPI constant, sequence rising)' if esp_ok else ''}")
    if keepalive:
        parts.append(f"{keepalive} NAT-T keepalives")
    if frags:
        parts.append(f"{frags} with a length field beyond the datagram (first IP fragment)")
    midflow = not started
    if midflow:
        parts.append("no initial exchange seen (mid-flow)")
    return Verdict(NAME, conf, ", ".join(parts), midflow)
