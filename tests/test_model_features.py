"""Feature matrix: a pure, vectorized function of flow-table columns, blind to identifiers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from classifier.flows.schema import FLOW_SCHEMA
from classifier.model.features import (
    FEATURE_DOCS,
    FEATURE_NAMES,
    FORBIDDEN_COLUMNS,
    INPUT_COLUMNS,
    TIMING_NAMES,
    feature_matrix,
)
from classifier.model.synthetic import flow_row, synthetic_flows


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return synthetic_flows(18, seed=3)


def test_shape_names_and_docs(table):
    X = feature_matrix(table)
    assert X.shape == (table.num_rows, len(FEATURE_NAMES))
    assert X.dtype == np.float32
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert set(FEATURE_DOCS) == set(FEATURE_NAMES)
    assert not np.isinf(X).any()


def test_never_reads_identifiers():
    assert not FORBIDDEN_COLUMNS & set(INPUT_COLUMNS)
    for name in FEATURE_NAMES:
        for bad in ("port", "ip_", "_ip", "ttl", "seen", "capture", "vlan", "flow_id"):
            assert bad not in name, name


def test_identifiers_do_not_change_features(table):
    """Rewriting addresses, ports, timestamps, ids and capture names leaves every feature unchanged."""
    n = table.num_rows
    rng = np.random.default_rng(7)
    changed = table
    repl = {
        "src_ip": pa.array([f"203.0.113.{i % 250}" for i in range(n)], pa.string()),
        "dst_ip": pa.array([f"2001:db8::{i:x}" for i in range(n)], pa.string()),
        "src_port": pa.array(rng.integers(1, 65535, n), pa.uint16()),
        "dst_port": pa.array(rng.integers(1, 65535, n), pa.uint16()),
        "capture": pa.array(["elsewhere.pcap"] * n, pa.string()),
        "flow_id": pa.array(np.arange(n)[::-1], pa.uint64()),
        "first_seen": pc.add(table.column("first_seen"), pa.scalar(86_400_000_000_000, pa.duration("ns"))),
        "last_seen": pc.add(table.column("last_seen"), pa.scalar(86_400_000_000_000, pa.duration("ns"))),
        "end_reason": pa.array(["fin"] * n, pa.string()),
    }
    for name, arr in repl.items():
        changed = changed.set_column(changed.schema.get_field_index(name), name, arr)
    np.testing.assert_array_equal(feature_matrix(table), feature_matrix(changed))


def _as_ipv6(src, dst) -> None:
    """Rewrite every unfragmented IPv4 TCP/UDP packet of ``src`` as IPv6 (2001:db8::/96 + the
    IPv4 address, same hop limit and transport bytes) into ``dst``: each packet 20 bytes longer."""
    import dpkt

    with open(src, "rb") as fh, open(dst, "wb") as out:
        reader = dpkt.pcap.Reader(fh)
        writer = dpkt.pcap.Writer(out, linktype=reader.datalink(), snaplen=65535)
        for ts, buf in reader:
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if isinstance(ip, dpkt.ip.IP) and ip.p in (6, 17) and not (ip.mf or ip.offset):
                l4 = bytes(ip.data)
                ip6 = dpkt.ip6.IP6(src=b"\x20\x01\x0d\xb8" + bytes(8) + ip.src, dst=b"\x20\x01\x0d\xb8" + bytes(8) + ip.dst,
                                   nxt=ip.p, hlim=ip.ttl, plen=len(l4))
                ip6.data = l4
                eth.type, eth.data = dpkt.ethernet.ETH_TYPE_IP6, ip6
                buf = bytes(eth)
            writer.writepkt(buf, ts)


@pytest.mark.parametrize("sample", ["wireguard.pcap", "openvpn-tcp.pcap", "openvpn-udp-tls-crypt.pcap",
                                    "shadowsocks.pcap", "https.pcap", "quic.pcap"])
def test_a_flow_over_ipv6_has_the_features_it_has_over_ipv4(sample, tmp_path):
    """Sizes are IP bytes and IPv6's header is 20 bytes longer: the features count them as over IPv4."""
    from pathlib import Path

    from classifier.flows.api import read_flows

    src = Path(__file__).resolve().parents[1] / "pcaps" / sample
    v6 = tmp_path / sample
    _as_ipv6(src, v6)
    a, b = read_flows(src), read_flows(v6)
    rewritten = np.isin(a.column("ip_proto").to_numpy(), (6, 17))
    assert a.num_rows == b.num_rows and rewritten.any()
    assert (b.column("ip_version").to_numpy() == np.where(rewritten, 6, 4)).all()  # same flow order
    grew = b.column("bytes").to_numpy().astype(int) - a.column("bytes").to_numpy().astype(int)
    assert (grew == np.where(rewritten, 20 * a.column("packets").to_numpy().astype(int), 0)).all()
    order_a = np.argsort(a.column("first_seen").to_numpy())
    order_b = np.argsort(b.column("first_seen").to_numpy())
    np.testing.assert_array_equal(feature_matrix(a)[order_a], feature_matrix(b)[order_b])


