"""Host-capture copies: TCP segments merged as segmentation and receive offloads show them.

The transform (``classifier/model/coalesce.py``) works on decoded columns; a reference
written here the slow way, a packet at a time over dpkt, writes the merged frames (all their
bytes) into a new capture, and the flows of the two must be the same.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import dpkt
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from classifier.errors import ErrorLog
from classifier.model.coalesce import DEFAULT_GAP_NS, MAX_MERGED, coalesce_segments
from classifier.model.data import Augmentation, _count_packets, _PacketTransform, meter_capture
from classifier.model.features import feature_matrix
from classifier.packets.batch import COLUMNS, PacketStatus

PCAPS = Path(__file__).resolve().parents[1] / "pcaps"
_NO_MERGE = dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN | dpkt.tcp.TH_RST | dpkt.tcp.TH_URG


def reference_coalesce(src: Path, dst: Path, gap_ns: int) -> None:
    """Merge TCP data segments the way GRO does, one packet at a time, into a new classic pcap.

    Records are read and written with their exact microsecond stamps (a float of seconds
    since 1970 is only good to a quarter of a microsecond).
    """
    data = src.read_bytes()
    assert data[:4] == b"\xd4\xc3\xb2\xa1"  # little-endian, microseconds: what the lab writes
    frames: list[list] = []  # [(sec, usec), eth, ip, tcp, payload parts or the frame]
    open_run: dict[tuple, tuple[int, int, int]] = {}  # direction -> (frame index, next seq, last ns)
    off = 24
    while off < len(data):
        sec, usec, cap, _wire = struct.unpack_from("<IIII", data, off)
        buf = data[off + 16:off + 16 + cap]
        off += 16 + cap
        eth = dpkt.ethernet.Ethernet(buf)
        ip, ns = eth.data, (sec * 1_000_000 + usec) * 1000
        tcp = ip.data if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.tcp.TCP) else None
        if tcp is None or not tcp.data or tcp.flags & _NO_MERGE or ip.mf or ip.offset:
            frames.append([(sec, usec), eth, None, None, [buf]])
            continue
        key = (ip.src, ip.dst, tcp.sport, tcp.dport)
        run = open_run.get(key)
        if run is not None and tcp.seq == run[1] and ns - run[2] <= gap_ns:
            head = frames[run[0]]
            head[4].append(bytes(tcp.data))
            head[3].flags |= tcp.flags
        else:
            frames.append([(sec, usec), eth, ip, tcp, [bytes(tcp.data)]])
            run = (len(frames) - 1, 0, 0)
        open_run[key] = (run[0], (tcp.seq + len(tcp.data)) % (1 << 32), ns)
        if tcp.flags & dpkt.tcp.TH_PUSH:
            del open_run[key]
    out = [data[:16] + struct.pack("<I", 262144) + data[20:24]]
    for (sec, usec), eth, ip, tcp, parts in frames:
        if ip is not None:
            tcp.data = b"".join(parts)
            ip.data, ip.sum = tcp, 0
            ip.len = ip.hl * 4 + len(bytes(tcp))
            eth.data = ip
            parts = [bytes(eth)]
        out.append(struct.pack("<IIII", sec, usec, len(parts[0]), len(parts[0])) + parts[0])
    dst.write_bytes(b"".join(out))


def _copy(cap: Path, log: ErrorLog, gap_ns: int = DEFAULT_GAP_NS) -> pa.Table:
    aug = Augmentation(loss=0.0, jitter=0.0, slowdown=1.0, start=0.0, stop=1.0, coalesce_ns=gap_ns)
    return meter_capture(str(cap), log, _PacketTransform(aug, _count_packets(str(cap), log), np.random.default_rng(0)))


@pytest.mark.parametrize("name", ["openvpn-tcp443.pcap", "shadowsocks.pcap", "https.pcap", "http.pcap"])
@pytest.mark.parametrize("gap_ns", [DEFAULT_GAP_NS, 5_000_000])
def test_a_coalesced_copy_is_the_capture_with_its_segments_really_merged(tmp_path, name, gap_ns):
    """Same flows and features as a capture whose merged frames hold every byte of their segments."""
    cap = PCAPS / name
    merged = tmp_path / name
    reference_coalesce(cap, merged, gap_ns)
    log = ErrorLog()
    copy, real = _copy(cap, log, gap_ns), meter_capture(str(merged), log)
    assert not log.problems
    assert copy.drop(["capture"]).equals(real.drop(["capture"]))
    np.testing.assert_array_equal(feature_matrix(copy), feature_matrix(real))
    full = meter_capture(str(cap), log)
    for col in ("src2dst_payload_bytes", "dst2src_payload_bytes", "src2dst_bytes", "dst2src_bytes"):
        fewer_headers = full.column(col).to_numpy() - copy.column(col).to_numpy()
        assert (fewer_headers >= 0).all()  # payload is kept, only headers of merged segments go
        if "payload" in col:
            assert (fewer_headers == 0).all()
    if gap_ns > DEFAULT_GAP_NS:  # the samples' downloads cross a plain link in microseconds
        assert pa.compute.sum(copy.column("packets")).as_py() < pa.compute.sum(full.column("packets")).as_py()
    assert f"coalesced={gap_ns / 1e3:g}us" in Augmentation(0, 0, 1, 0, 1, coalesce_ns=gap_ns).describe()
    assert "coalesced" not in Augmentation(0, 0, 1, 0, 1).describe()


def _segments(n: int, payload: int = 1448, gap: int = 10_000, **over) -> dict[str, np.ndarray]:
    """Decoded columns of ``n`` in-sequence data segments of one direction of one connection."""
    cols = {name: np.zeros(n, dtype=dtype) for name, dtype in COLUMNS}
    cols["ts"] = np.arange(n, dtype=np.int64) * gap
    cols["ip_proto"][:] = 6
    cols["status"][:] = PacketStatus.OK
    cols["src_lo"][:], cols["dst_lo"][:] = 1, 2
    cols["sport"][:], cols["dport"][:] = 40000, 443
    cols["tcp_flags"][:] = 0x10
    cols["payload_len"][:] = payload
    cols["ip_len"][:] = payload + 52
    cols["wire_len"][:] = payload + 66
    cols["tcp_seq"][:] = (1000 + np.arange(n) * payload) % (1 << 32)
    for name, values in over.items():
        cols[name][:] = values
    return cols


def test_a_burst_merges_up_to_64_kb_and_keeps_every_payload_byte():
    cols = _segments(100)
    rows = coalesce_segments(cols)
    merged = cols["ip_len"][rows]
    assert len(rows) == 3 and (merged <= MAX_MERGED).all()
    assert cols["payload_len"][rows].sum() == 100 * 1448
    assert (cols["wire_len"][rows] - cols["ip_len"][rows] == 14).all()
    assert list(rows) == sorted(rows) and rows[0] == 0


@pytest.mark.parametrize(("what", "over", "runs"), [
    ("a PSH segment ends its run", {"tcp_flags": [0x10, 0x18, 0x10, 0x18, 0x10, 0x10]}, 3),
    ("a gap over the window starts a new run", {"ts": [0, 10, 20, 500_000, 500_010, 500_020]}, 2),
    ("a segment out of sequence starts a new run", {"tcp_seq": [0, 100, 200, 900, 1000, 1100]}, 2),
    ("SYN, FIN and RST are never merged", {"tcp_flags": [0x10, 0x10, 0x11, 0x10, 0x14, 0x10]}, 5),
    ("other connections' packets stay apart", {"sport": [1, 2, 1, 2, 1, 2], "tcp_seq": [0, 0, 100, 100, 200, 200]}, 2),
    ("a pure ACK between segments is kept and breaks nothing",
     {"payload_len": [100, 100, 0, 100, 100, 100], "tcp_seq": [0, 100, 200, 200, 300, 400]}, 2),
])
def test_what_ends_a_run(what, over, runs):
    cols = _segments(6, payload=100, **over)
    before = cols["payload_len"].sum()
    rows = coalesce_segments(cols)
    assert len(rows) == runs, what
    assert cols["payload_len"][rows].sum() == before


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1500), st.integers(0, 200_000),
                          st.sampled_from([0x10, 0x18, 0x11, 0x12])), min_size=1, max_size=200))
def test_merging_keeps_bytes_order_and_the_64_kb_limit(packets):
    """Any mix of connections, sizes, gaps and flags: payload bytes per direction kept, capture order kept."""
    n = len(packets)
    conn = np.array([p[0] for p in packets])
    plen = np.array([p[1] for p in packets])
    cols = _segments(n, payload=0)
    cols["sport"][:] = 40000 + conn
    cols["payload_len"][:] = plen
    cols["ip_len"][:] = plen + 52
    cols["wire_len"][:] = plen + 66
    cols["ts"][:] = np.cumsum([p[2] for p in packets])
    cols["tcp_flags"][:] = [p[3] for p in packets]
    seq = np.zeros(n, dtype=np.int64)
    for c in range(3):  # each connection's segments in sequence
        k = conn == c
        seq[k] = np.cumsum(plen[k]) - plen[k]
    cols["tcp_seq"][:] = seq
    rows = coalesce_segments(cols)
    assert (np.diff(rows) > 0).all()
    assert (cols["ip_len"][rows] <= MAX_MERGED).all()
    for c in range(3):
        assert cols["payload_len"][rows][conn[rows] == c].sum() == plen[conn == c].sum()


def test_evaluate_reads_captures_as_a_hosts_and_refuses_flow_tables(tmp_path, capsys):
    """``vpnid evaluate --host-capture``: the same flows, fewer packets; a flow table cannot be re-read so."""
    import pyarrow.parquet as pq

    from classifier.cli.main import main
    from classifier.errors import UsageError
    from classifier.model.data import load_labeled

    caps = [str(PCAPS / n) for n in ("shadowsocks.pcap", "https.pcap", "wireguard.pcap")]
    wire = load_labeled(caps, log=ErrorLog(quiet=True))
    host = load_labeled(caps, log=ErrorLog(quiet=True), coalesce_ns=DEFAULT_GAP_NS)
    assert host.label.tolist() == wire.label.tolist()
    packets = [pa.compute.sum(d.table.column("packets")).as_py() for d in (wire, host)]
    assert packets[1] < packets[0]
    assert all(i["coalesce_ns"] == DEFAULT_GAP_NS for i in host.inputs)
    table = tmp_path / "flows.parquet"
    pq.write_table(wire.table, table)
    with pytest.raises(UsageError, match="host's capture"):
        load_labeled([str(table)], coalesce_ns=DEFAULT_GAP_NS)
    out = tmp_path / "ev"
    assert main(["evaluate", "default", *caps, "--host-capture", "--no-cv", "--no-lopo", "-q", "-o", str(out)]) == 0
    assert (out / "metrics.json").is_file() and "recall" in capsys.readouterr().out


def test_training_for_host_captures_merges_every_capture_and_says_so_in_the_card(tmp_path):
    """``vpnid train --host-capture``: every capture read as a host's, recorded in the card."""
    from classifier.cli.main import main

    caps = [str(PCAPS / n) for n in ("openvpn-tcp443.pcap", "shadowsocks.pcap", "https.pcap", "http.pcap",
                                     "ssh.pcap", "wireguard.pcap")]
    out = tmp_path / "host.skops"
    assert main(["train", *caps, "--host-capture", "--candidates", "hgb", "--folds", "2", "-q", "-o", str(out)]) == 0
    card = json.loads((tmp_path / "host.card.json").read_text())
    assert "merged into super-packets" in card["training_data"]["host_capture"]
    assert all(i["coalesce_ns"] == DEFAULT_GAP_NS for i in card["training_data"]["inputs"])
    assert "- host capture: every capture" in (tmp_path / "host.card.md").read_text()
