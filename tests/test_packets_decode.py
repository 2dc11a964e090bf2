"""Header decoding, field by field: link types, IP versions, transports, fragments, damage.

Every capture here is built with scapy (or by hand where scapy has no layer), written
as a pcap file and read back through ``iter_packet_batches``, so the checks cover the
file reader and the compiled decoder together.
"""

from __future__ import annotations

import ipaddress
import struct

import numpy as np
import pytest
from conftest import NS, T0
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH, ESP
from scapy.layers.l2 import GRE, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.layers.sctp import SCTP
from scapy.packet import Raw

from classifier.errors import ErrorLog
from classifier.packets import PacketBatch, PacketStatus, iter_packet_batches
from classifier.packets.capture import batch_from_frames

MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
A4, B4 = "10.1.2.3", "192.0.2.9"
A6, B6 = "2001:db8::1", "2001:db8:ffff::2"
PAYLOAD = b"vpnid-test-payload-0123456789"


def read_one(pcap_writer, frames, linktype=1, **kw) -> tuple[PacketBatch, ErrorLog]:
    """Write frames (one per second from T0) and read them back as a single batch."""
    path = pcap_writer("t.pcap", [(T0 + i * NS, f) for i, f in enumerate(frames)], linktype, **kw)
    log = ErrorLog(quiet=True)
    batches = list(iter_packet_batches(path, log))
    assert len(batches) == 1
    return batches[0], log


def addr(batch: PacketBatch, i: int, which: str) -> str:
    hi, lo = int(batch.cols[f"{which}_hi"][i]), int(batch.cols[f"{which}_lo"][i])
    a = ipaddress.IPv6Address((hi << 64) | lo)
    return str(a.ipv4_mapped) if a.ipv4_mapped else a.compressed


def payload(batch: PacketBatch, i: int) -> bytes:
    off = int(batch.payload_off[i])
    return bytes(batch.buf[off:off + int(batch.payload_cap[i])])


def udp4(sport=1234, dport=53, data=PAYLOAD):
    return IP(src=A4, dst=B4) / UDP(sport=sport, dport=dport) / Raw(data)


def udp6(sport=1234, dport=53, data=PAYLOAD):
    return IPv6(src=A6, dst=B6) / UDP(sport=sport, dport=dport) / Raw(data)


def mpls(*labels: int) -> bytes:
    """An MPLS label stack (bottom-of-stack bit on the last entry)."""
    return b"".join(struct.pack(">I", (lb << 12) | ((i == len(labels) - 1) << 8) | 64)
                    for i, lb in enumerate(labels))


def nflog(ip: bytes) -> bytes:
    """NFLOG: 4-byte header, then TLVs with little-endian length/type; type 9 is the packet."""
    hdr = struct.pack("<BBH", 2, 0, 0)
    prefix = b"test\0"
    tlv_hdr = struct.pack("<HH", 4 + 4, 1) + struct.pack(">HBB", 0x0800, 3, 0)
    tlv_prefix = struct.pack("<HH", 4 + len(prefix), 10) + prefix + b"\0" * (-len(prefix) % 4)
    tlv_payload = struct.pack("<HH", 4 + len(ip), 9) + ip
    return hdr + tlv_hdr + tlv_prefix + tlv_payload


