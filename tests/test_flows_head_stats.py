"""Byte statistics of the payload heads: vectorized values equal a plain per-flow reference."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from classifier.flows.batch import HEAD_BYTES, HEAD_PACKETS, HEAD_PACKETS_PER_DIR, PayloadHeads
from classifier.flows.head_stats import (
    FRAME_BYTES,
    LENGTH_SLACK,
    MAX_INNER_OFFSET,
    MAX_LENGTH_OFFSET,
    STUN_COOKIE,
    STUN_OFFSETS,
    head_statistics,
    payload_bursts,
)
from classifier.flows.schema import HEAD_STAT_COLUMNS, HEAD_STAT_MIN_PACKETS
from classifier.model.synthetic import packet_bursts


def _heads(slots: list[list[tuple]]) -> PayloadHeads:
    """Heads from per-flow lists of (direction, stored bytes[, wire length])."""
    h = PayloadHeads.empty(len(slots))
    for i, flow in enumerate(slots):
        h.count[i] = len(flow)
        for j, (d, data, *wire) in enumerate(flow):
            h.dirs[i, j] = d
            h.caps[i, j] = len(data)
            h.lens[i, j] = wire[0] if wire else len(data)
            h.data[i, j, :len(data)] = np.frombuffer(data, np.uint8)
    return h


def _inner_ip_offsets(data: bytes, wire: int) -> list[int]:
    """Plain reading of the rule: offsets <= 48 of an IPv4/IPv6 header whose length field fits the rest."""
    def v4(o: int) -> bool:
        return len(data) >= o + 4 and 0x45 <= data[o] <= 0x4F and int.from_bytes(data[o + 2:o + 4], "big") == wire - o

    def v6(o: int) -> bool:
        return len(data) >= o + 6 and data[o] >> 4 == 6 and int.from_bytes(data[o + 4:o + 6], "big") + 40 == wire - o

    return [o for o in range(MAX_INNER_OFFSET + 1) if v4(o) or v6(o)]


def _has_inner_ip(data: bytes, wire: int) -> bool:
    return bool(_inner_ip_offsets(data, wire))


def _has_ppp_inner_ip(data: bytes, wire: int) -> bool:
    """An inner header right after a PPP protocol field (0x21/0x57, after 0x00 or 0x03 unless first)."""
    return any(o >= 1 and data[o - 1] in (0x21, 0x57) and (o == 1 or data[o - 2] in (0x00, 0x03))
               for o in _inner_ip_offsets(data, wire))


def _framing_reference(mine: list[bytes]) -> dict[str, float | None]:
    """Plain reading of the framing columns: consecutive pairs of one first byte, position by position."""
    if len(mine) < 2:
        return {"repeat_bytes": None, "counter_frac": None, "counter_offset": None}
    pairs = [pair for kind in sorted({h[0] for h in mine})
             for pair in itertools.pairwise([h for h in mine if h[0] == kind])]
    repeat, best, where = 0, 0, None
    for p in range(FRAME_BYTES):
        stored = [(a, b) for a, b in pairs if len(a) > p and len(b) > p]
        same = sum(a[p] == b[p] for a, b in stored)
        repeat += same > 0 and 2 * same >= len(pairs)
        grows = sum((b[p] - a[p]) % 256 == 1 for a, b in stored)
        if grows > best:
            best, where = grows, p
    if len(mine) < 3:
        return {"repeat_bytes": float(repeat), "counter_frac": None, "counter_offset": None}
    share = best / len(pairs) if pairs else 0.0  # no two heads of one kind: nothing counts
    return {"repeat_bytes": float(repeat), "counter_frac": share,
            "counter_offset": float(where) if share >= 0.5 else None}


def _length_reference(mine: list[tuple[bytes, int]]) -> dict[str, float | None]:
    """Plain reading of the length columns: per offset, heads whose 16-bit field there counts what follows."""
    def counts(data: bytes, wire: int, o: int) -> bool:
        rest = wire - o - 2
        return len(data) >= o + 2 and rest >= 4 and 0 <= rest - int.from_bytes(data[o:o + 2], "big") <= LENGTH_SLACK

    per_offset = [sum(counts(b, w, o) for b, w in mine) for o in range(MAX_LENGTH_OFFSET + 1)]
    share = max(per_offset) / len(mine)
    return {"length_frac": share, "length_offset": float(per_offset.index(max(per_offset))) if share >= 0.5 else None}


def _reference(flow: list[tuple], d: int) -> dict[str, float | None] | None:
    mine = [b for dd, b, *_ in flow if dd == d and len(b)]
    if not mine:
        return None
    inner = sum(_has_inner_ip(b, w[0] if w else len(b)) for dd, b, *w in flow if dd == d and len(b))
    ppp = sum(_has_ppp_inner_ip(b, w[0] if w else len(b)) for dd, b, *w in flow if dd == d and len(b))
    first = mine[0]
    allb = b"".join(mine)
    tls = sum(1 for b in mine if len(b) >= 3 and 20 <= b[0] <= 23
              and ((b[1] == 3 and b[2] <= 4) or (b[1] == 0xFE and b[2] in (0xFD, 0xFF))))
    return {
        "first_payload_bits": sum(bin(x).count("1") for x in first) / len(first),
        "first_payload_printable": sum(0x20 <= x < 0x7F for x in first) / len(first),
        "payload_bits": sum(bin(x).count("1") for x in allb) / len(allb),
        "tls_record_frac": tls / len(mine),
        "inner_header_frac": inner / len(mine),
        "inner_ppp_frac": ppp / len(mine),
        "stun_frac": sum(any(len(b) >= o + 20 and b[o] >> 6 == 0 and b[o + 4:o + 8] == STUN_COOKIE for o in STUN_OFFSETS)
                         for b in mine) / len(mine),
        **_framing_reference(mine),
        **_length_reference([(b, w[0] if w else len(b)) for dd, b, *w in flow if dd == d and len(b)]),
    }


def _check(slots):
    got = head_statistics(_heads(slots))
    for i, flow in enumerate(slots):
        for d, name in ((0, "src2dst"), (1, "dst2src")):
            ref = _reference(flow, d)
            for col in HEAD_STAT_COLUMNS:
                values, valid = got[f"{name}_{col}"]
                expected = None if ref is None else ref[col]
                assert bool(valid[i]) == (expected is not None), (i, name, col)
                if expected is not None:
                    assert values[i] == pytest.approx(expected), (i, name, col)


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


def _ipv4(total: int) -> bytes:
    return bytes([0x45, 0, total >> 8, total & 0xFF, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2])


def _ipv6(payload: int) -> bytes:
    return bytes([0x60, 0, 0, 0, payload >> 8, payload & 0xFF, 6, 64]) + bytes(32)


def test_cleartext_encapsulation_is_seen_and_random_bytes_are_not():
    """6in4 (offset 0), GRE (4), VXLAN (22) show their inner header; a wrong length or random bytes do not."""
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    six_in_four = (_ipv6(1000) + noise)[:64]  # wire payload 1040: 40-byte header + 1000
    gre = (b"\x00\x00\x08\x00" + _ipv4(600) + noise)[:64]  # wire 604
    vxlan = (b"\x08\x00\x00\x00\x00\x2a\x00\x00" + bytes(12) + b"\x08\x00" + _ipv4(1400) + noise)[:64]  # wire 1422
    slots = [
        [(0, six_in_four, 1040), (1, six_in_four, 1040)],
        [(0, gre, 604), (1, gre, 700)],  # the reply's length does not match
        [(0, vxlan, 1422), (0, noise, 900)],
        [(0, noise, 1040), (1, noise, 64)],
    ]
    stats = head_statistics(_heads(slots))
    got, _ = stats["src2dst_inner_header_frac"]
    down, _ = stats["dst2src_inner_header_frac"]
    assert list(got) == [1.0, 1.0, 0.5, 0.0]
    assert down[0] == 1.0 and down[1] == 0.0 and down[3] == 0.0
    _check(slots)


def test_length_fields_say_where_a_framing_counts_its_bytes():
    """OpenVPN over TCP counts at 0, TURN's ChannelData at 2 (padded over TCP), TLS at 3; random bytes nowhere."""
    rng = np.random.default_rng(5)
    noise = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    openvpn = [(0, (n.to_bytes(2, "big") + b"\x48" + noise)[:64], n + 2) for n in (90, 140, 1300)]
    channel = [(1, (b"\x40\x00" + n.to_bytes(2, "big") + noise)[:64], n + 4 + (-n % 4)) for n in (97, 150, 1201)]
    tls = [(0, (b"\x17\x03\x03" + n.to_bytes(2, "big") + noise)[:64], n + 5) for n in (40, 600)]
    slots = [openvpn + channel, [*tls, (0, noise, 900)], [(0, noise, 900), (1, noise, 64)]]
    stats = head_statistics(_heads(slots))
    up, _ = stats["src2dst_length_offset"]
    down, _ = stats["dst2src_length_offset"]
    frac, _ = stats["src2dst_length_frac"]
    assert up[0] == 0 and down[0] == 2 and up[1] == 3 and frac[1] == pytest.approx(2 / 3)
    assert np.isnan(up[2]) and np.isnan(down[2]) and frac[2] == 0.0
    _check(slots)