def _timing_columns(table: pa.Table) -> list[str]:
    names = [c for c in table.column_names if "iat" in c or c == "duration_ms"]
    assert "first_iats_ms" in names and "src2dst_iat_mean_ms" in names
    return names


def _map_timing(table: pa.Table, fn) -> pa.Table:
    """The table with ``fn`` applied to every gap (and the duration), list columns included."""
    out = table
    for name in _timing_columns(table):
        col = table.column(name).combine_chunks()
        if pa.types.is_list(col.type):
            flat = pc.list_flatten(col).to_numpy(zero_copy_only=False)
            arr = pa.ListArray.from_arrays(col.offsets, pa.array(fn(flat), col.type.value_type))
        else:
            arr = pa.array(fn(col.to_numpy(zero_copy_only=False)), col.type)
        out = out.set_column(out.schema.get_field_index(name), name, arr)
    return out


def test_timing_features_are_scale_free(table):
    """A path ten times slower stretches every gap alike: the features read only ratios of gaps."""
    X = feature_matrix(table)
    slow = feature_matrix(_map_timing(table, lambda v: v * 10.0))
    np.testing.assert_allclose(slow, X, rtol=1e-5, equal_nan=True)
    timing = [FEATURE_NAMES.index(n) for n in TIMING_NAMES]
    assert np.isfinite(X[:, timing]).any(axis=0).all()  # every timing feature has values to compare


def test_only_timing_features_read_gaps(table):
    """Scrambling every gap changes the relative-timing features and nothing else."""
    rng = np.random.default_rng(3)
    X = feature_matrix(table)
    Y = feature_matrix(_map_timing(table, lambda v: rng.uniform(0, 5000, len(v))))
    timing = np.isin(FEATURE_NAMES, TIMING_NAMES)
    np.testing.assert_array_equal(Y[:, ~timing], X[:, ~timing])
    assert not np.allclose(Y[:, timing], X[:, timing], equal_nan=True)


def test_rows_are_independent(table):
    """A flow's features do not depend on which other flows share its batch (offline == live)."""
    X = feature_matrix(table)
    for i in (0, 5, table.num_rows - 1):
        np.testing.assert_array_equal(feature_matrix(table.slice(i, 1))[0], X[i])
    order = np.random.default_rng(1).permutation(table.num_rows)
    np.testing.assert_array_equal(feature_matrix(table.take(pa.array(order))), X[order])


def test_values_follow_definitions():
    sizes = np.array([176, 120, 200, 1400, 200, 1400])
    dirs = np.array([0, 1, 0, 1, 0, 1])
    iats = np.array([0.0, 40.0, 1.0, 2.0, 3.0, 4.0])
    row = flow_row(sizes, dirs, iats, np.zeros(6), 17)
    X = feature_matrix(pa.Table.from_pylist([row], schema=FLOW_SCHEMA))[0]
    f = dict(zip(FEATURE_NAMES, X, strict=True))
    assert f["is_udp"] == 1 and f["is_tcp"] == 0
    assert f["up_byte_frac"] == pytest.approx((176 + 200 + 200) / sizes.sum())
    assert f["up_pkt_frac"] == pytest.approx(0.5)
    assert f["first_size_0"] == 176 and f["first_size_1"] == -120
    assert f["first_dir_switches"] == 5
    assert f["first_distinct_size_frac"] == pytest.approx(4 / 6)
    assert f["first_up_max"] == 200 and f["first_down_max"] == 1400
    assert f["first_up_min"] == 176 and f["first_down_min"] == 120
    assert f["hdr_per_pkt"] == pytest.approx(28.0)
    assert np.isnan(f["first_size_6"])
    assert f["starts_with_syn"] == 0
    # packets at 0, 40, 41, 43, 46, 50 ms: the initiator's gaps 41 and 5, the responder's 3 and 7
    assert f["up_iat_cv"] == pytest.approx(18 / 23) and f["down_iat_cv"] == pytest.approx(2 / 5)
    assert f["up_iat_max_over_mean"] == pytest.approx(41 / 23) and f["down_iat_max_over_mean"] == pytest.approx(7 / 5)
    assert f["iat_mean_log_ratio"] == pytest.approx(np.log(23 / 5))
    # the first gaps 40, 1, 2, 3, 4 against their median 3
    assert [f[f"first_gap_{i}_rel"] for i in range(1, 6)] == pytest.approx([40 / 3, 1 / 3, 2 / 3, 1, 4 / 3])
    assert np.isnan(f["first_gap_6_rel"])