# (id, linktype, frame, expected vlan, ip version)
_ip4, _ip6 = bytes(udp4()), bytes(udp6())
LINKS = [
    ("ethernet", 1, Ether(**MAC) / udp4(), -1, 4),
    ("ethernet-v6", 1, Ether(**MAC) / udp6(), -1, 6),
    ("802.1q", 1, Ether(**MAC) / Dot1Q(vlan=100) / udp4(), 100, 4),
    ("qinq-88a8", 1, Ether(**MAC) / Dot1AD(vlan=200) / Dot1Q(vlan=100) / udp4(), 200, 4),
    ("qinq-9100", 1, Ether(type=0x9100, **MAC) / Dot1Q(vlan=300) / Dot1Q(vlan=12) / udp6(), 300, 6),
    ("mpls-1", 1, bytes(Ether(type=0x8847, **MAC)) + mpls(16) + _ip4, -1, 4),
    ("mpls-2-v6", 1, bytes(Ether(type=0x8847, **MAC)) + mpls(16, 17) + _ip6, -1, 6),
    ("vlan-mpls", 1, bytes(Ether(**MAC) / Dot1Q(vlan=5, type=0x8847)) + mpls(99) + _ip4, 5, 4),
    ("pppoe", 1, Ether(**MAC) / PPPoE(sessionid=7) / PPP(proto=0x21) / udp4(), -1, 4),
    ("pppoe-v6", 1, Ether(**MAC) / PPPoE(sessionid=7) / PPP(proto=0x57) / udp6(), -1, 6),
    ("sll", 113, CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, proto=0x0800) / udp4(), -1, 4),
    ("sll-vlan", 113, bytes(CookedLinux(proto=0x8100)) + struct.pack(">HH", 42, 0x86DD) + _ip6, 42, 6),
    ("sll2", 276, CookedLinuxV2(proto=0x0800, ifindex=3) / udp4(), -1, 4),
    ("sll2-v6", 276, CookedLinuxV2(proto=0x86DD, ifindex=3) / udp6(), -1, 6),
    ("raw-101", 101, _ip4, -1, 4),
    ("raw-101-v6", 101, _ip6, -1, 6),
    ("raw-12", 12, _ip4, -1, 4),
    ("raw-14", 14, _ip6, -1, 6),
    ("ipv4-228", 228, _ip4, -1, 4),
    ("ipv6-229", 229, _ip6, -1, 6),
    ("null-le", 0, struct.pack("<I", 2) + _ip4, -1, 4),
    ("null-be", 0, struct.pack(">I", 2) + _ip4, -1, 4),
    ("null-le-v6-24", 0, struct.pack("<I", 24) + _ip6, -1, 6),
    ("null-be-v6-28", 0, struct.pack(">I", 28) + _ip6, -1, 6),
    ("null-le-v6-30", 0, struct.pack("<I", 30) + _ip6, -1, 6),
    ("loop-108", 108, struct.pack(">I", 2) + _ip4, -1, 4),
    ("ppp-9", 9, b"\xff\x03\x00\x21" + _ip4, -1, 4),
    ("ppp-9-noaddr-v6", 9, b"\x00\x57" + _ip6, -1, 6),
    ("ppp-hdlc-50", 50, b"\xff\x03\x00\x21" + _ip4, -1, 4),
    ("nflog", 239, nflog(_ip4), -1, 4),
    ("nflog-v6", 239, nflog(_ip6), -1, 6),
]


@pytest.mark.parametrize(("linktype", "frame", "vlan", "ver"), [x[1:] for x in LINKS], ids=[x[0] for x in LINKS])
def test_link_types(pcap_writer, linktype, frame, vlan, ver):
    batch, log = read_one(pcap_writer, [frame], linktype)
    assert not log.problems
    assert batch.n == 1
    assert batch.status[0] == PacketStatus.OK
    assert batch.linktype[0] == linktype
    assert batch.vlan[0] == vlan
    assert batch.ip_ver[0] == ver
    assert batch.ip_proto[0] == 17
    assert (addr(batch, 0, "src"), addr(batch, 0, "dst")) == ((A4, B4) if ver == 4 else (A6, B6))
    assert (batch.sport[0], batch.dport[0], batch.has_ports[0]) == (1234, 53, 1)
    assert batch.ip_len[0] == (20 if ver == 4 else 40) + 8 + len(PAYLOAD)
    assert payload(batch, 0) == PAYLOAD
    assert batch.payload_len[0] == len(PAYLOAD)
    assert batch.ts[0] == T0
    assert batch.cap_len[0] == batch.wire_len[0] == len(bytes(frame))
    assert batch.record_off[0] == 24