def test_stun_messages_are_seen_bare_behind_a_length_and_inside_channel_data():
    """A call's checks: STUN at 0 (UDP), at 2 (ICE over TCP), at 4 (TURN ChannelData); not random bytes."""
    rng = np.random.default_rng(9)
    noise = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    binding = b"\x00\x01\x00\x2c" + STUN_COOKIE + noise[:12] + noise[12:56]
    slots = [[(0, binding), (0, (b"\x00\x48" + binding)[:64], 74), (0, (b"\x40\x00\x00\x48" + binding)[:64], 76),
              (0, noise)],
             [(1, b"\xc0" + binding[1:])]]  # first two bits set: not STUN
    stats = head_statistics(_heads(slots))
    up, _ = stats["src2dst_stun_frac"]
    down, _ = stats["dst2src_stun_frac"]
    assert up[0] == 0.75 and down[1] == 0.0
    _check(slots)


@st.composite
def _encapsulated(draw):
    """A slot with an IPv4 or IPv6 header at a random offset, its length field right or off by a little."""
    off = draw(st.integers(0, 60))
    v6 = draw(st.booleans())
    wire = draw(st.integers(off + 46, 1600))
    skew = draw(st.sampled_from([0, 0, 1, -1, 40]))
    header = _ipv6(wire - off - 40 + skew) if v6 else _ipv4(wire - off + skew)
    # what precedes the inner header: random bytes, a PPP protocol field (plain or compressed) or an EtherType
    frame = draw(st.sampled_from([b"", b"\x00\x21", b"\xff\x03\x00\x21", b"\x57", b"\x03\x21", b"\x08\x00"]))
    frame = frame[-off:] if off else b""
    prefix = draw(st.binary(min_size=off - len(frame), max_size=off - len(frame))) + frame
    data = (prefix + header + bytes(64))[:draw(st.integers(off, HEAD_BYTES))]
    return draw(st.integers(0, 1)), data, wire


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.one_of(_slot, _encapsulated()), max_size=HEAD_PACKETS), min_size=1, max_size=6))
def test_inner_header_matches_reference(slots):
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


