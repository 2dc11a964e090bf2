"""Crafted captures (scapy) of what the kernel here cannot produce: plain ESP, L2TP and PPTP data.

Why crafted and labelled so: the kernel has no ESP transform and no PPP, so plain ESP
(IP protocol 50), L2TP data messages and PPTP's GRE data channel cannot come from real
daemons here. These captures follow the wire formats (RFC 4303 ESP, RFC 2661 L2TPv2 data
messages, RFC 2637 enhanced GRE) with random bytes where the real thing is encrypted, and
their manifest notes say "crafted with scapy". A seeded generator makes them reproducible:
the same scenario and duration always give the same file.

Traffic shape: pings every 200 ms both ways plus bursts of bulk TCP-sized packets from the
server, so sizes and timing resemble the real tunnels' captures.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from pathlib import Path

from classifier.lab.netns import client_addr, inner_client, inner_server, server_addr
from classifier.lab.scenarios import Scenario, register

CLIENT_MAC = "02:00:00:00:00:02"
SERVER_MAC = "02:00:00:00:00:01"
T0 = 1_795_331_490.0  # fixed start (2026-11-22T07:11:30Z, beside the other samples): reproducible files


def _inner_packets(n: int, duration: float, rng: random.Random) -> list[tuple[float, bool, bytes]]:
    """(time offset, from_client, inner IP packet) of a ping + bulk pattern through a tunnel."""
    from scapy.layers.inet import ICMP, IP, TCP
    from scapy.packet import Raw

    out: list[tuple[float, bool, bytes]] = []
    c, s = inner_client(n), inner_server(n)
    t = 0.05
    seq = 0
    while t < duration:
        seq += 1
        echo = IP(src=c, dst=s, id=seq) / ICMP(type=8, id=0x4C41, seq=seq) / Raw(rng.randbytes(120))
        reply = IP(src=s, dst=c, id=seq) / ICMP(type=0, id=0x4C41, seq=seq) / Raw(rng.randbytes(120))
        out.append((t, True, bytes(echo)))
        out.append((t + 0.0004 + rng.random() * 0.0003, False, bytes(reply)))
        if seq % 3 == 0:  # a small HTTP-like download
            burst_t = t + 0.05
            for k in range(rng.randint(8, 18)):
                size = 1380 if k < 10 else rng.randint(200, 1380)
                data = IP(src=s, dst=c) / TCP(sport=8080, dport=40000 + seq, flags="A") / Raw(rng.randbytes(size))
                out.append((burst_t + k * 0.0002, False, bytes(data)))
                if k % 2:
                    ack = IP(src=c, dst=s) / TCP(sport=40000 + seq, dport=8080, flags="A")
                    out.append((burst_t + k * 0.0002 + 0.0001, True, bytes(ack)))
        t += 0.2
    out.sort(key=lambda x: x[0])
    return out


def _write(path: Path, frames: list[tuple[float, bytes]]) -> None:
    """Write Ethernet frames with timestamps as a classic pcap (microsecond resolution)."""
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for ts, frame in frames:
            sec = int(T0 + ts)
            usec = round((T0 + ts - sec) * 1e6)
            if usec >= 1_000_000:
                sec, usec = sec + 1, usec - 1_000_000
            fh.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)))
            fh.write(frame)


def _outer(n: int, from_client: bool, proto: int | None, l4: bytes, udp_ports: tuple[int, int] | None = None,
           ident: int = 0) -> bytes:
    """An Ethernet/IPv4 frame between the lab's client and server around ``l4``."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    src, dst = (client_addr(n), server_addr(n)) if from_client else (server_addr(n), client_addr(n))
    eth = Ether(src=CLIENT_MAC if from_client else SERVER_MAC, dst=SERVER_MAC if from_client else CLIENT_MAC)
    if udp_ports is not None:
        sport, dport = udp_ports if from_client else udp_ports[::-1]
        return bytes(eth / IP(src=src, dst=dst, id=ident) / UDP(sport=sport, dport=dport) / Raw(l4))
    return bytes(eth / IP(src=src, dst=dst, proto=proto, id=ident) / Raw(l4))