def test_not_ip_frames_are_counted_not_decoded(pcap_writer):
    from scapy.layers.l2 import ARP

    frames = [Ether(**MAC) / ARP(), Ether(**MAC) / udp4(), CookedLinux(proto=0x0806) / ARP()]
    batch, log = read_one(pcap_writer, frames[:2])
    assert list(batch.status) == [PacketStatus.NOT_IP, PacketStatus.OK]
    assert not log.problems
    batch, _ = read_one(pcap_writer, frames[2:], 113)
    assert batch.status[0] == PacketStatus.NOT_IP


TRANSPORTS = [
    # id, packet, proto, ports or None, payload bytes expected
    ("tcp", IP(src=A4, dst=B4) / TCP(sport=40000, dport=443, flags="PA", seq=123456789) / Raw(PAYLOAD),
     6, (40000, 443), PAYLOAD),
    ("tcp-options", IP(src=A4, dst=B4, options=[b"\x01\x01\x01\x00"])
     / TCP(sport=1, dport=2, flags="S", options=[("MSS", 1460), ("WScale", 7)]) / Raw(PAYLOAD),
     6, (1, 2), PAYLOAD),
    ("udp", udp4(5000, 6000), 17, (5000, 6000), PAYLOAD),
    ("icmp", IP(src=A4, dst=B4) / ICMP(type=8) / Raw(PAYLOAD), 1, None, bytes(ICMP(type=8) / Raw(PAYLOAD))),
    ("esp", IP(src=A4, dst=B4) / ESP(spi=0x1234, seq=1, data=PAYLOAD), 50, None,
     struct.pack(">II", 0x1234, 1) + PAYLOAD),
    ("ah", IP(src=A4, dst=B4) / AH(spi=9, seq=2, nh=59) / Raw(PAYLOAD), 51, None, None),
    ("gre", IP(src=A4, dst=B4) / GRE() / udp4(), 47, None, bytes(GRE() / udp4())),
    ("sctp", IP(src=A4, dst=B4) / SCTP(sport=3868, dport=3869) / Raw(PAYLOAD), 132, (3868, 3869), PAYLOAD),
    ("tcp6", IPv6(src=A6, dst=B6) / TCP(sport=4, dport=5, flags="SA", seq=7) / Raw(PAYLOAD), 6, (4, 5), PAYLOAD),
    ("udp6", udp6(7, 8), 17, (7, 8), PAYLOAD),
    ("icmp6", IPv6(src=A6, dst=B6) / ICMPv6EchoRequest(data=PAYLOAD), 58, None, None),
    ("esp6", IPv6(src=A6, dst=B6) / ESP(spi=5, seq=6, data=PAYLOAD), 50, None, struct.pack(">II", 5, 6) + PAYLOAD),
    ("ext-chain", IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(addresses=["2001:db8::9"])
     / IPv6ExtHdrDestOpt() / UDP(sport=11, dport=12) / Raw(PAYLOAD), 17, (11, 12), PAYLOAD),
    ("ext-chain-tcp", IPv6(src=A6, dst=B6) / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop()
     / TCP(sport=13, dport=14, flags="A") / Raw(PAYLOAD), 6, (13, 14), PAYLOAD),
]


@pytest.mark.parametrize(("pkt", "proto", "ports", "data"), [x[1:] for x in TRANSPORTS],
                         ids=[x[0] for x in TRANSPORTS])
def test_transports(pcap_writer, pkt, proto, ports, data):
    raw = bytes(pkt)
    batch, log = read_one(pcap_writer, [Ether(**MAC) / pkt])
    assert not log.problems
    assert batch.status[0] == PacketStatus.OK
    assert batch.ip_proto[0] == proto
    assert batch.ip_len[0] == len(raw)
    if ports is None:
        assert batch.has_ports[0] == 0
        assert (batch.sport[0], batch.dport[0]) == (0, 0)
    else:
        assert batch.has_ports[0] == 1
        assert (batch.sport[0], batch.dport[0]) == ports
    if data is not None:
        assert payload(batch, 0) == data
        assert batch.payload_len[0] == len(data)
    if proto == 6:
        tcp = pkt[TCP]
        assert batch.tcp_flags[0] == int(tcp.flags)
        assert batch.tcp_seq[0] == tcp.seq
    else:
        assert batch.tcp_flags[0] == 0