def test_one_packet_and_empty_tables():
    row = flow_row(np.array([60]), np.array([0]), np.array([0.0]), np.array([0x02]), 6)
    X = feature_matrix(pa.Table.from_pylist([row], schema=FLOW_SCHEMA))
    f = dict(zip(FEATURE_NAMES, X[0], strict=True))
    assert np.isnan(f["first_size_1"]) and np.isnan(f["down_size_mean"])
    assert f["starts_with_syn"] == 1 and f["syn_frac"] == 1
    assert feature_matrix(FLOW_SCHEMA.empty_table()).shape == (0, len(FEATURE_NAMES))


def test_chunked_columns_give_same_matrix(table):
    half = table.num_rows // 2
    chunked = pa.concat_tables([table.slice(0, half), table.slice(half)])
    assert chunked.column("first_sizes").num_chunks == 2
    np.testing.assert_array_equal(feature_matrix(chunked), feature_matrix(table))


def test_missing_column_is_a_clear_error(table):
    with pytest.raises(ValueError, match="first_sizes"):
        feature_matrix(table.drop_columns(["first_sizes"]))


def _download(tunnel: bool, server_first: bool = False) -> dict[str, float]:
    """A TCP download of 40 full segments: the client ACKs every second one.

    Plain TCP acknowledges with pure ACKs (no payload); through a TCP tunnel the inner ACKs
    travel encrypted, as small packets of one size *with* payload.
    """
    seg = np.full(40, 1500)
    ack = 52 + (93 if tunnel else 0)
    sizes, dirs = [52, 52, 52, 300], [0, 1, 0, 0]  # 52: IP + TCP header with options
    for i, s in enumerate(seg):
        sizes.append(int(s))
        dirs.append(1)
        if i % 2:
            sizes.append(ack)
            dirs.append(0)
    sizes_a, dirs_a = np.array(sizes), np.array(dirs)
    if server_first:  # the same packets, metered with the other side as initiator
        dirs_a = 1 - dirs_a
    flags = np.full(len(sizes_a), 0x10)
    flags[0] = 0x02
    row = flow_row(sizes_a, dirs_a, np.full(len(sizes_a), 1.0), flags, 6)
    X = feature_matrix(pa.Table.from_pylist([row], schema=FLOW_SCHEMA))[0]
    return dict(zip(FEATURE_NAMES, X, strict=True))


def test_payload_rhythm_separates_inner_acks_from_pure_acks():
    plain, tunnel = _download(False), _download(True)
    # the client's pure ACKs carry no payload; only its request does
    assert plain["up_payload_pkt_frac"] == pytest.approx(1 / 23)
    assert tunnel["up_payload_pkt_frac"] == pytest.approx(21 / 23)
    assert plain["payload_pkt_balance"] == pytest.approx(1 / 40)
    assert tunnel["payload_pkt_balance"] == pytest.approx(21 / 40)
    # 93 bytes of payload: bin 64-95; the request (248 bytes of payload) is the other one
    assert tunnel["light_hist_2"] == pytest.approx(20 / 21)
    assert tunnel["light_small_frac"] == pytest.approx(20 / 21)
    assert tunnel["light_small_per_heavy"] == pytest.approx(20 / 40)
    assert plain["light_small_frac"] == 0 and plain["light_small_per_heavy"] == 0
    assert tunnel["heavy_large_frac"] == 1 and tunnel["heavy_hist_11"] == 1
    assert tunnel["heavy_hist_top"] == 1 and tunnel["heavy_hist_entropy"] == pytest.approx(0.0)
    assert 0 < tunnel["light_hist_entropy"] < 1
    assert sum(tunnel[f"light_hist_{i}"] for i in range(12)) == pytest.approx(1.0)


def test_light_and_heavy_do_not_depend_on_who_initiated():
    a, b = _download(True), _download(True, server_first=True)
    for name in FEATURE_NAMES:
        if name.startswith(("light_", "heavy_", "payload_pkt_balance", "hist_overlap")):
            assert a[name] == pytest.approx(b[name], nan_ok=True), name
    assert a["up_payload_pkt_frac"] == pytest.approx(b["down_payload_pkt_frac"])


def test_flow_without_payload_has_nan_histogram_shares():
    row = flow_row(np.array([52, 52, 52]), np.array([0, 1, 0]), np.array([0.0, 1.0, 1.0]),
                   np.array([0x02, 0x12, 0x10]), 6)
    f = dict(zip(FEATURE_NAMES, feature_matrix(pa.Table.from_pylist([row], schema=FLOW_SCHEMA))[0], strict=True))
    assert f["up_payload_pkt_frac"] == 0 and np.isnan(f["payload_pkt_balance"])
    assert np.isnan(f["light_hist_0"]) and np.isnan(f["heavy_hist_entropy"]) and np.isnan(f["light_small_frac"])
