"""``vpnid live`` on a real interface gives the flows ``vpnid classify`` finds in the file.

A veth pair joins two network namespaces; ``vpnid live`` captures on one end while
``tcpreplay`` sends a capture into the other; SIGINT or SIGTERM stops it, and the flows
it wrote (endpoints, ports, packet and byte counts per direction, first packet sizes,
verdicts, registry matches) must equal the offline ones, with one alert per VPN flow.

Why these captures: replay changes packet timing (``--pps`` sends at a fixed rate), so
a capture whose flows depend on gaps longer than a timeout (a flow the idle timeout
splits offline) would merge on replay. Every capture here is checked to give the same
flows with and without timeouts; the short lab captures are replayed at their own
pace so timing features and end reasons agree too, the public ones at a fixed rate
(there an end reason may differ: ``idle`` offline, still open at the end of the replay,
and model verdicts, which read timing, are not compared; signature verdicts always are).

Needs root, ``ip`` and ``tcpreplay`` (``make lab-deps``); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from classifier.flows.api import iter_flow_batches
from classifier.flows.config import FlowConfig
from classifier.pipeline import LabelOptions, label_batch

REPO = Path(__file__).resolve().parents[1]
PUBLIC = REPO.parent / "shared" / "pcaps" / "public"
REGISTRY = REPO / "pcaps" / "registered-sample.csv"

pytestmark = pytest.mark.lab

FLOW_KEYS = ("src_ip", "dst_ip", "src_port", "dst_port", "ip_proto", "vlan_id", "packets", "bytes",
             "src2dst_packets", "dst2src_packets", "src2dst_bytes", "dst2src_bytes", "src2dst_payload_bytes",
             "dst2src_payload_bytes", "tcp_syn", "tcp_fin", "tcp_rst", "first_sizes", "first_dirs", "end_reason")
LABEL_KEYS = ("is_vpn", "vpn_protocol", "detection", "midflow", "tunnel", "registered", "registration_id")
VPN_KEYS = ("src_ip", "dst_ip", "src_port", "dst_port", "vpn_protocol")

#: (capture, tcpreplay rate: None = the capture's own timing, else packets per second, stop signal)
CASES = [
    (REPO / "pcaps" / "wireguard.pcap", None, signal.SIGINT),
    (REPO / "pcaps" / "openvpn-tcp.pcap", None, signal.SIGTERM),
    (REPO / "pcaps" / "ipsec-ikev2.pcap", None, signal.SIGINT),
    (REPO / "pcaps" / "openvpn-udp.pcap", 1000, signal.SIGTERM),
    (PUBLIC / "ntop_nDPI" / "openvpn.pcap", 1000, signal.SIGINT),
    (PUBLIC / "arkime_arkime" / "IKEv2.pcap", 1000, signal.SIGTERM),
]


def _need_root_tools() -> None:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("live capture tests need root on Linux (network namespaces, veth, AF_PACKET)")
    for tool in ("ip", "tcpreplay"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (make lab-deps installs it)")


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def veth():
    """(capture namespace, its interface, sending namespace, its interface); removed afterwards."""
    _need_root_tools()
    tag = f"{os.getpid() % 100000}"
    ns_cap, ns_tx = f"vpnid-live-{tag}-cap", f"vpnid-live-{tag}-tx"
    if_cap, if_tx = f"vlc{tag}", f"vlt{tag}"
    try:
        _sh("ip", "netns", "add", ns_cap)
        _sh("ip", "netns", "add", ns_tx)
        _sh("ip", "link", "add", if_cap, "netns", ns_cap, "type", "veth", "peer", "name", if_tx, "netns", ns_tx)
        for ns, ifname in ((ns_cap, if_cap), (ns_tx, if_tx)):
            # no IPv6 autoconfiguration chatter: only replayed frames cross the link
            _sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1")
            _sh("ip", "-n", ns, "link", "set", ifname, "mtu", "65535", "up")
    except subprocess.CalledProcessError as exc:
        for ns in (ns_cap, ns_tx):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        pytest.skip(f"cannot create network namespaces / veth here: {exc.stderr.strip()}")
    yield ns_cap, if_cap, ns_tx, if_tx
    for ns in (ns_cap, ns_tx):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@pytest.fixture(scope="module")
def classified(tmp_path_factory) -> pa.Table:
    """``vpnid classify --registry`` over every capture of CASES present here, in one run."""
    _need_root_tools()
    files = [str(c) for c, _p, _s in CASES if c.exists()]
    if not files or not REGISTRY.exists():
        pytest.skip("no capture of CASES (or no sample registry) present")
    out = tmp_path_factory.mktemp("classify") / "classified.parquet"
    done = subprocess.run([sys.executable, "-m", "classifier.cli.main", "classify", *files, "-o", str(out),
                           "--registry", str(REGISTRY), "-q"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return pq.read_table(out)


def _classify_rows(classified: pa.Table, path: Path) -> pa.Table:
    return classified.filter(pc.equal(classified.column("capture"), str(path)))


def _offline(path: Path, config: FlowConfig | None = None) -> pa.Table:
    """The offline pipeline in process (the engine, signatures, the default model, the registry)."""
    from classifier.cli.common import load_model_option
    from classifier.registry import Registry

    label = LabelOptions(model=load_model_option(None, False, lambda *a: None), registry=Registry.load(REGISTRY))
    return pa.concat_tables([label_batch(b, label) for b in iter_flow_batches([str(path)], config=config)])


def _timing_free(table: pa.Table, pps: int | None) -> pa.Table:
    """All rows at the capture's own pace; at a fixed rate, the rows the model did not label."""
    if pps is None:
        return table
    return table.filter(pc.fill_null(pc.not_equal(table.column("detection"), "model"), True))


