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
    plain = _header_ok_vec(v, 0, lens)
    natt = (v.be32(0) == 0) & _header_ok_vec(v, 4, lens - 4)
    udp = v.udp & v.any_slot(plain | natt)
    tcp = v.tcp & v.any_slot(v.starts_with(b"IKETCP") | ((v.be32(2) == 0) & (v.be16(0) >= 32)))
    return udp | tcp


def parse_header(msg: bytes, length: int) -> tuple[int, int, int, bytes, bytes] | None:
    """(version, exchange type, message id, initiator SPI, responder SPI) of a valid IKE header."""
    if len(msg) < 28 or length < 28 or be32(msg, 24) != length:
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


def _messages(f: Flow) -> tuple[list[tuple[int, tuple]], list[Packet], int, int]:
    """IKE headers (dir, header), ESP-in-UDP packets, keepalives, and other packets."""
    ike: list[tuple[int, tuple]] = []
    esp: list[Packet] = []
    keepalive = other = 0
    if f.proto == UDP:
        for p in f.packets:
            h = parse_header(p.data, p.len)
            if h is None and p.data.startswith(_MARKER):
                h = parse_header(p.data[4:], p.len - 4)
            if h is not None:
                ike.append((p.dir, h))
            elif p.len == 1 and p.data == b"\xff":
                keepalive += 1
            elif p.len >= 16 and len(p.data) >= 8 and not p.data.startswith(_MARKER):
                esp.append(p)
            else:
                other += 1
        return ike, esp, keepalive, other
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
    return ike, esp, keepalive, other


def esp_pattern(pkts: list[Packet]) -> tuple[bool, int]:
    """Per direction: one SPI (not reserved), sequence numbers climbing. Returns (ok, longest run)."""
    by_dir: dict[int, list[Packet]] = {}
    for p in pkts:
        by_dir.setdefault(p.dir, []).append(p)
    spis = set()
    run = 0
    for ps in by_dir.values():
        s = {be32(p.data, 0) for p in ps}
        if len(s) != 1:
            return False, 0
        spi = s.pop()
        if spi < 256:
            return False, 0
        spis.add(spi)
        seqs = [be32(p.data, 4) for p in ps]
        if len(seqs) >= 2 and not increasing(seqs, 64):
            return False, 0
        run = max(run, len(seqs))
    return True, run


def check(f: Flow) -> Verdict | None:
    if f.proto not in (UDP, TCP):
        return None
    ike, esp, keepalive, other = _messages(f)
    if not ike:
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
    exch = Counter(_EXCH_NAMES.get(h[1], str(h[1])) for _, h in ike)
    esp_ok, _ = esp_pattern(esp) if esp else (True, 0)
    if len(dirs_main) == 2 and main_n >= 2:
        conf = 0.99
    elif main_n >= 2 or initial:
        conf = 0.95
    else:
        conf = 0.9
    transport = "tcp (RFC 8229)" if f.proto == TCP else "udp"
    if f.proto == UDP and any(p.data.startswith(_MARKER) for p in f.packets):
        transport = "udp with non-ESP marker (NAT-T)"
    ver = "/".join(f"IKEv{k}" for k in sorted(vers))
    parts = [f"ipsec-ike {transport}: {len(ike)} {ver} messages ({', '.join(f'{n} {e}' for e, n in exch.items())})",
             "length field equal to payload"]
    parts.append("initiator SPI constant, both directions" if len(dirs_main) == 2 else
                 "one direction captured" if len(f.directions) == 1 else "initiator SPI constant")
    if esp:
        parts.append(f"{len(esp)} ESP-in-UDP packets{' (SPI constant, sequence rising)' if esp_ok else ''}")
    if keepalive:
        parts.append(f"{keepalive} NAT-T keepalives")
    midflow = not initial
    if midflow:
        parts.append("no initial exchange seen (mid-flow)")
    return Verdict(NAME, conf, ", ".join(parts), midflow)