def _esp(spi: int, seq: int, rng: np.random.Generator) -> bytes:
    return spi.to_bytes(4, "big") + seq.to_bytes(4, "big") + rng.integers(0, 256, 56, dtype=np.uint8).tobytes()


def test_a_counter_is_read_within_one_message_kind_when_another_kind_interleaves():
    """RTP packets between STUN checks (first bytes 0x80 and 0x00) still show RTP's counter at byte 3."""
    rng = np.random.default_rng(11)
    rtp = iter(bytes([0x80, 0x6F, 0x12, seq]) + rng.integers(0, 256, 60, dtype=np.uint8).tobytes()
               for seq in range(40, 60))

    def stun() -> bytes:
        return bytes([0x00, 0x01, 0x00, 0x2C]) + bytes.fromhex("2112a442") + rng.integers(0, 256, 56, dtype=np.uint8).tobytes()

    side = [next(rtp) if kind == "r" else stun() for kind in "srsrrsrr"]
    stats = head_statistics(_heads([[(0, h) for h in side]]))
    counter, _ = stats["src2dst_counter_frac"]
    offset, _ = stats["src2dst_counter_offset"]
    assert counter[0] == 4 / 6 and offset[0] == 3  # 4 of the 4 RTP pairs, 0 of the 2 STUN pairs
    assert _framing_reference(side)["counter_offset"] == 3.0