def craft_esp(path: Path, n: int, duration: float) -> None:
    """ESP (IP protocol 50) with AES-CBC/HMAC-SHA256-128 sizes: SPI, sequence, IV, ciphertext, ICV."""
    rng = random.Random(f"esp-{n}-{duration}")
    spi = {True: rng.getrandbits(32) | 0xC0000000, False: rng.getrandbits(32) | 0xC0000000}
    seq = {True: 0, False: 0}
    frames = []
    for i, (t, fc, inner) in enumerate(_inner_packets(n, duration, rng)):
        seq[fc] += 1
        padded = (len(inner) + 2 + 15) // 16 * 16  # payload + pad length + next header, block aligned
        esp = struct.pack(">II", spi[fc], seq[fc]) + rng.randbytes(16 + padded + 16)
        frames.append((t, _outer(n, fc, 50, esp, ident=i)))
    _write(path, frames)


def craft_l2tp(path: Path, n: int, duration: float) -> None:
    """L2TPv2 data messages on UDP 1701 (T=0, L=1), each carrying PPP (ff03, protocol 0x0021) and IP."""
    rng = random.Random(f"l2tp-{n}-{duration}")
    tunnel = {True: rng.randint(1, 65535), False: rng.randint(1, 65535)}
    session = {True: rng.randint(1, 65535), False: rng.randint(1, 65535)}
    frames = []
    for i, (t, fc, inner) in enumerate(_inner_packets(n, duration, rng)):
        ppp = b"\xff\x03\x00\x21" + inner
        l2tp = struct.pack(">HHHH", 0x4002, 8 + len(ppp), tunnel[not fc], session[not fc]) + ppp
        frames.append((t, _outer(n, fc, None, l2tp, udp_ports=(1701, 1701), ident=i)))
    _write(path, frames)


def craft_pptp_gre(path: Path, n: int, duration: float) -> None:
    """PPTP data channel: enhanced GRE (version 1, protocol 0x880B) with MPPE-compressed PPP frames."""
    rng = random.Random(f"pptp-{n}-{duration}")
    call = {True: rng.randint(1, 65535), False: rng.randint(1, 65535)}
    seq = {True: 0, False: 0}
    frames = []
    for i, (t, fc, inner) in enumerate(_inner_packets(n, duration, rng)):
        ppp = b"\xfd" + rng.randbytes(2 + len(inner))  # PPP protocol 0xFD (compressed/MPPE), coherency count
        seq[fc] += 1
        ack = seq[not fc]
        flags = 0x3001 | (0x0080 if ack else 0)  # K, S (and A) set, version 1
        gre = struct.pack(">HHHHI", flags, 0x880B, len(ppp), call[not fc], seq[fc])
        if ack:
            gre += struct.pack(">I", ack)
        frames.append((t, _outer(n, fc, 47, gre + ppp, ident=i)))
    _write(path, frames)


def _add(name: str, number: int, protocol: str, transport: str, port: int | None,
         craft: Callable[[Path, int, float], None], what: str, description: str) -> None:
    register(Scenario(name=name, number=number, vpn=True, protocol=protocol, transport=transport,
                      server_port=port, notes=f"crafted with scapy: {what}", craft=craft,
                      description=description))


_add("ipsec-esp-crafted", 50, "ipsec-esp", "esp", None, craft_esp, "kernel has no ESP transform",
     "Plain ESP (IP protocol 50) as a kernel IPsec tunnel sends it, without NAT-T.")
_add("l2tp-data-crafted", 51, "l2tp", "udp", 1701, craft_l2tp, "kernel has no PPP; L2TPv2 data messages",
     "L2TP data messages carrying PPP-framed IP on UDP 1701.")
_add("pptp-gre-crafted", 52, "pptp", "gre", None, craft_pptp_gre, "kernel has no PPP; enhanced GRE data",
     "PPTP's GRE data channel with MPPE-encrypted PPP frames.")
