"""Property test: random packets -> pcap -> flows, checked against totals and the reference.

Hypothesis draws packets with random IPv4/IPv6 endpoints from a small pool (so flows
get packets in both directions and collide on keys), random protocols (TCP with random
flags, UDP, ICMP/ICMPv6, ESP, GRE), ports, payload lengths, VLAN tags and increasing
timestamps whose gaps sometimes exceed the idle timeout. Every packet is valid, so
every packet must land in exactly one flow.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import reference
from conftest import T0, write_pcap
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.ipsec import ESP
from scapy.layers.l2 import GRE, Dot1Q, Ether
from scapy.packet import Raw

from classifier.flows.api import read_flows
from classifier.flows.config import FlowConfig
from classifier.model.synthetic import packet_bursts

MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
HOSTS4 = ["10.0.0.1", "10.0.0.2", "192.0.2.77", "203.0.113.200"]
HOSTS6 = ["2001:db8::1", "2001:db8::2", "fe80::1ff:fe23:4567:890a"]
PORTS = [53, 443, 1194, 51820, 40000]
FLAGS = ["S", "SA", "A", "PA", "FA", "R", "RA", "FPA"]
# Short timeouts so that splits happen within a few dozen packets.
CONFIG = FlowConfig(idle_timeout_s=20, active_timeout_s=60, close_linger_s=2)

template = st.fixed_dictionaries({
    "v6": st.booleans(),
    "a": st.integers(0, 9),
    "b": st.integers(0, 9),
    "proto": st.sampled_from(["tcp", "udp", "icmp", "esp", "gre"]),
    "sport": st.sampled_from(PORTS),
    "dport": st.sampled_from(PORTS),
    "vlan": st.sampled_from([None, None, None, 7]),
})
packet = st.fixed_dictionaries({
    "flow": st.integers(0, 7),  # which template: a few conversations, many packets each
    "reply": st.booleans(),  # sent by the template's responder
    "flags": st.sampled_from(FLAGS),
    "size": st.integers(0, 1400),
    "gap_us": st.one_of(st.integers(0, 3_000_000), st.integers(0, 30_000_000)),
})


def build(tpl: dict, p: dict):
    pool = HOSTS6 if tpl["v6"] else HOSTS4
    src, dst = pool[tpl["a"] % len(pool)], pool[tpl["b"] % len(pool)]
    sport, dport = tpl["sport"], tpl["dport"]
    if p["reply"]:
        src, dst, sport, dport = dst, src, dport, sport
    ip = IPv6(src=src, dst=dst) if tpl["v6"] else IP(src=src, dst=dst)
    data = Raw(b"\xab" * p["size"])
    proto = tpl["proto"]
    if proto == "tcp":
        l4 = TCP(sport=sport, dport=dport, flags=p["flags"]) / data
    elif proto == "udp":
        l4 = UDP(sport=sport, dport=dport) / data
    elif proto == "icmp":
        l4 = ICMPv6EchoRequest(data=bytes(data)) if tpl["v6"] else ICMP() / data
    elif proto == "esp":
        l4 = ESP(spi=sport, seq=1, data=bytes(data))
    else:
        l4 = GRE() / data
    eth = Ether(**MAC) / Dot1Q(vlan=tpl["vlan"]) if tpl["vlan"] is not None else Ether(**MAC)
    return eth / ip / l4


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(template, min_size=8, max_size=8), st.lists(packet, min_size=1, max_size=60), st.booleans())
def test_random_packets_round_trip(templates, pkts, nanos):
    frames = []
    t = T0
    for p in pkts:
        t += p["gap_us"] * 1000
        frames.append((t, build(templates[p["flow"]], p)))
    ip_lens = [len(bytes(f[IPv6] if IPv6 in f else f[IP])) for _, f in frames]
    with tempfile.TemporaryDirectory() as d:
        path = write_pcap(Path(d) / "r.pcap", frames, nanos=nanos)
        table = read_flows(path, config=CONFIG)
        ref = reference.build_flows(reference.read_packets(path), idle_s=CONFIG.idle_timeout_s,
                                    active_s=CONFIG.active_timeout_s, linger_s=CONFIG.close_linger_s)
    rows = table.to_pylist()
    assert sum(r["packets"] for r in rows) == len(frames)
    assert sum(r["bytes"] for r in rows) == sum(ip_lens)
    assert sum(len(f.packets) for f in ref) == len(frames)
    for r in rows:
        assert r["packets"] == r["src2dst_packets"] + r["dst2src_packets"]
        assert r["bytes"] == r["src2dst_bytes"] + r["dst2src_bytes"]
        assert r["first_seen"] <= r["last_seen"]
        assert len(r["first_sizes"]) == min(r["packets"], 10)
        assert (r["src_port"] is None) == (r["ip_proto"] not in (6, 17))
    ns = table.column("first_seen").cast("int64").to_pylist()
    engine = Counter((r["src_ip"], r["dst_ip"], r["src_port"], r["dst_port"], r["ip_proto"], r["vlan_id"], t0,
                      r["src2dst_packets"], r["src2dst_bytes"], r["dst2src_packets"], r["dst2src_bytes"],
                      r["end_reason"], tuple(r["payload_bursts"])) for r, t0 in zip(rows, ns, strict=True))
    expected = Counter((*f.summary(), f.end_reason, _bursts(f)) for f in ref)
    assert engine == expected


def _bursts(flow: reference.RefFlow) -> tuple[int, ...]:
    """The reference flow's payload bursts, read packet by packet."""
    pay = np.array([p.payload_len for p in flow.packets], np.int64)
    return tuple(packet_bursts(pay, np.array(flow.dirs, np.int8)))
