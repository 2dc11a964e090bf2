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
from dataclasses import dataclass
from pathlib import Path

from classifier.lab.netns import client_addr, inner_client, inner_server, server_addr
from classifier.lab.scenarios import Scenario, register

CLIENT_MAC = "02:00:00:00:00:02"
SERVER_MAC = "02:00:00:00:00:01"
T0 = 1_795_331_490.0  # fixed start (2026-11-22T07:11:30Z, beside the other samples): reproducible files


def _echo(ipv6: bool, src: str, dst: str, request: bool, seq: int, payload: bytes):
    """An ICMP (or ICMPv6) echo request or reply from ``src`` to ``dst``."""
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
    from scapy.packet import Raw

    if ipv6:
        echo = ICMPv6EchoRequest if request else ICMPv6EchoReply
        return IPv6(src=src, dst=dst) / echo(id=0x4C41, seq=seq) / Raw(payload)
    return IP(src=src, dst=dst, id=seq) / ICMP(type=8 if request else 0, id=0x4C41, seq=seq) / Raw(payload)


def _tcp(ipv6: bool, src: str, dst: str, sport: int, dport: int, payload: bytes = b""):
    """A TCP ACK segment (with ``payload``) over IPv4 or IPv6."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.packet import Raw

    ip = IPv6(src=src, dst=dst) if ipv6 else IP(src=src, dst=dst)
    return ip / TCP(sport=sport, dport=dport, flags="A") / Raw(payload)


@dataclass(frozen=True)
class Pattern:
    """The inner traffic of a crafted tunnel: a ping every ``interval`` s, a download burst every ``burst_every`` pings."""

    interval: float = 0.2
    burst_every: int = 3
    burst_min: int = 8
    burst_max: int = 18
    echo_size: int = 120

    @classmethod
    def draw(cls, rng: random.Random) -> Pattern:
        """Varied parameters for training captures (``vpnid lab capture --vary``)."""
        low = rng.randint(2, 12)
        return cls(interval=round(rng.uniform(0.05, 0.6), 3), burst_every=rng.randint(1, 6), burst_min=low,
                   burst_max=low + rng.randint(0, 60), echo_size=rng.choice([32, 56, 120, 400, 1000]))


DEFAULT_PATTERN = Pattern()


def crafted_rng(name: str, n: int, duration: float, seed: int) -> tuple[random.Random, Pattern]:
    """The generator and inner pattern of one crafted capture.

    Seed 0 (the committed samples) gives the default pattern and the exact files committed;
    another seed (``--vary``) a different capture with drawn parameters, so repeated training
    captures are not copies of each other.
    """
    if not seed:
        return random.Random(f"{name}-{n}-{duration}"), DEFAULT_PATTERN
    rng = random.Random(f"{name}-{n}-{duration}-{seed}")
    return rng, Pattern.draw(rng)


def inner_packets(n: int, duration: float, rng: random.Random, ipv6: bool = False,
                  pattern: Pattern = DEFAULT_PATTERN) -> list[tuple[float, bool, bytes]]:
    """(time offset, from_client, inner IP packet) of a ping + bulk pattern through a tunnel.

    ``ipv6``: inner IPv6 (client fd00:N::2, server fd00:N::1) for IPv6-over-IPv4 tunnels.
    """
    out: list[tuple[float, bool, bytes]] = []
    c, s = (f"fd00:{n:x}::2", f"fd00:{n:x}::1") if ipv6 else (inner_client(n), inner_server(n))
    t = 0.05
    seq = 0
    while t < duration:
        seq += 1
        echo = _echo(ipv6, c, s, True, seq, rng.randbytes(pattern.echo_size))
        reply = _echo(ipv6, s, c, False, seq, rng.randbytes(pattern.echo_size))
        out.append((t, True, bytes(echo)))
        out.append((t + 0.0004 + rng.random() * 0.0003, False, bytes(reply)))
        if seq % pattern.burst_every == 0:  # a small HTTP-like download
            burst_t = t + 0.05
            for k in range(rng.randint(pattern.burst_min, pattern.burst_max)):
                size = 1380 if k < 10 else rng.randint(200, 1380)
                data = _tcp(ipv6, s, c, 8080, 40000 + seq, rng.randbytes(size))
                out.append((burst_t + k * 0.0002, False, bytes(data)))
                if k % 2:
                    ack = _tcp(ipv6, c, s, 40000 + seq, 8080)
                    out.append((burst_t + k * 0.0002 + 0.0001, True, bytes(ack)))
        t += pattern.interval
    out.sort(key=lambda x: x[0])
    return out


def write_pcap(path: Path, frames: list[tuple[float, bytes]]) -> None:
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


def outer_frame(n: int, from_client: bool, proto: int | None, l4: bytes,
                udp_ports: tuple[int, int] | None = None, ident: int = 0) -> bytes:
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


#: Wraps one inner packet into an outer Ethernet frame: ``(n, from_client, inner, index) -> frame``.
Wrap = Callable[[int, bool, bytes, int], bytes]


def crafter(name: str, start: Callable[[random.Random], Wrap], ipv6: bool = False
            ) -> Callable[[Path, int, float, int], None]:
    """A scenario's craft function: the seeded inner pattern, each packet wrapped by the protocol.

    ``start(rng)`` draws what stays fixed for the capture (SPIs, tunnel and call ids) and
    returns the wrap; it runs after the pattern is drawn and before the inner packets, so
    every crafted capture draws from its generator in the same order.
    """
    def craft(path: Path, n: int, duration: float, seed: int = 0) -> None:
        rng, pattern = crafted_rng(name, n, duration, seed)
        wrap = start(rng)
        packets = inner_packets(n, duration, rng, ipv6=ipv6, pattern=pattern)
        write_pcap(path, [(t, wrap(n, fc, inner, i)) for i, (t, fc, inner) in enumerate(packets)])
    return craft


def _esp(rng: random.Random) -> Wrap:
    """ESP (IP protocol 50) with AES-CBC/HMAC-SHA256-128 sizes: SPI, sequence, IV, ciphertext, ICV."""
    spi = {True: rng.getrandbits(32) | 0xC0000000, False: rng.getrandbits(32) | 0xC0000000}
    seq = {True: 0, False: 0}

    def wrap(n: int, fc: bool, inner: bytes, i: int) -> bytes:
        seq[fc] += 1
        padded = (len(inner) + 2 + 15) // 16 * 16  # payload + pad length + next header, block aligned
        esp = struct.pack(">II", spi[fc], seq[fc]) + rng.randbytes(16 + padded + 16)
        return outer_frame(n, fc, 50, esp, ident=i)
    return wrap


def _l2tp(rng: random.Random) -> Wrap:
    """L2TPv2 data messages on UDP 1701 (T=0, L=1), each carrying PPP (ff03, protocol 0x0021) and IP."""
    tunnel = {True: rng.randint(1, 65535), False: rng.randint(1, 65535)}
    session = {True: rng.randint(1, 65535), False: rng.randint(1, 65535)}

    def wrap(n: int, fc: bool, inner: bytes, i: int) -> bytes:
        ppp = b"\xff\x03\x00\x21" + inner
        l2tp = struct.pack(">HHHH", 0x4002, 8 + len(ppp), tunnel[not fc], session[not fc]) + ppp
        return outer_frame(n, fc, None, l2tp, udp_ports=(1701, 1701), ident=i)
    return wrap


def _pptp_gre(rng: random.Random) -> Wrap:
    """PPTP data channel: enhanced GRE (version 1, protocol 0x880B) with MPPE-compressed PPP frames."""
    call = {True: rng.randint(1, 65535), False: rng.randint(1, 65535)}
    seq = {True: 0, False: 0}

    def wrap(n: int, fc: bool, inner: bytes, i: int) -> bytes:
        ppp = b"\xfd" + rng.randbytes(2 + len(inner))  # PPP protocol 0xFD (compressed/MPPE), coherency count
        seq[fc] += 1
        ack = seq[not fc]
        flags = 0x3001 | (0x0080 if ack else 0)  # K, S (and A) set, version 1
        gre = struct.pack(">HHHHI", flags, 0x880B, len(ppp), call[not fc], seq[fc])
        if ack:
            gre += struct.pack(">I", ack)
        return outer_frame(n, fc, 47, gre + ppp, ident=i)
    return wrap

def _add(name: str, number: int, protocol: str, transport: str, port: int | None,
         craft: Callable[[Path, int, float, int], None], what: str, description: str) -> None:
    register(Scenario(name=name, number=number, vpn=True, protocol=protocol, transport=transport,
                      server_port=port, notes=f"crafted with scapy: {what}", craft=craft,
                      description=description))


_add("ipsec-esp-crafted", 50, "ipsec-esp", "esp", None, crafter("esp", _esp), "kernel has no ESP transform",
     "Plain ESP (IP protocol 50) as a kernel IPsec tunnel sends it, without NAT-T.")
_add("l2tp-data-crafted", 51, "l2tp", "udp", 1701, crafter("l2tp", _l2tp), "kernel has no PPP; L2TPv2 data messages",
     "L2TP data messages carrying PPP-framed IP on UDP 1701.")
_add("pptp-gre-crafted", 52, "pptp", "gre", None, crafter("pptp", _pptp_gre), "kernel has no PPP; enhanced GRE data",
     "PPTP's GRE data channel with MPPE-encrypted PPP frames.")
