"""Crypto-PAn pseudonymization: reference vectors, prefix preservation, keys, tables."""

from __future__ import annotations

import ipaddress

import numpy as np
import pyarrow as pa
import pytest
from _flowtables import classified

from classifier.anonymize import Anonymizer, CryptoPAn, key_from_spec
from classifier.errors import UsageError

# The sample key of the Crypto-PAn reference distribution and pairs from its sample trace
# (sample_trace_raw.dat / sample_trace_sanitized.dat).
REF_KEY = bytes([21, 34, 23, 141, 51, 164, 207, 128, 19, 10, 91, 22, 73, 144, 125, 16,
                 216, 152, 143, 131, 121, 121, 101, 39, 98, 87, 76, 45, 42, 132, 34, 2])
REF_V4 = [
    ("128.11.68.132", "135.242.180.132"), ("129.118.74.4", "134.136.186.123"),
    ("130.132.252.244", "133.68.164.234"), ("141.223.7.43", "141.167.8.160"),
    ("152.163.225.39", "151.140.114.167"), ("192.102.249.13", "252.138.62.131"),
    ("195.205.63.100", "255.186.223.5"), ("207.25.71.27", "241.33.119.156"),
    ("24.0.250.221", "100.15.198.226"), ("4.3.88.225", "124.60.155.63"),
    ("64.39.15.238", "0.219.7.41"), ("10.185.25.118", "117.161.29.118"),
]
# The 128-bit generalization as published with other Crypto-PAn implementations.
REF_V6 = [
    ("::1", "78ff:f001:9fc0:20df:8380:b1f1:704:ed"),
    ("::2", "78ff:f001:9fc0:20df:8380:b1f1:704:ef"),
    ("2001:db8::1", "4401:2bc:603f:d91d:27f:ff8e:e6f1:dc1e"),
    ("2001:db8::2", "4401:2bc:603f:d91d:27f:ff8e:e6f1:dc1c"),
]


def test_reference_vectors_ipv4_and_ipv6():
    c = CryptoPAn(REF_KEY)
    got = c.anonymize_text_addresses([a for a, _ in REF_V4 + REF_V6])
    assert got == [b for _, b in REF_V4 + REF_V6]
    # the 32-character text key of the reference's own test
    assert CryptoPAn(b"boojahyoo3vaeToong0Eijee7Ahz3yee").anonymize_text_addresses(["192.0.2.1"]) == ["206.2.124.120"]


def _common_prefix(a: int, b: int, bits: int) -> int:
    x = a ^ b
    return bits - x.bit_length()


@pytest.mark.parametrize("bits", [32, 128])
def test_prefix_preserving_and_one_to_one(bits):
    rng = np.random.default_rng(7)
    c = CryptoPAn(bytes(range(32)))
    base = [int.from_bytes(rng.bytes(bits // 8), "big") for _ in range(40)]
    # neighbours sharing long prefixes with the base addresses
    addrs = sorted({*base, *(b ^ (1 << int(rng.integers(0, bits))) for b in base), *(b ^ 1 for b in base)})
    cls = ipaddress.IPv4Address if bits == 32 else ipaddress.IPv6Address
    texts = [str(cls(a)) for a in addrs]
    anon = [int(ipaddress.ip_address(x)) for x in c.anonymize_text_addresses(texts)]
    assert len(set(anon)) == len(addrs), "distinct addresses stay distinct"
    for i in range(len(addrs)):
        for j in range(i + 1, min(i + 8, len(addrs))):
            assert _common_prefix(addrs[i], addrs[j], bits) == _common_prefix(anon[i], anon[j], bits)


def test_vectorized_v4_equals_text_path():
    c = CryptoPAn(REF_KEY)
    values = np.array([int(ipaddress.IPv4Address(a)) for a, _ in REF_V4], np.uint32)
    out = c.anonymize_v4(values)
    assert [str(ipaddress.IPv4Address(int(v))) for v in out] == [b for _, b in REF_V4]


def test_key_specs(tmp_path):
    assert key_from_spec("hex:" + REF_KEY.hex()) == REF_KEY
    raw = tmp_path / "key.bin"
    raw.write_bytes(REF_KEY)
    assert key_from_spec(f"@{raw}") == REF_KEY
    text = tmp_path / "key.txt"
    text.write_text("correct horse battery staple\n")
    assert key_from_spec(f"@{text}") == key_from_spec("correct horse battery staple")
    assert key_from_spec("a") != key_from_spec("b") and len(key_from_spec("a")) == 32
    with pytest.raises(UsageError, match="64 hex digits"):
        key_from_spec("hex:abcd")
    with pytest.raises(UsageError, match="cannot read key file"):
        key_from_spec(f"@{tmp_path / 'missing'}")
    with pytest.raises(UsageError, match="non-empty"):
        key_from_spec("")


def test_table_columns_and_evidence_text():
    a = Anonymizer(REF_KEY)
    t = classified([
        dict(src_ip="128.11.68.132", dst_ip="2001:db8::1", proto="wireguard",
             evidence="handshake 128.11.68.132:51820 -> [2001:db8::1]:443 at 12:30:45, v1.2.3"),
        dict(src_ip="128.11.68.132", dst_ip="4.3.88.225"),
    ])
    out = a.table(t)
    assert out.column("src_ip").to_pylist() == ["135.242.180.132"] * 2
    assert out.column("dst_ip").to_pylist() == ["4401:2bc:603f:d91d:27f:ff8e:e6f1:dc1e", "124.60.155.63"]
    assert out.column("evidence").to_pylist()[0] == (
        "handshake 135.242.180.132:51820 -> [4401:2bc:603f:d91d:27f:ff8e:e6f1:dc1e]:443 at 12:30:45, v1.2.3")
    assert out.schema == t.schema
    assert a.column(pa.array(["not an ip"])).to_pylist() == ["invalid"], "non-addresses never pass through"
