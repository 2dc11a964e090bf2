"""Byte statistics of the payload heads: vectorized values equal a plain per-flow reference."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from classifier.flows.batch import HEAD_BYTES, HEAD_PACKETS, PayloadHeads
from classifier.flows.head_stats import head_statistics


def _heads(slots: list[list[tuple[int, bytes]]]) -> PayloadHeads:
    """Heads from per-flow lists of (direction, stored bytes)."""
    h = PayloadHeads.empty(len(slots))
    for i, flow in enumerate(slots):
        h.count[i] = len(flow)
        for j, (d, data) in enumerate(flow):
            h.dirs[i, j] = d
            h.caps[i, j] = len(data)
            h.lens[i, j] = len(data)
            h.data[i, j, :len(data)] = np.frombuffer(data, np.uint8)
    return h


def _reference(flow: list[tuple[int, bytes]], d: int) -> dict[str, float] | None:
    mine = [b for dd, b in flow if dd == d and len(b)]
    if not mine:
        return None
    first = mine[0]
    allb = b"".join(mine)
    tls = sum(1 for b in mine if len(b) >= 3 and 20 <= b[0] <= 23
              and ((b[1] == 3 and b[2] <= 4) or (b[1] == 0xFE and b[2] in (0xFD, 0xFF))))
    return {
        "first_payload_bits": sum(bin(x).count("1") for x in first) / len(first),
        "first_payload_printable": sum(0x20 <= x < 0x7F for x in first) / len(first),
        "payload_bits": sum(bin(x).count("1") for x in allb) / len(allb),
        "tls_record_frac": tls / len(mine),
    }


def _check(slots):
    got = head_statistics(_heads(slots))
    for i, flow in enumerate(slots):
        for d, name in ((0, "src2dst"), (1, "dst2src")):
            ref = _reference(flow, d)
            for col in ("first_payload_bits", "first_payload_printable", "payload_bits", "tls_record_frac"):
                values, valid = got[f"{name}_{col}"]
                assert bool(valid[i]) == (ref is not None), (i, name, col)
                if ref is not None:
                    assert values[i] == pytest.approx(ref[col]), (i, name, col)


def test_known_payloads():
    rng = np.random.default_rng(1)
    random_bytes = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    http = b"GET /index.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: x\r\n\r\n"[:64]
    tls = bytes([0x16, 0x03, 0x01, 0x02, 0x00]) + random_bytes[:59]
    dtls = bytes([0x17, 0xFE, 0xFD]) + random_bytes[:40]
    slots = [[(0, random_bytes), (1, random_bytes)], [(0, http)], [(0, tls), (1, dtls), (1, random_bytes)], []]
    got = head_statistics(_heads(slots))
    bits, ok = got["src2dst_first_payload_bits"]
    assert abs(bits[0] - 4.0) < 0.6 and bits[1] < 3.6
    printable, _ = got["src2dst_first_payload_printable"]
    assert printable[1] > 0.85 and printable[0] < 0.6  # CR LF are not printable
    tls_frac, _ = got["src2dst_tls_record_frac"]
    assert tls_frac[2] == 1.0 and tls_frac[0] == 0.0
    down_tls, down_ok = got["dst2src_tls_record_frac"]
    assert down_tls[2] == 0.5
    assert not ok[3] and not down_ok[1] and not down_ok[3]
    _check(slots)


_slot = st.tuples(st.integers(0, 1), st.binary(min_size=0, max_size=HEAD_BYTES))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(_slot, max_size=HEAD_PACKETS), min_size=1, max_size=6))
def test_matches_reference(slots):
    _check(slots)


def test_flow_table_carries_statistics_not_bytes(tmp_path):
    """The metered table has the statistics; a random-payload flow reads near 4 bits per byte."""
    from scapy.layers.inet import IP, UDP
    from scapy.utils import wrpcap

    from classifier.flows.api import read_flows

    rng = np.random.default_rng(7)
    pkts = []
    for k in range(6):
        p = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5000, dport=6000) / rng.integers(0, 256, 200, np.uint8).tobytes()
        p.time = 1_700_000_000 + k * 0.01
        pkts.append(p)
    path = tmp_path / "r.pcap"
    wrpcap(str(path), pkts)
    t = read_flows(str(path))
    assert t.column("src2dst_payload_bits")[0].as_py() == pytest.approx(4.0, abs=0.3)
    assert t.column("dst2src_payload_bits")[0].as_py() is None
    assert not any(pa.types.is_binary(f.type) for f in t.schema)
