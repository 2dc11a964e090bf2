"""Matching flows against the registry: semantics, and the vectorized index against brute force."""

from __future__ import annotations

import datetime as dt
import ipaddress

import numpy as np
import pyarrow as pa
import pytest
from _flowtables import T0, classified
from hypothesis import given, settings
from hypothesis import strategies as st

from classifier.flows.schema import REGISTRY_FIELDS, REPORT_SCHEMA
from classifier.registry import Registry
from classifier.registry.addresses import format_v6, parse_column


def reg(*rows: tuple) -> Registry:
    cols = ("ip", "organization", "registration_id", "category", "valid_from", "valid_until")
    return Registry.from_records(dict(zip(cols, (*r, *[None] * (6 - len(r))), strict=True)) for r in rows)


def test_annotate_adds_exactly_the_registry_fields():
    r = reg(("198.18.1.0/24", "Bank", "R1", "bank"))
    t = r.annotate(classified([dict(src_ip="198.18.1.2", dst_ip="198.18.9.1", proto="wireguard"),
                               dict(src_ip="198.18.1.2", dst_ip="8.8.8.8")]))
    assert t.schema.remove_metadata() == REPORT_SCHEMA.remove_metadata()
    assert [t.schema.field(f.name) for f in REGISTRY_FIELDS] == REGISTRY_FIELDS
    assert t.column("registered").to_pylist() == [True, None], "non-VPN flows are not checked"
    assert t.column("registration_id").to_pylist() == ["R1", None]
    assert t.column("organization").to_pylist() == ["Bank", None]
    assert t.column("matched_endpoint").to_pylist() == ["src", None]
    again = r.annotate(t)
    assert again.equals(t), "annotating twice replaces the columns"


def test_src_dst_precedence_and_most_specific_entry():
    r = reg(("10.0.0.0/8", "Wide", "WIDE"), ("10.1.2.3", "Host", "HOST"), ("10.1.0.0/16", "Mid", "MID"),
            ("192.0.2.0/24", "Server side", "SRV"))
    t = r.annotate(classified([
        dict(src_ip="10.1.2.3", dst_ip="192.0.2.1", proto="openvpn"),  # both match: src reported
        dict(src_ip="172.16.0.1", dst_ip="192.0.2.9", proto="openvpn"),  # only dst
        dict(src_ip="10.1.9.9", dst_ip="1.1.1.1", proto="openvpn"),  # /16 beats /8
        dict(src_ip="10.200.0.1", dst_ip="1.1.1.1", proto="openvpn"),  # only /8
        dict(src_ip="172.16.0.1", dst_ip="1.1.1.1", proto="openvpn"),  # nothing
    ]))
    assert t.column("registration_id").to_pylist() == ["HOST", "SRV", "MID", "WIDE", None]
    assert t.column("matched_endpoint").to_pylist() == ["src", "dst", "src", "src", None]
    assert t.column("registered").to_pylist() == [True, True, True, True, False]


def test_validity_is_checked_at_first_seen():
    day = dt.timedelta(days=1).total_seconds()
    r = reg(("198.18.5.2", "Old", "OLD", "bank", "2024-01-01", "2024-02-29"),
            ("198.18.5.0/24", "New", "NEW", "bank", "2024-03-02", ""))
    # T0 is 2024-03-01 09:00 UTC: OLD expired the day before, NEW starts the next day
    t = r.annotate(classified([
        dict(src_ip="198.18.5.2", dst_ip="1.1.1.1", proto="wireguard", t=0),
        dict(src_ip="198.18.5.2", dst_ip="1.1.1.1", proto="wireguard", t=day),
        dict(src_ip="198.18.5.2", dst_ip="1.1.1.1", proto="wireguard", t=-day),
        dict(src_ip="198.18.5.2", dst_ip="1.1.1.1", proto="wireguard", t=-9 * 3600 - 60, dur=day),  # starts 23:59 on OLD's last day
    ]))
    assert t.column("registration_id").to_pylist() == [None, "NEW", "OLD", "OLD"]
    assert t.column("registered").to_pylist() == [False, True, True, True]


def test_ipv6_and_mixed_families_never_cross():
    r = reg(("2001:db8:4a1::/48", "Uni", "U1"), ("::ffff:0:0/96", "Mapped", "M1"), ("0.0.0.0/0", "All v4", "V4"))
    t = r.annotate(classified([
        dict(src_ip="2001:db8:4a1:7::2", dst_ip="2001:db8:ffff::1", proto="wireguard"),
        dict(src_ip="2001:db8:4a2::2", dst_ip="2001:db8:ffff::1", proto="wireguard"),
        dict(src_ip="::ffff:10.0.0.1", dst_ip="2001:db8:ffff::1", proto="wireguard"),
        dict(src_ip="10.0.0.1", dst_ip="10.0.0.2", proto="wireguard"),
        dict(src_ip="fe80::1%eth0", dst_ip="not-an-address", proto="wireguard"),
    ]))
    assert t.column("registration_id").to_pylist() == ["U1", None, "M1", "V4", None]


def test_empty_registry_and_empty_table():
    r = Registry([])
    t = r.annotate(classified([dict(proto="wireguard"), dict()]))
    assert t.column("registered").to_pylist() == [False, None]
    empty = r.annotate(classified([]))
    assert empty.num_rows == 0 and "matched_endpoint" in empty.column_names


