"""Flows crossing rotated-file boundaries: split captures must give the unsplit flows.

Every check here splits one capture into pieces (``classifier.batch.split``, a plain
pcap splitter), runs the per-file worker on each piece, stitches, and compares with the
same capture read as one file (``classifier.batch.verify.compare_tables``: exact for
counts, bytes, sizes, timestamps, first packets, flags and labels; means/stds to 1e-9).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from classifier.batch.runner import stitch_results
from classifier.batch.split import record_index, split_pcap
from classifier.batch.verify import compare_tables
from classifier.batch.work import LabelSpec, process_file
from classifier.flows.config import FlowConfig
from classifier.flows.schema import FLOW_COLUMNS
from classifier.pipeline import iter_labeled

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "pcaps"
PUBLIC = ROOT.parent / "shared" / "pcaps" / "public"
NO_SIG = LabelSpec(signatures=False)


def batch_table(pieces: list[Path], config: FlowConfig, spec: LabelSpec) -> pa.Table:
    return stitch_results([process_file(str(p), config, spec) for p in pieces], config, spec)


def whole_table(path: Path, config: FlowConfig, spec: LabelSpec) -> pa.Table:
    return pa.concat_tables(list(iter_labeled([str(path)], spec.options(), config=config)))


def check_split(src: Path, tmp: Path, config: FlowConfig, spec: LabelSpec, columns: list[str] | None = None,
                **how) -> pa.Table:
    shutil.rmtree(tmp, ignore_errors=True)
    pieces = split_pcap(src, tmp, **how)
    got = batch_table(pieces, config, spec)
    want = whole_table(src, config, spec)
    if columns is not None:
        got, want = got.select(columns), want.select(columns)
    problems = compare_tables(got, want, config)
    assert not problems, f"{src.name} split {how}: {problems}"
    return got


# --- a synthetic capture with the awkward cases -------------------------------------------------

def _synthetic(path: Path) -> None:
    from scapy.all import ICMP, IP, TCP, UDP, Dot1Q, Ether, IPv6, Raw, wrpcap

    t0 = 1_700_000_000.0
    pkts = []

    def add(t, pkt):
        pkt.time = t0 + t
        pkts.append(pkt)

    e = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    a, b = "10.0.0.1", "10.0.0.2"
    # TCP with handshake, data both ways (fills payload heads across pieces), FIN both ways,
    # and the final ACK a few ms later.
    add(0.00, e / IP(src=a, dst=b) / TCP(sport=40000, dport=443, flags="S", seq=1))
    add(0.01, e / IP(src=b, dst=a) / TCP(sport=443, dport=40000, flags="SA", seq=9, ack=2))
    add(0.02, e / IP(src=a, dst=b) / TCP(sport=40000, dport=443, flags="A", seq=2, ack=10))
    for i in range(24):
        t = 0.1 + 0.4 * i
        if i % 3 == 2:
            add(t, e / IP(src=b, dst=a) / TCP(sport=443, dport=40000, flags="PA") / Raw(bytes([i]) * (30 + i)))
        else:
            add(t, e / IP(src=a, dst=b) / TCP(sport=40000, dport=443, flags="PA") / Raw(bytes([i]) * (100 + 7 * i)))
    add(10.00, e / IP(src=a, dst=b) / TCP(sport=40000, dport=443, flags="FA"))
    add(10.01, e / IP(src=b, dst=a) / TCP(sport=443, dport=40000, flags="FA"))
    add(10.02, e / IP(src=a, dst=b) / TCP(sport=40000, dport=443, flags="A"))
    # UDP where the responder talks a lot in the middle: a piece may start with it.
    c, d = "10.0.0.3", "10.0.0.4"
    for i in range(3):
        add(0.05 + 0.1 * i, e / IP(src=c, dst=d) / UDP(sport=5000, dport=1194) / Raw(b"\x38" + bytes(40 + i)))
    for i in range(12):
        add(1.0 + 0.3 * i, e / IP(src=d, dst=c) / UDP(sport=1194, dport=5000) / Raw(b"\x48" + bytes(60 + 3 * i)))
    for i in range(5):
        add(5.0 + 0.7 * i, e / IP(src=c, dst=d) / UDP(sport=5000, dport=1194) / Raw(b"\x40" + bytes(20 + i)))
    # UDP with a silence longer than the idle timeout: two flows, never merged.
    add(0.3, e / IP(src="10.0.0.5", dst="10.0.0.6") / UDP(sport=53000, dport=53) / Raw(b"q" * 30))
    add(0.4, e / IP(src="10.0.0.6", dst="10.0.0.5") / UDP(sport=53, dport=53000) / Raw(b"r" * 90))
    add(135.0, e / IP(src="10.0.0.6", dst="10.0.0.5") / UDP(sport=53, dport=53000) / Raw(b"r" * 91))
    add(135.2, e / IP(src="10.0.0.5", dst="10.0.0.6") / UDP(sport=53000, dport=53) / Raw(b"q" * 31))
    # One-way ICMP, IPv6 UDP, a VLAN-tagged flow, and a flow to itself.
    for i in range(8):
        add(0.5 + 1.1 * i, e / IP(src="10.0.0.7", dst="10.0.0.8") / ICMP(id=7, seq=i) / Raw(b"p" * 56))
    for i in range(10):
        src, dst = ("2001:db8::1", "2001:db8::2") if i % 2 == 0 else ("2001:db8::2", "2001:db8::1")
        sp, dp = (6000, 443) if i % 2 == 0 else (443, 6000)
        add(0.6 + 0.9 * i, e / IPv6(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b"\x01" * (80 + i)))
    for i in range(9):
        src, dst = ("192.168.9.1", "192.168.9.2") if i % 3 else ("192.168.9.2", "192.168.9.1")
        add(0.7 + 1.0 * i, e / Dot1Q(vlan=42) / IP(src=src, dst=dst) / UDP(sport=4500, dport=4500)
            / Raw(b"\x00" * (50 + i)))
    for i in range(4):
        add(2.0 + 2.5 * i, e / IP(src="10.0.0.9", dst="10.0.0.9") / UDP(sport=7, dport=7) / Raw(b"s" * 12))
    # Short flows inside one piece.
    for i in range(6):
        add(3.0 + i, e / IP(src="10.1.0.1", dst=f"10.2.0.{i}") / UDP(sport=33000 + i, dport=53) / Raw(b"x" * 20))
    pkts.sort(key=lambda p: float(p.time))
    wrpcap(str(path), pkts)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("syn") / "synthetic.pcap"
    _synthetic(path)
    return path


def test_single_cut_points_give_the_unsplit_flows(synthetic: Path, tmp_path: Path) -> None:
    offs, _, _ = record_index(synthetic)
    config = FlowConfig()
    for i in range(1, len(offs), 3):
        check_split(synthetic, tmp_path / "p", config, NO_SIG, at=[i])


def test_many_pieces_and_every_packet_its_own_file(synthetic: Path, tmp_path: Path) -> None:
    config = FlowConfig()
    n = len(record_index(synthetic)[0])
    rng = np.random.default_rng(3)
    for _ in range(15):
        cuts = sorted(rng.choice(np.arange(1, n), size=int(rng.integers(2, 12)), replace=False).tolist())
        check_split(synthetic, tmp_path / "p", config, NO_SIG, at=cuts)
    got = check_split(synthetic, tmp_path / "p", config, NO_SIG, at=list(range(1, 40)))
    assert got.num_rows > 8


def test_gap_longer_than_idle_stays_two_flows(synthetic: Path, tmp_path: Path) -> None:
    got = check_split(synthetic, tmp_path / "p", FlowConfig(), NO_SIG, seconds=60)
    dns = got.filter(pc.is_in(got.column("src_ip"), value_set=pa.array(["10.0.0.5", "10.0.0.6"])))
    assert dns.num_rows == 2
    assert sorted(dns.column("packets").to_pylist()) == [2, 2]


def test_merged_flow_keeps_initiator_and_statistics(synthetic: Path, tmp_path: Path) -> None:
    # Cut inside the responder's burst: the second piece's meter sees the responder first.
    _offs, ts, _ = record_index(synthetic)
    cut = int(np.searchsorted(ts, 1_700_000_002 * 10**9))
    got = check_split(synthetic, tmp_path / "p", FlowConfig(), NO_SIG, at=[cut])
    udp = got.filter(pc.equal(got.column("dst_port"), 1194)).to_pylist()
    assert len(udp) == 1
    row = udp[0]
    assert (row["src_ip"], row["src_port"], row["packets"]) == ("10.0.0.3", 5000, 20)
    assert (row["src2dst_packets"], row["dst2src_packets"]) == (8, 12)


def test_active_timeout_cuts_at_file_boundaries(synthetic: Path, tmp_path: Path) -> None:
    """Documented difference: a flow that would pass the active timeout inside a later
    file is cut at the file boundary instead, so no flow exceeds the timeout and the
    totals per flow key are unchanged."""
    config = FlowConfig(active_timeout_s=3.0)
    pieces = split_pcap(synthetic, tmp_path / "p", seconds=2)
    got = batch_table(pieces, config, NO_SIG)
    want = whole_table(synthetic, config, NO_SIG)
    assert pc.max(got.column("duration_ms")).as_py() <= 3000.0
    keys = ["src_ip", "dst_ip", "ip_proto"]

    def totals(t: pa.Table) -> dict:
        g = t.group_by(keys).aggregate([("packets", "sum"), ("bytes", "sum")])
        return {tuple(r[k] for k in keys): (r["packets_sum"], r["bytes_sum"]) for r in g.to_pylist()}

    # Direction of a key may flip when a cut makes the responder speak first: compare unordered.
    def unordered(d: dict) -> dict:
        out: dict = {}
        for (s, t, p), v in d.items():
            k = (min(s, t), max(s, t), p)
            out[k] = tuple(a + b for a, b in zip(out.get(k, (0, 0)), v, strict=True))
        return out

    assert unordered(totals(got)) == unordered(totals(want))
    assert (got.column("end_reason").to_numpy(zero_copy_only=False) == "active").sum() >= 3


# --- real captures ------------------------------------------------------------------------------

def _lab_captures() -> list[Path]:
    return sorted(p for p in LAB.glob("*.pcap") if p.stat().st_size > 0)


@pytest.mark.skipif(not _lab_captures(), reason="no lab captures in pcaps/ yet")
def test_lab_captures_split_in_pieces(tmp_path: Path) -> None:
    spec = LabelSpec(signatures=True)
    config = FlowConfig()
    checked = 0
    for src in _lab_captures():
        if len(record_index(src)[0]) < 4:
            continue
        check_split(src, tmp_path / src.stem, config, spec, pieces=4)
        checked += 1
    assert checked


def _monotonic(path: Path) -> bool:
    _, ts, _ = record_index(path)
    return bool(len(ts) > 3 and (np.diff(ts) >= 0).all())


@pytest.mark.skipif(not PUBLIC.is_dir(), reason=f"public capture corpus not found at {PUBLIC}")
def test_public_captures_split_in_pieces(tmp_path: Path) -> None:
    """Flow columns equal on every classic-pcap public capture that can be split faithfully:
    time-ordered records (stitching orders files by time) and no IP fragments (a later
    fragment whose first fragment is in the previous file has no ports to find)."""
    config = FlowConfig()
    checked = 0
    for src in sorted(PUBLIC.rglob("*.pcap")):
        with open(src, "rb") as fh:
            if fh.read(4) not in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"):
                continue
        if src.stat().st_size > 20 << 20 or not _monotonic(src):
            continue
        want = whole_table(src, config, NO_SIG)
        if want.num_rows == 0 or pc.sum(want.column("fragments")).as_py():
            continue
        check_split(src, tmp_path / "p", config, NO_SIG, columns=FLOW_COLUMNS, pieces=5)
        checked += 1
    assert checked >= 5


def _make_capture_module():
    spec = importlib.util.spec_from_file_location("make_capture", ROOT / "bench" / "make_capture.py")
    if spec is None or spec.loader is None:
        return None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not (ROOT / "bench" / "make_capture.py").exists(), reason="bench/make_capture.py absent")
def test_generated_mirror_capture_split_like_tcpdump_rotation(tmp_path: Path) -> None:
    mod = _make_capture_module()
    src = tmp_path / "gen.pcap"
    mod.generate(str(src), 60_000, 800, duration_s=120.0, seed=11)
    spec = LabelSpec(signatures=True)
    got = check_split(src, tmp_path / "p", FlowConfig(), spec, seconds=15)
    assert got.num_rows == 800