def test_tunnel_framing_is_seen_after_a_handshake_and_random_bytes_show_none():
    """An ESP-like header (fixed SPI, counting sequence) repeats and counts; random payloads do neither."""
    rng = np.random.default_rng(5)
    noise = [rng.integers(0, 256, 64, dtype=np.uint8).tobytes() for _ in range(16)]
    esp = [(0, noise[0])] + [(d, _esp(0xC0FFEE00 + d, 255 + k, rng)) for k in range(7) for d in (0, 1)]
    slots = [esp[:16], [(k % 2, noise[k]) for k in range(16)], [(0, noise[0])]]
    stats = head_statistics(_heads(slots))
    repeat, ok = stats["src2dst_repeat_bytes"]
    counter, _ = stats["dst2src_counter_frac"]
    # SPI (4 bytes) and the sequence number's top two bytes repeat; its low byte counts through 0xff -> 0x00
    assert repeat[0] >= 6 and counter[0] == 1.0
    offset, _ = stats["dst2src_counter_offset"]
    assert offset[0] == 7  # the sequence number's low byte
    assert repeat[1] <= 1 and counter[1] < 0.5  # 1: two random heads that share their first byte
    assert not ok[2]  # one payload packet: nothing to compare
    assert HEAD_STAT_MIN_PACKETS["counter_frac"] == 3 and HEAD_STAT_MIN_PACKETS["first_payload_bits"] == 1
    _check(slots)


def test_ppp_framed_inner_packets_are_told_from_other_encapsulation():
    """L2TP data (PPP protocol 0x0021 before the inner header) counts as PPP; VXLAN and 6in4 do not."""
    inner = _ipv4(1000)
    l2tp = bytes([0x40, 0x02, 0x03, 0xF4, 0, 1, 0, 2]) + b"\xff\x03\x00\x21" + inner
    l2tp_pfc = bytes([0x00, 0x02, 0, 1, 0, 2]) + b"\xff\x03\x21" + inner  # compressed protocol field
    vxlan = bytes([0x08, 0, 0, 0, 0, 0, 0x7E, 0]) + bytes(12) + b"\x08\x00" + inner
    slots = [[(0, l2tp, 1012)], [(0, l2tp_pfc, 1009)], [(0, vxlan, 1022)], [(0, inner, 1000)]]
    stats = head_statistics(_heads(slots))
    found, _ = stats["src2dst_inner_header_frac"]
    ppp, _ = stats["src2dst_inner_ppp_frac"]
    assert list(found) == [1.0, 1.0, 1.0, 1.0]
    assert list(ppp) == [1.0, 1.0, 0.0, 0.0]
    _check(slots)


def _stored(dirs: list[int], lens: list[int]) -> PayloadHeads:
    """Heads as the engine stores them: payload packets in arrival order, at most 8 per direction."""
    kept, per_dir = [], [0, 0]
    for d, n in zip(dirs, lens, strict=True):
        if per_dir[d] < HEAD_PACKETS_PER_DIR:
            per_dir[d] += 1
            kept.append((d, b"\x17" * min(n, HEAD_BYTES), n))
    return _heads([kept])


def _sent(dirs: list[int]) -> np.ndarray:
    """Payload packets per direction, (1, 2)."""
    return np.array([[dirs.count(0), dirs.count(1)]])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(1, 3000)), max_size=40))
def test_payload_bursts_match_a_packet_by_packet_reading(packets):
    """Vectorized bursts over the heads equal a plain walk over the flow's payload packets."""
    dirs = [d for d, _ in packets]
    lens = [n for _, n in packets]
    values, count = payload_bursts(_stored(dirs, lens), _sent(dirs))
    expected = packet_bursts(np.array(lens, np.int64), np.array(dirs, np.int8))
    assert values[0, :count[0]].tolist() == expected


def test_payload_bursts_of_a_nested_handshake():
    """TLS flights then a proxied ClientHello: every burst listed; a cut burst is left out."""
    # ClientHello, server flight in 3 segments, Finished, ticket, proxied ClientHello, server flight
    dirs = [0, 1, 1, 1, 0, 1, 0, 1, 1]
    lens = [517, 1448, 1448, 300, 80, 250, 640, 1448, 400]
    values, count = payload_bursts(_stored(dirs, lens), _sent(dirs))
    assert values[0, :count[0]].tolist() == [517, -3196, 80, -250, 640, -1848]
    # a download: the responder's 9th segment goes unseen, so its run is not listed in full
    dirs, lens = [0] + [1] * 12, [300] + [1448] * 12
    values, count = payload_bursts(_stored(dirs, lens), _sent(dirs))
    assert values[0, :count[0]].tolist() == [300]
    # ...unless those 8 were all it sent
    values, count = payload_bursts(_stored(dirs[:9], lens[:9]), _sent(dirs[:9]))
    assert values[0, :count[0]].tolist() == [300, -8 * 1448]