def _rows(table: pa.Table, keys: tuple[str, ...]) -> list[tuple]:
    return sorted(zip(*(table.column(k).to_pylist() for k in keys), strict=True), key=repr)


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and text in path.read_text():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"vpnid live did not start: {path.read_text() if path.exists() else '(no log)'}")


@pytest.mark.parametrize(("capture", "pps", "stop"), CASES, ids=[f"{c.parent.name}/{c.name}" for c, _p, _s in CASES])
def test_live_replay_matches_classify(veth, classified, tmp_path: Path, capture: Path, pps: int | None,
                                      stop: int):
    if not capture.exists():
        pytest.skip(f"{capture} not present")
    ns_cap, if_cap, ns_tx, if_tx = veth
    offline = _classify_rows(classified, capture)
    assert offline.num_rows, f"vpnid classify found no flow in {capture}"
    # replay-safe: no flow of this capture depends on a timeout (see the module docstring)
    unbounded = _offline(capture, FlowConfig(idle_timeout_s=1e9, active_timeout_s=1e9))
    assert _rows(unbounded, FLOW_KEYS[:-1]) == _rows(offline, FLOW_KEYS[:-1]), "capture not replay-safe"

    out, alerts, log = tmp_path / "out", tmp_path / "alerts.jsonl", tmp_path / "live.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns_cap, sys.executable, "-m", "classifier.cli.main", "live",
             "--interface", if_cap, "-o", str(out), "--alerts", str(alerts), "--registry", str(REGISTRY),
             "--stats-interval", "1h"], stderr=err, stdout=subprocess.DEVNULL, cwd=REPO)
    try:
        _wait_for(log, "capturing on", proc, 60)
        rate = ["--pps", str(pps)] if pps else []
        sent = subprocess.run(["ip", "netns", "exec", ns_tx, "tcpreplay", "-i", if_tx, *rate, str(capture)],
                              capture_output=True, text=True, timeout=120)
        assert sent.returncode == 0, sent.stderr
        assert re.search(r"Failed packets:\s+0\b", sent.stdout), sent.stdout
        proc.send_signal(stop)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    text = log.read_text()
    assert "kernel:" in text and "dropped" in text  # drop counters are in the log
    files = sorted(out.glob("flows-*.parquet"))
    assert files and not list(out.glob(".*")), "every Parquet file closed and renamed"
    live = pa.concat_tables([pq.read_table(f) for f in files])
    # at a fixed rate the gaps between flows shrink: a flow offline ended as "idle" by a later
    # flow's packets may still be open at the end of the replay; at the capture's own pace
    # the end reason must agree too
    keys = FLOW_KEYS if pps is None else FLOW_KEYS[:-1]
    assert _rows(live, keys) == _rows(offline, keys)
    # verdicts: signatures read payload, so theirs must agree whatever the pace; the model
    # also reads timing, which a fixed-rate replay changes, so its verdicts are compared
    # only at the capture's own pace
    assert _rows(_timing_free(live, pps), keys + LABEL_KEYS) == _rows(_timing_free(offline, pps), keys + LABEL_KEYS)
    for f in files:
        meta = pq.read_metadata(f).metadata
        assert json.loads(meta[b"vpnid.kernel_drops"]) == 0
        assert json.loads(meta[b"vpnid.kernel_packets"]) >= int(live.column("packets").to_numpy().sum())

    vpn = offline.filter(offline.column("is_vpn"))
    assert vpn.num_rows >= 1, f"{capture.name}: no VPN flow offline"
    lines = [json.loads(x) for x in alerts.read_text().splitlines()]
    by_sig = [a for a in lines if a["detection"] == "signature"]
    assert sorted((tuple(a[k] for k in VPN_KEYS) for a in by_sig), key=repr) == \
        _rows(vpn.filter(pc.equal(vpn.column("detection"), "signature")), VPN_KEYS)
    assert len({a["flow_id"] for a in lines}) == len(lines)
    reg = {tuple(r[k] for k in VPN_KEYS): r["registered"] for r in vpn.to_pylist()}
    for a in lines:
        assert a["registered"] == reg.get(tuple(a[k] for k in VPN_KEYS), a["registered"])