def test_ipv4_options_and_ethernet_padding(pcap_writer):
    """IHL > 5 moves the transport header; padding of short frames is not IP bytes."""
    pkt = IP(src=A4, dst=B4, options=[b"\x01\x01\x01\x01\x01\x01\x01\x00"]) / UDP(sport=9, dport=10) / Raw(b"ab")
    frame = bytes(Ether(**MAC) / pkt) + b"\0" * 12  # padded up to the 60-byte minimum
    batch, _ = read_one(pcap_writer, [frame])
    assert batch.status[0] == PacketStatus.OK
    assert (batch.sport[0], batch.dport[0]) == (9, 10)
    assert batch.ip_len[0] == 28 + 8 + 2
    assert batch.payload_len[0] == 2
    assert payload(batch, 0) == b"ab"
    assert batch.wire_len[0] == len(frame)


def test_ipv4_fragments(pcap_writer):
    big = IP(src=A4, dst=B4, id=4242) / UDP(sport=5353, dport=9999) / Raw(bytes(range(256)) * 12)
    frags = fragment(big, fragsize=1000)
    assert len(frags) == 4
    batch, _ = read_one(pcap_writer, [Ether(**MAC) / f for f in frags])
    assert list(batch.status) == [PacketStatus.OK] * 4
    assert list(batch.frag) == [1, 2, 2, 2]
    assert list(batch.frag_id) == [4242] * 4
    assert list(batch.has_ports) == [1, 0, 0, 0]
    assert (batch.sport[0], batch.dport[0]) == (5353, 9999)
    assert list(batch.ip_len) == [len(f) for f in frags]
    assert list(batch.ip_proto) == [17] * 4


def test_ipv6_fragments(pcap_writer):
    head = IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(id=0xABCDEF, m=1, offset=0, nh=17)
    first = head / UDP(sport=700, dport=800, len=8 + 2000) / Raw(b"a" * 1000)
    later = IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(id=0xABCDEF, m=0, offset=126, nh=17) / Raw(b"b" * 1008)
    batch, _ = read_one(pcap_writer, [Ether(**MAC) / first, Ether(**MAC) / later])
    assert list(batch.status) == [PacketStatus.OK] * 2
    assert list(batch.frag) == [1, 2]
    assert list(batch.frag_id) == [0xABCDEF] * 2
    assert list(batch.ip_proto) == [17, 17]
    assert list(batch.has_ports) == [1, 0]
    assert (batch.sport[0], batch.dport[0]) == (700, 800)
    assert list(batch.ip_len) == [len(bytes(first)), len(bytes(later))]


LYING = [
    # id, frame, expected status
    ("ihl-over-total", bytes(Ether(type=0x0800, **MAC)) + bytes.fromhex("4f000014000000004011") + bytes(10), PacketStatus.BAD_IP),
    ("ihl-below-5", bytes(Ether(type=0x0800, **MAC)) + bytes.fromhex("44000030000000004011") + bytes(38), PacketStatus.BAD_IP),
    ("total-over-frame", bytes(Ether(**MAC) / IP(src=A4, dst=B4, len=1400) / UDP() / Raw(b"x" * 20)),
     PacketStatus.BAD_IP),
    ("ipv6-plen-over-frame", bytes(Ether(**MAC) / IPv6(src=A6, dst=B6, plen=900) / UDP() / Raw(b"x")),
     PacketStatus.BAD_IP),
    ("version-mismatch", bytes(Ether(type=0x0800, **MAC)) + bytes(udp6()), PacketStatus.BAD_IP),
    ("tcp-offset-over-payload", bytes(Ether(**MAC) / IP(src=A4, dst=B4) / TCP(dataofs=15)),
     PacketStatus.BAD_L4),
    ("udp-in-short-ip", bytes(Ether(**MAC) / IP(src=A4, dst=B4, proto=17, len=24) / Raw(b"abcd")),
     PacketStatus.BAD_L4),
    ("tcp-in-short-ip", bytes(Ether(**MAC) / IP(src=A4, dst=B4, proto=6, len=30) / Raw(b"abcdefghij")),
     PacketStatus.BAD_L4),
]


