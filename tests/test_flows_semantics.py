"""Flow semantics, field by field, on small scapy-built captures.

Expected values are computed from the packets the test wrote (scapy lengths, numpy
statistics over the packet list), never copied from an engine run.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pyarrow as pa
import pytest
from conftest import NS, T0
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import AH, ESP
from scapy.layers.l2 import GRE, Dot1Q, Ether
from scapy.packet import Raw

from classifier.flows.api import iter_flow_batches, read_flows
from classifier.flows.batch import HEAD_BYTES, HEAD_PACKETS_PER_DIR, FlowBatch
from classifier.flows.config import FlowConfig
from classifier.flows.schema import FIRST_PACKETS, FLOW_SCHEMA

MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
C, S = "10.0.0.1", "10.0.0.2"
MS = 1_000_000


def tcp(t, src, dst, sport, dport, flags, data=b"", seq=0):
    return t, Ether(**MAC) / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq) / Raw(data)


def udp(t, src, dst, sport, dport, data=b"x", vlan=None):
    eth = Ether(**MAC) / Dot1Q(vlan=vlan) if vlan is not None else Ether(**MAC)
    return t, eth / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(data)


def ip_len(frame) -> int:
    layer = frame[IP] if IP in frame else frame[IPv6]
    return len(bytes(layer))


def flows(pcap_writer, frames, config: FlowConfig | None = None, **kw) -> list[dict]:
    path = pcap_writer("f.pcap", frames, **kw)
    return read_flows(path, config=config).to_pylist()


def flow_batch(pcap_writer, frames, **kw) -> FlowBatch:
    path = pcap_writer("f.pcap", frames)
    return FlowBatch.concat(list(iter_flow_batches([path], **kw)))


def conversation(t0=T0):
    """A TCP connection: handshake, data both ways, FIN both ways, final ACK."""
    return [
        tcp(t0, C, S, 50000, 443, "S", seq=1000),
        tcp(t0 + 10 * MS, S, C, 443, 50000, "SA", seq=9000),
        tcp(t0 + 20 * MS, C, S, 50000, 443, "A", seq=1001),
        tcp(t0 + 30 * MS, C, S, 50000, 443, "PA", b"A" * 100, seq=1001),
        tcp(t0 + 55 * MS, S, C, 443, 50000, "PA", b"B" * 300, seq=9001),
        tcp(t0 + 60 * MS, C, S, 50000, 443, "A", seq=1101),
        tcp(t0 + 1000 * MS, C, S, 50000, 443, "FA", seq=1101),
        tcp(t0 + 1010 * MS, S, C, 443, 50000, "FA", seq=9301),
        tcp(t0 + 1020 * MS, C, S, 50000, 443, "A", seq=1102),
    ]


def test_tcp_flow_field_by_field(pcap_writer):
    frames = conversation()
    rows = flows(pcap_writer, frames)
    assert len(rows) == 1
    f = rows[0]
    dirs = [0 if fr[IP].src == C else 1 for _, fr in frames]
    sizes = [ip_len(fr) for _, fr in frames]
    times = [t for t, _ in frames]
    assert f["flow_id"] == 0
    assert f["capture"].endswith("f.pcap")
    assert (f["src_ip"], f["dst_ip"], f["src_port"], f["dst_port"]) == (C, S, 50000, 443)
    assert (f["ip_proto"], f["ip_version"], f["vlan_id"]) == (6, 4, None)
    assert f["first_seen"] == pa.scalar(T0, pa.timestamp("ns", tz="UTC")).as_py()
    assert f["last_seen"] == pa.scalar(times[-1], pa.timestamp("ns", tz="UTC")).as_py()
    assert f["duration_ms"] == pytest.approx((times[-1] - times[0]) / 1e6)
    assert f["end_reason"] == "fin"
    assert f["packets"] == 9
    assert f["src2dst_packets"] == dirs.count(0) == 6
    assert f["dst2src_packets"] == dirs.count(1) == 3
    assert f["src2dst_bytes"] == sum(s for s, d in zip(sizes, dirs, strict=True) if d == 0)
    assert f["dst2src_bytes"] == sum(s for s, d in zip(sizes, dirs, strict=True) if d == 1)
    assert f["bytes"] == sum(sizes)
    assert (f["src2dst_payload_bytes"], f["dst2src_payload_bytes"]) == (100, 300)
    assert (f["truncated_packets"], f["fragments"]) == (0, 0)
    assert (f["tcp_syn"], f["tcp_ack"], f["tcp_fin"], f["tcp_rst"], f["tcp_psh"]) == (2, 8, 2, 0, 2)
    assert (f["tcp_urg"], f["tcp_ece"], f["tcp_cwr"]) == (0, 0, 0)
    assert f["first_tcp_flags"] == 0x02
    assert f["first_sizes"] == sizes
    assert f["first_dirs"] == dirs
    assert f["first_iats_ms"] == pytest.approx([0.0] + [(b - a) / 1e6 for a, b in pairwise(times)])


@pytest.mark.parametrize("server_lower", [True, False], ids=["initiator-higher", "initiator-lower"])
def test_initiator_is_the_first_packets_sender(pcap_writer, server_lower):
    """Mid-flow capture: the server speaks first, so it is the initiator (src)."""
    server, client = ("10.0.0.1", "10.0.0.9") if server_lower else ("10.0.0.9", "10.0.0.1")
    frames = [
        tcp(T0, server, client, 443, 50000, "PA", b"s" * 50),
        tcp(T0 + MS, client, server, 50000, 443, "A"),
        tcp(T0 + 2 * MS, client, server, 50000, 443, "PA", b"c" * 20),
    ]
    (f,) = flows(pcap_writer, frames)
    assert (f["src_ip"], f["src_port"], f["dst_ip"], f["dst_port"]) == (server, 443, client, 50000)
    assert (f["src2dst_packets"], f["dst2src_packets"]) == (1, 2)
    assert (f["src2dst_payload_bytes"], f["dst2src_payload_bytes"]) == (50, 20)
    assert f["first_dirs"] == [0, 1, 1]
    assert f["first_tcp_flags"] == 0x18


def test_idle_timeout_splits(pcap_writer):
    frames = [udp(T0, C, S, 5000, 53), udp(T0 + 10 * NS, S, C, 53, 5000),
              udp(T0 + 130 * NS, C, S, 5000, 53),  # exactly 120 s later: still the same flow
              udp(T0 + 250 * NS + 1, S, C, 53, 5000)]  # 120 s + 1 ns later: a new flow, the sender initiates
    rows = flows(pcap_writer, frames, nanos=True)
    assert [r["packets"] for r in rows] == [3, 1]
    assert [r["end_reason"] for r in rows] == ["idle", "eof"]
    assert (rows[1]["src_ip"], rows[1]["src_port"]) == (S, 53)
    assert [r["flow_id"] for r in rows] == [0, 1]
    short = flows(pcap_writer, frames, FlowConfig(idle_timeout_s=5), nanos=True)
    assert [r["packets"] for r in short] == [1, 1, 1, 1]
    assert [r["end_reason"] for r in short] == ["idle", "idle", "idle", "eof"]
    assert [r["src_ip"] for r in short] == [C, S, C, S]


def test_active_timeout_splits_long_flows(pcap_writer):
    frames = [udp(T0 + k * 100 * NS, C, S, 4500, 4500) for k in range(41)]  # 0 .. 4000 s
    rows = flows(pcap_writer, frames)
    assert [r["packets"] for r in rows] == [19, 19, 3]  # t - first > 1800 s starts a new flow
    assert [r["end_reason"] for r in rows] == ["active", "active", "eof"]
    firsts = [r["first_seen"] for r in rows]
    assert [(b - a).total_seconds() for a, b in pairwise(firsts)] == [1900, 1900]
    rows = flows(pcap_writer, frames, FlowConfig(active_timeout_s=1000))
    assert [r["packets"] for r in rows] == [11, 11, 11, 8]


def test_fin_both_ways_then_new_syn_starts_a_new_flow(pcap_writer):
    first = conversation()
    again = [tcp(T0 + 1500 * MS, C, S, 50000, 443, "S", seq=5), tcp(T0 + 1510 * MS, S, C, 443, 50000, "SA")]
    rows = flows(pcap_writer, first + again)
    assert [r["packets"] for r in rows] == [9, 2]  # the final ACK lingers into the closed flow
    assert [r["end_reason"] for r in rows] == ["fin", "eof"]
    assert rows[1]["first_tcp_flags"] == 0x02


def test_closed_flow_lingers_then_ends(pcap_writer):
    late = [tcp(T0 + 3 * NS, S, C, 443, 50000, "A"),  # within 5 s of the last packet: joins
            tcp(T0 + 9 * NS, C, S, 50000, 443, "A")]  # more than 5 s later: a new flow
    rows = flows(pcap_writer, conversation() + late)
    assert [r["packets"] for r in rows] == [10, 1]
    assert [r["end_reason"] for r in rows] == ["fin", "eof"]
    assert rows[1]["first_tcp_flags"] == 0x10


def test_rst_ends_a_flow(pcap_writer):
    frames = [
        tcp(T0, C, S, 40000, 80, "S"),
        tcp(T0 + MS, S, C, 80, 40000, "RA"),
        tcp(T0 + 2 * MS, C, S, 40000, 80, "S"),  # retry: a new SYN starts a new flow at once
        tcp(T0 + 3 * MS, S, C, 80, 40000, "SA"),
        tcp(T0 + 4 * MS, C, S, 40000, 80, "R"),
        tcp(T0 + 10 * NS, C, S, 40000, 80, "A"),  # after the linger: new flow
    ]
    rows = flows(pcap_writer, frames)
    assert [r["packets"] for r in rows] == [2, 3, 1]
    assert [r["end_reason"] for r in rows] == ["rst", "rst", "eof"]
    assert [r["tcp_rst"] for r in rows] == [1, 1, 0]


def test_fin_one_way_does_not_end_the_flow(pcap_writer):
    frames = [tcp(T0, C, S, 1, 2, "S"), tcp(T0 + MS, S, C, 2, 1, "SA"), tcp(T0 + 2 * MS, C, S, 1, 2, "FA"),
              tcp(T0 + 20 * NS, S, C, 2, 1, "PA", b"more"), tcp(T0 + 21 * NS, C, S, 1, 2, "S")]
    rows = flows(pcap_writer, frames)
    assert [r["packets"] for r in rows] == [5]
    assert rows[0]["end_reason"] == "eof"


def test_open_flows_are_flushed_at_end_of_input(pcap_writer):
    frames = [udp(T0, C, S, 1, 2), tcp(T0 + 1, C, S, 3, 4, "S"), udp(T0 + 2, "10.9.9.9", S, 5, 6)]
    rows = flows(pcap_writer, frames)
    assert [r["end_reason"] for r in rows] == ["eof"] * 3
    assert [r["flow_id"] for r in rows] == [0, 1, 2]


PORTLESS = [
    ("esp", lambda spi: IP(src=C, dst=S) / ESP(spi=spi, seq=1, data=b"e" * 40), 50),
    ("ah", lambda spi: IP(src=C, dst=S) / AH(spi=spi, nh=59) / Raw(b"a" * 8), 51),
    ("gre", lambda key: IP(src=C, dst=S) / GRE(key_present=1, key=key) / IP() / UDP(), 47),
    ("icmp", lambda ident: IP(src=C, dst=S) / ICMP(id=ident), 1),
]


@pytest.mark.parametrize(("make", "proto"), [x[1:] for x in PORTLESS], ids=[x[0] for x in PORTLESS])
def test_portless_protocols_are_their_own_flows(pcap_writer, make, proto):
    out = make(7)
    back = out.copy()
    back[IP].src, back[IP].dst = S, C
    frames = [(T0, Ether(**MAC) / out), (T0 + MS, Ether(**MAC) / back), (T0 + 2 * MS, Ether(**MAC) / make(8)),
              udp(T0 + 3 * MS, C, S, 1, 2)]
    rows = flows(pcap_writer, frames)
    assert len(rows) == 2
    f = next(r for r in rows if r["ip_proto"] == proto)
    assert (f["src_port"], f["dst_port"]) == (None, None)
    assert (f["src_ip"], f["dst_ip"]) == (C, S)
    assert (f["src2dst_packets"], f["dst2src_packets"]) == (2, 1)
    assert f["first_tcp_flags"] is None
    assert f["src2dst_payload_bytes"] == len(out[IP].payload) + len(make(8)[IP].payload)


def test_vlan_is_part_of_the_key_and_protocol_too(pcap_writer):
    frames = [udp(T0, C, S, 1, 2, vlan=10), udp(T0 + 1, C, S, 1, 2, vlan=20), udp(T0 + 2, C, S, 1, 2),
              udp(T0 + 3, S, C, 2, 1, vlan=10), tcp(T0 + 4, C, S, 1, 2, "S")]
    rows = flows(pcap_writer, frames)
    assert [(r["vlan_id"], r["ip_proto"], r["packets"]) for r in rows] == [
        (10, 17, 2), (20, 17, 1), (None, 17, 1), (None, 6, 1)]


def test_ipv6_flow(pcap_writer):
    a, b = "2001:db8:0:0::1", "2001:db8::ff:2"
    frames = [(T0, Ether(**MAC) / IPv6(src=a, dst=b) / UDP(sport=9, dport=10) / Raw(b"x" * 33)),
              (T0 + MS, Ether(**MAC) / IPv6(src=b, dst=a) / UDP(sport=10, dport=9) / Raw(b"y"))]
    (f,) = flows(pcap_writer, frames)
    assert (f["src_ip"], f["dst_ip"], f["ip_version"]) == ("2001:db8::1", "2001:db8::ff:2", 6)
    assert (f["src2dst_bytes"], f["dst2src_bytes"]) == (40 + 8 + 33, 40 + 8 + 1)
    assert (f["src2dst_payload_bytes"], f["dst2src_payload_bytes"]) == (33, 1)


def test_ipv4_fragments_join_their_flow(pcap_writer):
    big = IP(src=C, dst=S, id=777) / UDP(sport=4500, dport=4500) / Raw(b"f" * 3000)
    frags = fragment(big, fragsize=1200)
    frames = [(T0 + i * MS, Ether(**MAC) / fr) for i, fr in enumerate(frags)]
    frames.append(udp(T0 + 10 * MS, S, C, 4500, 4500, b"reply"))
    (f,) = flows(pcap_writer, frames)
    assert (f["src_port"], f["dst_port"]) == (4500, 4500)
    assert f["src2dst_packets"] == len(frags) == 3
    assert f["fragments"] == 3
    assert f["src2dst_bytes"] == sum(len(bytes(fr)) for fr in frags)
    assert f["dst2src_packets"] == 1
    # a later fragment whose first fragment was never seen is a port-less flow of its own
    rows = flows(pcap_writer, frames[1:2])
    assert [(r["src_port"], r["ip_proto"], r["packets"]) for r in rows] == [(None, 17, 1)]


def test_ipv6_fragments_join_their_flow(pcap_writer):
    from scapy.layers.inet6 import IPv6ExtHdrFragment

    a, b = "2001:db8::a", "2001:db8::b"
    first = IPv6(src=a, dst=b) / IPv6ExtHdrFragment(id=99, m=1, offset=0, nh=17) / UDP(sport=500, dport=4500,
                                                                                     len=8 + 1600) / Raw(b"1" * 992)
    later = IPv6(src=a, dst=b) / IPv6ExtHdrFragment(id=99, m=0, offset=125, nh=17) / Raw(b"2" * 608)
    reply = IPv6(src=b, dst=a) / UDP(sport=4500, dport=500) / Raw(b"r")
    frames = [(T0, Ether(**MAC) / first), (T0 + MS, Ether(**MAC) / later), (T0 + 2 * MS, Ether(**MAC) / reply)]
    (f,) = flows(pcap_writer, frames)
    assert (f["src_ip"], f["src_port"], f["dst_port"], f["ip_proto"]) == (a, 500, 4500, 17)
    assert (f["src2dst_packets"], f["dst2src_packets"], f["fragments"]) == (2, 1, 2)
    assert f["src2dst_bytes"] == len(bytes(first)) + len(bytes(later))


def test_identical_endpoints_are_one_direction(pcap_writer):
    frames = [udp(T0, C, C, 7, 7), udp(T0 + MS, C, C, 7, 7)]
    (f,) = flows(pcap_writer, frames)
    assert (f["src2dst_packets"], f["dst2src_packets"]) == (2, 0)
    assert f["dst2src_size_min"] is None and f["dst2src_iat_mean_ms"] is None


def test_snaplen_truncated_packets_counted_with_wire_length(pcap_writer):
    frames = [udp(T0 + i * MS, C, S, 1, 2, b"p" * 1000) for i in range(3)]
    (f,) = flows(pcap_writer, frames, snaplen=64)
    assert f["bytes"] == 3 * (20 + 8 + 1000)
    assert f["src2dst_payload_bytes"] == 3000
    assert f["truncated_packets"] == 3
    assert f["size_max"] == 1028


def _stat_frames(seed: int):
    rng = np.random.default_rng(seed)
    n = 57
    dirs = rng.integers(0, 2, n)
    dirs[0] = 0
    sizes = rng.integers(0, 1400, n)
    gaps = rng.integers(0, 3 * NS, n)
    gaps[0] = 0
    times = T0 + np.cumsum(gaps)
    frames = [udp(int(t), C if d == 0 else S, S if d == 0 else C, 5 if d == 0 else 6, 6 if d == 0 else 5,
                  b"s" * int(sz)) for t, d, sz in zip(times, dirs, sizes, strict=True)]
    return frames, dirs, sizes + 28, times


@pytest.mark.parametrize("seed", [1, 2])
def test_statistics_equal_numpy_on_the_packet_list(pcap_writer, seed):
    frames, dirs, sizes, times = _stat_frames(seed)
    (f,) = flows(pcap_writer, frames, nanos=True)

    def check(prefix: str, mask: np.ndarray) -> None:
        p = f"{prefix}_" if prefix else ""
        s, t = sizes[mask], times[mask]
        assert f[f"{p}size_min"] == s.min() and f[f"{p}size_max"] == s.max()
        assert f[f"{p}size_mean"] == pytest.approx(s.mean(), rel=1e-12)
        assert f[f"{p}size_std"] == pytest.approx(s.std(), rel=1e-9)
        iat = np.diff(t) / 1e6
        assert f[f"{p}iat_min_ms"] == pytest.approx(iat.min(), rel=1e-12)
        assert f[f"{p}iat_max_ms"] == pytest.approx(iat.max(), rel=1e-12)
        assert f[f"{p}iat_mean_ms"] == pytest.approx(iat.mean(), rel=1e-9)
        assert f[f"{p}iat_std_ms"] == pytest.approx(iat.std(), rel=1e-9)

    check("", np.ones(len(dirs), bool))
    check("src2dst", dirs == 0)
    check("dst2src", dirs == 1)
    k = FIRST_PACKETS
    assert f["first_sizes"] == list(sizes[:k])
    assert f["first_dirs"] == list(dirs[:k])
    assert f["first_iats_ms"] == pytest.approx([0.0, *list(np.diff(times[:k]) / 1e6)])


def test_statistics_nulls_for_single_packets(pcap_writer):
    (f,) = flows(pcap_writer, [udp(T0, C, S, 1, 2, b"abc")])
    assert (f["size_min"], f["size_max"], f["size_mean"], f["size_std"]) == (31, 31, 31.0, 0.0)
    assert f["dst2src_size_min"] is None and f["dst2src_size_mean"] is None
    for p in ("", "src2dst_", "dst2src_"):
        assert f[f"{p}iat_min_ms"] is None and f[f"{p}iat_std_ms"] is None
    assert f["first_iats_ms"] == [0.0]


def test_payload_heads_hold_first_payload_bytes_per_direction(pcap_writer):
    frames = [tcp(T0, C, S, 50000, 443, "S", seq=1), tcp(T0 + 1, S, C, 443, 50000, "SA", seq=100)]
    client = [bytes([65 + i]) * (20 + 10 * i) for i in range(HEAD_PACKETS_PER_DIR + 3)]  # last ones > HEAD_BYTES
    server = [b"server-%d" % i for i in range(2)]
    t = T0 + 2
    seq = 2
    for i, data in enumerate(client):
        frames.append(tcp(t, C, S, 50000, 443, "PA", data, seq=seq))
        seq += len(data)
        t += 1
        frames.append(tcp(t, S, C, 443, 50000, "A", seq=101))  # no payload: not a head
        t += 1
        if i < len(server):
            frames.append(tcp(t, S, C, 443, 50000, "PA", server[i], seq=101 + i))
            t += 1
    batch = flow_batch(pcap_writer, frames)
    assert len(batch) == 1
    h = batch.heads
    n = int(h.count[0])
    assert n == HEAD_PACKETS_PER_DIR + len(server)
    # arrival order: client 0, server 0, client 1, server 1, client 2.. 7
    expect = [(0, client[0]), (1, server[0]), (0, client[1]), (1, server[1])]
    expect += [(0, c) for c in client[2:HEAD_PACKETS_PER_DIR]]
    seqs = [2]
    for c in client[:-1]:
        seqs.append(seqs[-1] + len(c))
    for slot, (d, data) in enumerate(expect):
        assert h.dirs[0, slot] == d
        assert h.lens[0, slot] == len(data)
        assert h.caps[0, slot] == min(len(data), HEAD_BYTES)
        assert h.payload(0, slot) == data[:HEAD_BYTES]
    client_slots = [s for s in range(n) if h.dirs[0, s] == 0]
    assert [int(h.seq[0, s]) for s in client_slots] == seqs[:HEAD_PACKETS_PER_DIR]
    assert list(h.ts[0, :n]) == sorted(h.ts[0, :n])
    assert not h.data[0, n:].any()
    # the heads never become a column
    assert not any(pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) for f in FLOW_SCHEMA)
    assert batch.table.schema.equals(FLOW_SCHEMA, check_metadata=False)


def _busy_capture():
    """Many interleaved flows with idle, active, FIN and RST endings and timestamps that tie."""
    rng = np.random.default_rng(7)
    frames = []
    t = T0
    for i in range(700):
        t += int(rng.integers(0, 4 * NS)) if i % 97 else 130 * NS
        k = int(rng.integers(0, 40))
        a, b = f"10.0.{k}.1", f"10.1.{k % 7}.2"
        fwd = rng.random() < 0.6
        src, dst, sp, dp = (a, b, 1000 + k, 443) if fwd else (b, a, 443, 1000 + k)
        if k % 3 == 0:
            flags = ["S", "SA", "A", "PA", "FA", "R"][int(rng.integers(0, 6))]
            frames.append(tcp(t, src, dst, sp, dp, flags, b"d" * int(rng.integers(0, 50))))
        else:
            frames.append(udp(t, src, dst, sp, dp, b"u" * int(rng.integers(1, 1400))))
    return frames


def test_same_input_same_flows_same_order(pcap_writer):
    path = pcap_writer("busy.pcap", _busy_capture())
    cfg = FlowConfig(idle_timeout_s=200, active_timeout_s=300)
    first = read_flows(path, config=cfg)
    assert first.num_rows > 60
    assert set(first.column("end_reason").to_pylist()) >= {"idle", "active", "eof", "rst"}
    assert first.equals(read_flows(path, config=cfg))
    for chunk in (2048, 100_000):  # the reader reads at least 64 KiB at a time: ~7 and ~5 chunks
        parts = list(iter_flow_batches([path], config=cfg, chunk_bytes=chunk))
        assert pa.concat_tables([p.table for p in parts]).equals(first), chunk
    parts = list(iter_flow_batches([path], config=cfg, batch_rows=5, chunk_bytes=4096))
    assert len(parts) > 3
    assert pa.concat_tables([p.table for p in parts]).equals(first)
    heads = FlowBatch.concat(parts).heads
    again = FlowBatch.concat(list(iter_flow_batches([path], config=cfg, chunk_bytes=2048))).heads
    assert np.array_equal(heads.data, again.data) and np.array_equal(heads.count, again.count)