def test_capture_methods_on_loopback_with_a_filter():
    """Ring and socket capture read the same datagrams, filtered in the kernel, without drops."""
    _need_root_tools()
    from classifier.live.capture import CaptureOptions, open_capture

    port = 40000 + os.getpid() % 20000
    for method in ("ring", "socket"):
        cap = open_capture(CaptureOptions("lo", bpf=f"udp dst port {port}", method=method, buffer_mb=4,
                                          batch_ms=5))
        try:
            assert cap.method == method
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for i in range(50):
                    s.sendto(b"v" * (i + 1), ("127.0.0.1", port))
                    s.sendto(b"other", ("127.0.0.1", port + 1))  # filtered out in the kernel
            got, sizes = 0, []
            end = time.monotonic() + 5
            while got < 50 and time.monotonic() < end:
                batch = cap.read(0.05)
                if batch is not None:
                    got += batch.n
                    assert set(batch.cols["dport"].tolist()) == {port}
                    sizes += batch.cols["ip_len"].tolist()
            assert got == 50 and sizes == [28 + i + 1 for i in range(50)]  # once each: loopback echo skipped
            stats = cap.stats()
            assert stats.drops == 0 and stats.packets >= 50
        finally:
            cap.close()


def test_interface_going_down_ends_the_capture_with_the_flows_written(veth, tmp_path: Path):
    ns_cap, if_cap, ns_tx, if_tx = veth
    capture = REPO / "pcaps" / "wireguard.pcap"
    if not capture.exists():
        pytest.skip(f"{capture} not present")
    out, log = tmp_path / "out", tmp_path / "live.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(["ip", "netns", "exec", ns_cap, sys.executable, "-m", "classifier.cli.main", "live",
                                 "--interface", if_cap, "-o", str(out), "--no-model"],
                                stderr=err, stdout=subprocess.DEVNULL, cwd=REPO)
    try:
        _wait_for(log, "capturing on", proc, 60)
        subprocess.run(["ip", "netns", "exec", ns_tx, "tcpreplay", "-i", if_tx, "--pps", "2000", str(capture)],
                       capture_output=True, check=True, timeout=60)
        time.sleep(0.3)
        _sh("ip", "-n", ns_cap, "link", "set", if_cap, "down")
        assert proc.wait(timeout=30) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _sh("ip", "-n", ns_cap, "link", "set", if_cap, "up")
    assert "Network is down" in log.read_text()
    table = pa.concat_tables([pq.read_table(f) for f in out.glob("flows-*.parquet")])
    offline = _offline(capture, FlowConfig())
    assert _rows(table, FLOW_KEYS[:-1]) == _rows(offline, FLOW_KEYS[:-1])


def test_drain_hands_over_everything_queued_batch_by_batch():
    """Stopping reads the whole ring, even when it takes many small batches (4 KiB blocks here)."""
    _need_root_tools()
    from classifier.live.capture import CaptureOptions, open_capture

    port = 40000 + (os.getpid() + 7) % 20000
    cap = open_capture(CaptureOptions("lo", bpf=f"udp dst port {port}", method="ring", buffer_mb=4, block_kb=4,
                                      max_frames=16, batch_ms=5))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(300):
                s.sendto(i.to_bytes(2, "big") + b"d" * (i % 200), ("127.0.0.1", port))
        batches, seen = 0, []
        for batch in cap.drain():  # consumed one by one, as the sensor does
            batches += 1
            pay = batch.cols["payload_off"]
            seen += [(int.from_bytes(batch.buf[p:p + 2].tobytes(), "big"), int(n))
                     for p, n in zip(pay, batch.cols["ip_len"], strict=True)]
        assert batches > 10
        assert seen == [(i, 28 + 2 + i % 200) for i in range(300)]
        assert cap.stats().drops == 0
    finally:
        cap.close()
