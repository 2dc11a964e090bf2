"""Live mode without a network: ring-block decoding, open-flow snapshots, the sensor loop
fed from a capture file, rotation, alerts and filters.

The end-to-end check against a real interface (a veth pair, tcpreplay) is in
tests/test_live_replay.py and needs root.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import time
from pathlib import Path

import dpkt
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether

from classifier.flows.api import iter_flow_batches
from classifier.flows.config import FlowConfig
from classifier.flows.meter import FlowMeter
from classifier.flows.schema import CLASSIFY_SCHEMA
from classifier.live import bpf
from classifier.live.alerts import ALERT_KEYS, AlertWriter, alert_records
from classifier.live.capture import CaptureOptions, KernelStats
from classifier.live.frames import (
    TP_STATUS_USER,
    TP_STATUS_VLAN_TPID_VALID,
    TP_STATUS_VLAN_VALID,
    FrameBuffer,
    walk_block,
)
from classifier.live.rotate import RotatingParquet
from classifier.live.sensor import LiveOptions, Sensor
from classifier.packets.capture import batch_from_frames
from classifier.pipeline import LabelOptions, label_batch

REPO = Path(__file__).resolve().parents[1]
LAB_PCAPS = REPO / "pcaps"
NS = 1_000_000_000

FLOW_KEYS = ("src_ip", "dst_ip", "src_port", "dst_port", "ip_proto", "vlan_id", "packets", "bytes",
             "src2dst_packets", "dst2src_packets", "src2dst_bytes", "dst2src_bytes", "first_sizes", "first_dirs",
             "end_reason", "is_vpn", "vpn_protocol", "detection", "midflow")


# --- TPACKET_V3 block walking -------------------------------------------------------------

def _ring_block(frames: list[tuple[bytes, int, int, int, int]], size: int = 1 << 16) -> np.ndarray:
    """A TPACKET_V3 block as the kernel lays it out: (frame, ts_ns, status, vlan tci, pkttype) each."""
    block = bytearray(size)
    first = 48
    struct.pack_into("IIIIII", block, 0, 1, 0, TP_STATUS_USER, len(frames), first, 0)
    p = first
    for i, (frame, ts, status, tci, pkttype) in enumerate(frames):
        mac = 48 + 32  # header, sockaddr_ll (aligned), as the kernel places tp_mac
        rec = (mac + len(frame) + 15) & ~15
        nxt = rec if i < len(frames) - 1 else 0
        sec, nsec = divmod(ts, NS)
        struct.pack_into("IIIIIIHHIIHH", block, p, nxt, sec, nsec, len(frame), len(frame) + 7, status, mac, mac,
                         0, tci, 0x88A8 if status & TP_STATUS_VLAN_TPID_VALID else 0, 0)
        block[p + 48 + 10] = pkttype
        block[p + mac:p + mac + len(frame)] = frame
        p += rec
    return np.frombuffer(bytes(block), np.uint8)


def test_ring_block_decodes_like_frames_and_restores_vlan_tags():
    v4 = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1111, dport=51820) / (b"\x01" * 40))
    v6 = bytes(Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(sport=2222, dport=443, flags="S"))
    tagged = bytes(Ether() / Dot1Q(vlan=42) / IP(src="10.0.0.3", dst="10.0.0.4") / UDP(sport=500, dport=500))
    qinq = bytes(Ether(type=0x88A8) / Dot1Q(vlan=7) / IP(src="10.0.0.5", dst="10.0.0.6") / UDP(sport=1, dport=2))
    stripped = tagged[:12] + tagged[16:]  # the kernel moves the tag into tp_vlan_tci
    stripped_q = qinq[:12] + qinq[16:]
    t0 = 1_700_000_000 * NS
    block = _ring_block([
        (v4, t0, TP_STATUS_USER, 0, 0),
        (v6, t0 + 1, TP_STATUS_USER, 0, 0),
        (stripped, t0 + 2, TP_STATUS_USER | TP_STATUS_VLAN_VALID, 42, 0),
        (v4, t0 + 3, TP_STATUS_USER, 0, 4),  # sent by this host: left out on loopback
        (stripped_q, t0 + 4, TP_STATUS_USER | TP_STATUS_VLAN_VALID | TP_STATUS_VLAN_TPID_VALID, 7, 0),
    ])
    fb = FrameBuffer(64, 1 << 16, 1)
    fb.n = int(walk_block(block, 0, len(block), fb.src_off, fb.cap, fb.wire, fb.ts, fb.vlan, 0, True))
    assert fb.n == 4
    fb.gather_from(block, 0, fb.n)
    live = fb.take()
    expect_frames = [v4, v6, tagged, qinq]
    expect = batch_from_frames(expect_frames, np.array([t0, t0 + 1, t0 + 2, t0 + 4]), 1,
                               wire_lens=np.array([len(f) + 7 for f in expect_frames]))
    assert fb.n == 0 and live.n == 4
    for col in ("status", "ip_ver", "ip_proto", "src_lo", "dst_lo", "src_hi", "sport", "dport", "vlan", "ip_len",
                "cap_len", "wire_len", "ts", "tcp_flags", "payload_len"):
        np.testing.assert_array_equal(live.cols[col], expect.cols[col], err_msg=col)
    assert list(live.cols["vlan"]) == [-1, -1, 42, 7]
    off, n = live.cols["data_off"], live.cols["cap_len"]
    assert [bytes(live.buf[o:o + c]) for o, c in zip(off, n, strict=True)] == expect_frames


# --- snapshots of open flows ---------------------------------------------------------------

def _udp_frames(n: int, sport: int, t0: int, step: int = NS // 100) -> tuple[list[bytes], np.ndarray]:
    frames = [bytes(Ether() / IP(src="10.1.0.1", dst="10.1.0.2") / UDP(sport=sport, dport=9999) / (b"x" * (i + 1)))
              for i in range(n)]
    return frames, t0 + step * np.arange(n)


def test_snapshot_reports_open_flows_without_ending_them():
    meter = FlowMeter(FlowConfig())
    frames, ts = _udp_frames(6, 1000, 1_700_000_000 * NS)
    frames2, ts2 = _udp_frames(3, 2000, 1_700_000_000 * NS)
    assert meter.add(batch_from_frames(frames[:4] + frames2, np.concatenate([ts[:4], ts2]), 1)) is None
    snap = meter.snapshot()
    assert meter.open_flows == 2
    rows = {r["src_port"]: r for r in snap.table.to_pylist()}
    assert rows[1000]["packets"] == 4 and rows[2000]["packets"] == 3
    assert set(snap.table.column("end_reason").to_pylist()) == {"eof"}
    assert sorted(snap.heads.count.tolist()) == [3, 4]
    only = meter.snapshot(meter.open_slots()[:1])
    assert len(only) == 1
    meter.add(batch_from_frames(frames[4:], ts[4:], 1))
    done = meter.flush()
    final = {r["src_port"]: r for r in done.table.to_pylist()}
    assert final[1000]["packets"] == 6 and final[2000]["packets"] == 3
    assert final[1000]["flow_id"] == rows[1000]["flow_id"]
    assert meter.open_flows == 0 and len(meter.snapshot()) == 0


# --- the sensor loop fed from a capture file ------------------------------------------------

class FileCapture:
    """Stands in for the interface: frames of a capture file, re-timed to now, a few per read."""

    method = "file"

    def __init__(self, path: Path, per_read: int, on_empty) -> None:
        with open(path, "rb") as fh:
            records = [(ts, bytes(buf)) for ts, buf in dpkt.pcap.Reader(fh)]
        base = int(records[0][0] * NS)
        now = time.time_ns()
        self.frames = [buf for _ts, buf in records]
        self.ts = np.array([now + int(ts * NS) - base for ts, _buf in records], np.int64)
        self.per_read, self.pos, self.on_empty = per_read, 0, on_empty
        self.kernel = KernelStats()

    def read(self, timeout_s: float):
        if self.pos >= len(self.frames):
            self.on_empty()
            return None
        a, b = self.pos, min(self.pos + self.per_read, len(self.frames))
        self.pos = b
        self.kernel.packets += b - a
        return batch_from_frames(self.frames[a:b], self.ts[a:b], 1)

    def drain(self):
        return []

    def stats(self) -> KernelStats:
        return self.kernel

    def close(self) -> None:
        pass


def _offline(path: Path, label: LabelOptions) -> pa.Table:
    tables = [label_batch(b, label) for b in iter_flow_batches([str(path)])]
    return pa.concat_tables(tables)


def _flow_rows(table: pa.Table) -> list[tuple]:
    cols = [table.column(k).to_pylist() for k in FLOW_KEYS]
    return sorted(zip(*cols, strict=True), key=repr)


def _lab_capture(name: str) -> Path:
    path = LAB_PCAPS / name
    if not path.exists():
        pytest.skip(f"{path} not present (lab captures are made by `vpnid lab`)")
    return path


@pytest.mark.parametrize("name", ["wireguard.pcap", "openvpn-tcp.pcap", "ipsec-ikev2.pcap"])
def test_sensor_gives_offline_flows_and_alerts_early_once(tmp_path: Path, name: str):
    path = _lab_capture(name)
    label = LabelOptions(signatures=True)
    alerts = tmp_path / "alerts.jsonl"
    opts = LiveOptions(capture=CaptureOptions("test0"), out_dir=tmp_path / "out", alerts=str(alerts),
                       label=label, tick_s=0.0, stats_s=0, quiet=True)
    holder: dict = {}
    cap = FileCapture(path, per_read=8, on_empty=lambda: holder["sensor"].stop())
    sensor = holder["sensor"] = Sensor(opts, capture=cap)
    totals = sensor.run()

    files = sorted((tmp_path / "out").glob("*.parquet"))
    assert len(files) == 1 and not list((tmp_path / "out").glob(".*"))
    live = pq.read_table(files[0])
    offline = _offline(path, label)
    assert _flow_rows(live) == _flow_rows(offline)
    assert totals.packets == len(cap.frames)

    meta = pq.read_metadata(files[0]).metadata
    assert json.loads(meta[b"vpnid.kernel_drops"]) == 0
    assert json.loads(meta[b"vpnid.kernel_packets"]) == len(cap.frames)
    assert meta[b"vpnid.interface"] == b"test0"

    lines = [json.loads(x) for x in alerts.read_text().splitlines()]
    vpn = offline.filter(offline.column("is_vpn"))
    assert vpn.num_rows >= 1
    assert sorted((a["src_ip"], a["dst_ip"], a["src_port"], a["dst_port"], a["vpn_protocol"]) for a in lines) == \
        sorted(zip(*(vpn.column(k).to_pylist() for k in ("src_ip", "dst_ip", "src_port", "dst_port",
                                                          "vpn_protocol")), strict=True))
    assert len({a["flow_id"] for a in lines}) == len(lines)  # one alert per flow
    for a in lines:
        assert set(ALERT_KEYS) <= set(a) and a["registered"] is None
        # the handshake is in the first packets: the alert comes while the flow runs, long before its end
        assert a["stage"] == "open" and a["packets"] < 64


def test_sensor_registry_marks_alerts(tmp_path: Path):
    path = _lab_capture("wireguard.pcap")
    from classifier.registry import Registry

    reg_file = tmp_path / "reg.csv"
    reg_file.write_text("ip,organization,registration_id,category,valid_from,valid_until\n"
                        "198.18.1.2,Example Bank,PTA-1,bank,,\n")
    offline = _offline(path, LabelOptions())
    src = offline.filter(offline.column("is_vpn")).column("src_ip").to_pylist()
    if src != ["198.18.1.2"]:
        pytest.skip(f"{path} no longer has its WireGuard client at 198.18.1.2")
    label = LabelOptions(registry=Registry.load(reg_file))
    opts = LiveOptions(capture=CaptureOptions("test0"), out_dir=tmp_path / "out", alerts=str(tmp_path / "a.jsonl"),
                       label=label, tick_s=0.0, stats_s=0, quiet=True, early=False)
    holder: dict = {}
    sensor = holder["s"] = Sensor(opts, capture=FileCapture(path, 64, lambda: holder["s"].stop()))
    sensor.run()
    (alert,) = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert alert["stage"] == "ended" and alert["registered"] is True and alert["registration_id"] == "PTA-1"
    table = pq.read_table(next((tmp_path / "out").glob("*.parquet")))
    assert "registered" in table.column_names and table.column("registered").to_pylist() == [True]


# --- rotation, alerts, durations, filters ----------------------------------------------------

def _table(n: int) -> pa.Table:
    frames, ts = _udp_frames(n, 3000, 1_700_000_000 * NS)
    meter = FlowMeter()
    meter.add(batch_from_frames(frames, ts, 1))
    return label_batch(meter.flush(), LabelOptions(signatures=False))


def test_rotating_parquet_names_periods_and_adds_closing_metadata(tmp_path: Path):
    drops = iter([3, 5])
    sink = RotatingParquet(tmp_path, CLASSIFY_SCHEMA, 60, {"interface": "eth9"},
                           lambda: {"kernel_drops": next(drops)})
    t0 = 1_700_000_010 * NS  # 2023-11-14T22:13:30Z: the period starts at 22:13:00
    sink.write(_table(2), t0)
    assert not list(tmp_path.glob("*.parquet"))  # nothing visible until closed
    assert sink.due(t0 + 30 * NS) and not sink.due(t0 + 29 * NS)
    sink.write(_table(2), t0 + 50 * NS)  # rotates first
    first = tmp_path / "flows-20231114T221300Z.parquet"
    assert first.exists()
    sink.close(t0 + 70 * NS)
    second = tmp_path / "flows-20231114T221400Z.parquet"
    assert sorted(tmp_path.iterdir()) == [first, second]
    m1, m2 = pq.read_metadata(first).metadata, pq.read_metadata(second).metadata
    assert (m1[b"vpnid.kernel_drops"], m2[b"vpnid.kernel_drops"]) == (b"3", b"5")
    assert m1[b"vpnid.interface"] == b"eth9" and m1[b"vpnid.flows"] == b"1"
    assert pq.read_table(first).schema.remove_metadata() == CLASSIFY_SCHEMA.remove_metadata()
    again = RotatingParquet(tmp_path, CLASSIFY_SCHEMA, 60, {}, dict)
    again.write(_table(1), t0)
    again.close(t0)
    assert (tmp_path / "flows-20231114T221300Z-1.parquet").exists()  # never overwrites


def test_rotating_parquet_abort_leaves_nothing(tmp_path: Path):
    sink = RotatingParquet(tmp_path, CLASSIFY_SCHEMA, 60, {}, dict)
    sink.write(_table(2), 1_700_000_000 * NS)
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_alert_lines_have_the_contract_keys():
    table = _table(3)
    out = io.StringIO()
    writer = AlertWriter(None)
    writer._fh = out  # standard output, captured
    writer.write(alert_records(table, np.array([0]), 1_700_000_000 * NS, "eth0", "ended"))
    (line,) = out.getvalue().splitlines()
    rec = json.loads(line)
    for key in ("time", "src_ip", "dst_ip", "src_port", "dst_port", "vpn_protocol", "confidence", "evidence",
                "registered"):
        assert key in rec
    assert rec["time"] == "2023-11-14T22:13:20.000000Z" and rec["src_port"] == 3000 and rec["registered"] is None


def test_parse_duration():
    import argparse

    from classifier.cli.live import parse_duration

    assert parse_duration("5m") == 300 and parse_duration("90") == 90 and parse_duration("1h") == 3600
    assert parse_duration("2.5s") == 2.5
    for bad in ("0", "-1m", "5x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)


def test_bpf_programs_keep_the_snap_length():
    from classifier.errors import UsageError

    try:
        prog = bpf.compile_bpf("udp port 51820", 1, 200)
    except UsageError as exc:
        if "neither was found" in str(exc):
            pytest.skip("no filter compiler here (libpcap for scapy, or tcpdump)")
        raise
    rets = [k for c, _jt, _jf, k in prog if c == bpf.BPF_RET_K]
    assert set(rets) == {0, 200} and len(prog) > 4
    if shutil.which("tcpdump"):
        assert bpf.with_snaplen(bpf._compile_tcpdump("udp port 51820", 1), 200) == prog
    with pytest.raises(Exception, match="--bpf"):
        bpf.compile_bpf("udp port nonsense-port-name", 1, 200)


def test_cli_refuses_a_missing_interface(tmp_path: Path, capsys):
    from classifier.cli.main import main

    assert main(["live", "--interface", "no-such-if0", "-o", str(tmp_path / "o"), "--no-model", "-q"]) == 2
    assert "no-such-if0" in capsys.readouterr().err


def test_sensor_keeps_what_it_captured_when_the_interface_goes_away(tmp_path: Path):
    from classifier.live.capture import CaptureError

    path = _lab_capture("wireguard.pcap")

    class Vanishing(FileCapture):
        def read(self, timeout_s: float):
            if self.pos >= 100:
                raise CaptureError("--interface test0: capture stopped: Network is down")
            return super().read(timeout_s)

    log = io.StringIO()
    opts = LiveOptions(capture=CaptureOptions("test0"), out_dir=tmp_path / "out", alerts=str(tmp_path / "a.jsonl"),
                       label=LabelOptions(), tick_s=3600, stats_s=0, quiet=True)
    cap = Vanishing(path, 50, lambda: None)
    totals = Sensor(opts, log=log, capture=cap).run()
    assert totals.error and "Network is down" in log.getvalue() and totals.packets == 100
    meter = FlowMeter()
    meter.add(batch_from_frames(cap.frames[:100], cap.ts[:100], 1))
    expect = meter.flush().table
    table = pq.read_table(next((tmp_path / "out").glob("*.parquet")))
    assert table.column("packets").to_pylist() == expect.column("packets").to_pylist()
    assert table.column("end_reason").to_pylist() == ["eof"] and expect.num_rows == 1


@pytest.mark.parametrize(("snaplen", "model", "warned"), [
    (64, "default", True), (113, "default", True), (114, "default", False), (262144, "default", False),
    (64, "headers-only", False), (64, None, False),
])
def test_a_short_snaplen_with_a_whole_frame_model_is_warned_about(capsys, snaplen, model, warned):
    """Live frames do not pass the file reader's count of cut payloads: the sensor judges --snaplen itself."""
    from classifier.cli.live import _warn_short_snaplen
    from classifier.errors import ErrorLog
    from classifier.model import load_model

    _warn_short_snaplen(snaplen, load_model(model) if model else None, ErrorLog())
    err = capsys.readouterr().err
    assert (f"--snaplen {snaplen}" in err and "--model headers-only" in err) == warned