@pytest.mark.parametrize(("frame", "status"), [x[1:] for x in LYING], ids=[x[0] for x in LYING])
def test_lying_headers_are_marked_and_logged(pcap_writer, frame, status):
    good = Ether(**MAC) / udp4()
    batch, log = read_one(pcap_writer, [good, frame, good])
    assert list(batch.status) == [PacketStatus.OK, status, PacketStatus.OK]
    assert len(log.problems) == 1
    problem = log.problems[0]
    assert problem.offset == 24 + 16 + len(bytes(good))  # the second record
    assert problem.path.endswith("t.pcap")
    assert "header" in problem.message


def _all_frames() -> list[tuple[int, bytes]]:
    frames = [(lt, bytes(f)) for _, lt, f, _, _ in LINKS]
    frames += [(1, bytes(Ether(**MAC) / p)) for _, p, *_ in TRANSPORTS]
    return frames


def test_every_prefix_of_every_packet_is_safe():
    """Cut each test frame at every length: no crash, never OK with missing key bytes.

    Both a snap-length cut (wire length kept) and a genuinely short frame (wire length
    equal to what is there) are decoded.
    """
    for linktype, frame in _all_frames():
        n = len(frame)
        prefixes = [frame[:k] for k in range(n + 1)]
        for wire in (np.full(n + 1, n), np.arange(n + 1)):
            batch = batch_from_frames(prefixes, np.full(n + 1, T0), linktype, wire_lens=wire)
            st = batch.status
            assert st[n] == PacketStatus.OK, (linktype, frame.hex())
            assert set(np.unique(st)) <= {0, 1, 2, 3, 4, 5}
            ok = np.flatnonzero(st == PacketStatus.OK)
            # an OK packet has its whole IP header (and ports, if any) inside the captured bytes
            full = batch_from_frames([frame], np.array([T0]), linktype)
            for k in ok:
                assert batch.ip_len[k] == full.ip_len[0] or wire[k] < n
                if batch.has_ports[k]:
                    assert (batch.sport[k], batch.dport[k]) == (full.sport[0], full.dport[0])
                assert batch.payload_cap[k] <= max(0, k - (batch.payload_off[k] - batch.data_off[k]))


def test_snaplen_cut_payload_keeps_wire_lengths(pcap_writer):
    pkt = Ether(**MAC) / IP(src=A4, dst=B4) / UDP(sport=1, dport=2) / Raw(b"z" * 1000)
    batch, log = read_one(pcap_writer, [pkt], snaplen=100)
    assert not log.problems
    assert batch.status[0] == PacketStatus.OK
    assert batch.cap_len[0] == 100
    assert batch.wire_len[0] == len(pkt)
    assert batch.ip_len[0] == 1028
    assert batch.payload_len[0] == 1000
    assert batch.payload_cap[0] == 100 - 14 - 28


def test_snaplen_cut_inside_headers_is_truncated_not_an_error(pcap_writer):
    pkt = Ether(**MAC) / IP(src=A4, dst=B4) / TCP(sport=1, dport=2) / Raw(b"z" * 100)
    batch, log = read_one(pcap_writer, [pkt, pkt], snaplen=40)
    assert list(batch.status) == [PacketStatus.TRUNCATED] * 2
    assert not log.problems