def test_parse_column_handles_dictionary_and_bad_values():
    col = pa.array(["10.0.0.1", "10.0.0.1", None, "300.1.1.1", "1.2.3", "2001:db8::1", "01.2.3.4"])
    p = parse_column(col)
    assert p.family.tolist() == [4, 4, 0, 0, 0, 6, 4]
    assert p.v4[0] == 0x0A000001
    assert format_v6(p.v6[5:6]) == ["2001:db8::1"]
    d = parse_column(pa.chunked_array([col.dictionary_encode()]))
    assert d.family.tolist() == p.family.tolist()


# -- the index against a brute-force reference ------------------------------------------------

def _brute(entries, addr: str, t_ns: int):
    """Reference semantics: most specific valid entry covering the address, file order second."""
    a = ipaddress.ip_address(addr)
    best = None
    for i, e in enumerate(entries):
        net = ipaddress.ip_network(e.ip)
        if net.version != a.version or a not in net:
            continue
        if not (e.valid_from_ns <= t_ns < e.valid_until_ns):
            continue
        if best is None or net.prefixlen > best[1]:
            best = (i, net.prefixlen)
    return None if best is None else best[0]


@st.composite
def registries_and_flows(draw, v6: bool):
    bits = 128 if v6 else 32
    base = 0x20010DB8 << 96 if v6 else 0x0A000000
    # addresses confined to a small space so that blocks overlap and nest often
    span = 12
    n = draw(st.integers(1, 25))
    rows = []
    for i in range(n):
        plen = draw(st.integers(bits - span, bits))
        off = draw(st.integers(0, 2**span - 1)) & ~((1 << (bits - plen)) - 1)
        net = ipaddress.ip_network((base + off, plen))
        dated = draw(st.booleans())
        start = draw(st.integers(0, 20)) if dated else None
        stop = start + draw(st.integers(0, 10)) if dated else None
        fmt = lambda d: (dt.date(2024, 1, 1) + dt.timedelta(days=d)).isoformat() if d is not None else ""  # noqa: E731
        rows.append((str(net), f"org{i}", f"R{i}", "bank", fmt(start), fmt(stop)))
    flows = []
    for _ in range(draw(st.integers(1, 40))):
        a = ipaddress.ip_address(base + draw(st.integers(0, 2**span + 16)))
        b = ipaddress.ip_address(base + draw(st.integers(0, 2**span + 16)))
        day = draw(st.integers(-2, 32))
        flows.append((str(a), str(b), day))
    return rows, flows


@pytest.mark.parametrize("v6", [False, True])
def test_index_matches_brute_force(v6):
    @settings(max_examples=60, deadline=None)
    @given(registries_and_flows(v6))
    def check(data):
        rows, flows = data
        r = reg(*rows)
        t0 = dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC)
        table = classified([dict(src_ip=a, dst_ip=b, proto="wireguard",
                                 t=(t0 - T0).total_seconds() + d * 86400) for a, b, d in flows])
        got = r.annotate(table).column("registration_id").to_pylist()
        times = table.column("first_seen").cast(pa.int64()).to_numpy()
        want = []
        for (a, b, _), t_ns in zip(flows, times, strict=True):
            hit = _brute(r.entries, a, int(t_ns))
            if hit is None:
                hit = _brute(r.entries, b, int(t_ns))
            want.append(None if hit is None else r.entries[hit].registration_id)
        assert got == want

    check()


def test_top_of_address_space_blocks():
    r = reg(("255.255.255.0/24", "Top4", "T4"), ("ffff::/16", "Top6", "T6"), ("::/0", "All6", "A6"))
    t = r.annotate(classified([
        dict(src_ip="255.255.255.255", dst_ip="1.1.1.1", proto="wireguard"),
        dict(src_ip="ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", dst_ip="::1", proto="wireguard"),
        dict(src_ip="fffe::1", dst_ip="fffe::2", proto="wireguard"),
    ]))
    assert t.column("registration_id").to_pylist() == ["T4", "T6", "A6"]


def test_many_flows_are_matched_without_per_row_python():
    """A smoke check of scale: 200k flows against 20k entries in well under the budget."""
    import time

    rng = np.random.default_rng(1)
    nets = np.unique(rng.integers(0, 2**24, 20000)) << 8
    r = Registry.from_records(
        {"ip": f"{ipaddress.IPv4Address(int(n))}/24", "organization": "o", "registration_id": f"R{i}",
         "category": "bank"} for i, n in enumerate(nets))
    n = 200_000
    src = pa.array([str(ipaddress.IPv4Address(int(x))) for x in rng.integers(0, 2**32, 5000)]).take(
        pa.array(rng.integers(0, 5000, n)))
    times = np.full(n, T0.timestamp() * 1e9, np.int64)
    t = time.perf_counter()
    entry, _ = r.match(src, src, times)
    elapsed = time.perf_counter() - t
    covered = np.isin(parse_column(src).v4 >> np.uint64(8), nets >> 8)
    assert ((entry >= 0) == covered).all()
    assert elapsed < 3.0, f"matching 200k flows took {elapsed:.2f} s"
