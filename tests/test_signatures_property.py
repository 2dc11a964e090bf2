"""Property tests: random payloads never match a signature; mangled headers never crash."""

from __future__ import annotations

import struct

from _sigflows import F, batch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from classifier.signatures import detect, detect_verdicts

PORTS = [53, 443, 500, 1194, 1701, 1723, 4500, 5004, 41641, 51820]
packet = st.tuples(st.integers(0, 1), st.binary(min_size=1, max_size=200))
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.lists(packet, min_size=1, max_size=16), st.sampled_from(PORTS), st.sampled_from([6, 17]),
       st.randoms(use_true_random=True))
def test_random_payloads_never_match(pk, port, proto, rnd):
    # Random bytes (not hypothesis' favourite zero runs): no signature may claim them,
    # whatever the port suggests. A seeded PRNG (use_true_random), not a HypothesisRandom:
    # hypothesis steers the bytes of the latter, and once steered them into SSTP's verb
    # b"SSTP_DUPLEX_POST ", which a signature rightly claims; a protocol's magic is not
    # random bytes.
    pk = [(d, rnd.randbytes(len(p))) for d, p in pk]
    assert detect_verdicts(batch(F(pk, proto=proto, dport=port)))[0] is None


# Valid first packets of each protocol, to be mangled.
SEEDS = [
    (17, b"\x01\0\0\0" + bytes(144)),
    (17, b"\x04\0\0\0" + struct.pack("<IQ", 1, 1) + bytes(32)),
    (17, b"\x38" + bytes(8) + b"\0\0\0\0\0"),
    (6, b"\x00\x0e\x38" + bytes(13)),
    (17, bytes(8) * 2 + bytes([33, 0x20, 34, 8]) + struct.pack("!II", 0, 40) + bytes(12)),
    (17, b"\0\0\0\0" + bytes(8) * 2 + bytes([33, 0x20, 35, 8]) + struct.pack("!II", 1, 40) + bytes(12)),
    (50, struct.pack("!II", 0x1000, 1) + bytes(40)),
    (51, bytes([4, 4, 0, 0]) + struct.pack("!II", 0x1000, 1) + bytes(40)),
    (47, bytes([0x30, 0x81, 0x88, 0x0B]) + bytes(40)),
    (47, b"\0\0\x08\x00" + bytes([0x45]) + bytes(40)),
    (4, bytes([0x45]) + bytes(40)),
    (17, struct.pack("!HH", 0xC802, 20) + bytes(16)),
    (6, struct.pack("!HHIHH", 156, 1, 0x1A2B3C4D, 1, 0) + bytes(20)),
    (17, b"\x08\0\0\0\0\0\x01\0" + bytes(40)),
    (17, b"TS\xf0\x9f\x92\xac" + bytes(80)),
    (17, bytes([23, 1, 0]) + bytes(20)),
    (17, b"IP=1.2.3.4,PORT=5"),
    (6, b"0 a 17\n"),
    (6, b"IKETCP" + bytes(40)),
    (115, bytes(4) + struct.pack("!HH", 0xC803, 20) + bytes(16)),
]


@SETTINGS
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), max_size=8),
       st.integers(0, 80), st.integers(1, 12), st.booleans())
def test_mangled_headers_never_crash(seed, edits, cut, copies, both):
    proto, base = seed
    data = bytearray(base)
    for pos, val in edits:
        if pos < len(data):
            data[pos] = val
    data = bytes(data[: max(1, len(data) - cut)])
    pk = [((i % 2) if both else 0, data) for i in range(copies)]
    ports = (None, None) if proto not in (6, 17) else (4500, 4500)
    t = detect(batch(F(pk, proto=proto, sport=ports[0], dport=ports[1])))
    assert t.num_rows == 1
    conf = t.column("confidence").to_pylist()[0]
    assert conf is None or 0.0 < conf <= 1.0
