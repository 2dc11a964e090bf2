"""The traffic lab: committed ground truth, the manifest reader and fresh captures from real daemons.

The fast tests need no root: they check ``pcaps/MANIFEST.csv`` against the committed
captures (every file present, counts as dpkt reads them, sizes within the limits, rows
matching the scenario registry, docs in step) and the manifest reader. The ``lab`` tests
run real WireGuard, OpenVPN and strongSwan in network namespaces (root and ``make
lab-deps`` needed; they skip with the reason otherwise), classify the fresh captures with
``vpnid classify`` and check that nothing is left behind, also after an interruption.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from classifier.cli.lab import choose_profile, kind_plan, parse_kinds, scenario_kinds
from classifier.errors import UsageError, VpnidError
from classifier.lab.manifest import (
    MANIFEST_COLUMNS,
    MANIFEST_SCHEMA,
    ManifestError,
    ManifestRow,
    read_manifest,
    read_manifest_rows,
    update_manifest,
)
from classifier.lab.netns import NS_PREFIX, LabError, Proc, run_tag
from classifier.lab.runner import (
    OFFLOADS_NOTE,
    capture_notes,
    check_environment,
    count_pcap,
    effective_profile,
    missing_tools,
)
from classifier.lab.scenarios import all_scenarios
from classifier.lab.session import TRAFFIC_KINDS, TrafficProfile

REPO = Path(__file__).resolve().parents[1]
PCAPS = REPO / "pcaps"
MANIFEST = PCAPS / "MANIFEST.csv"
MAX_FILE = 1_000_000
MAX_TOTAL = 10_000_000


# -- committed samples ---------------------------------------------------------------------

def test_manifest_header_is_exact() -> None:
    assert MANIFEST.read_text().splitlines()[0] == ",".join(MANIFEST_COLUMNS)


def test_manifest_matches_committed_captures() -> None:
    rows = read_manifest_rows(MANIFEST)
    listed = {r.file for r in rows}
    on_disk = {p.name for p in PCAPS.glob("*.pcap")}
    assert listed == on_disk, f"unlisted: {on_disk - listed}, missing: {listed - on_disk}"
    total = 0
    for row in rows:
        path = PCAPS / row.file
        size = path.stat().st_size
        total += size
        assert size < MAX_FILE, f"{row.file} is {size} bytes"
        assert path.read_bytes()[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"), f"{row.file}: not classic pcap"
        assert count_pcap(path) == (row.packets, row.bytes), row.file
    assert total < MAX_TOTAL


def test_manifest_rows_agree_with_the_scenario_registry() -> None:
    scenarios = all_scenarios()
    for row in read_manifest_rows(MANIFEST):
        scn = scenarios[row.scenario]
        assert (row.vpn, row.protocol, row.transport, row.server_port, row.midflow, row.notes) == \
            (scn.vpn, scn.protocol, scn.transport, scn.server_port, scn.midflow, scn.notes), row.file
        if scn.crafted:
            assert "crafted with scapy" in row.notes


def test_the_samples_cover_the_required_scenarios() -> None:
    rows = read_manifest_rows(MANIFEST)
    protos = {(r.protocol, r.transport) for r in rows if r.vpn}
    for need in [("wireguard", "udp"), ("openvpn", "udp"), ("openvpn", "tcp"), ("ipsec-ike", "udp"),
                 ("ipsec-esp", "udp"), ("ipsec-esp", "esp"), ("l2tp", "udp"), ("pptp", "tcp"), ("pptp", "gre")]:
        assert need in protos, need
    assert {r.protocol for r in rows if not r.vpn} >= {"https", "http", "dns", "ssh", "iperf3-tcp", "iperf3-udp"}
    assert any(r.midflow and r.protocol == "wireguard" for r in rows)
    assert any(r.midflow and r.protocol.startswith("ipsec") for r in rows)
    assert {"tls-auth", "tls-crypt"} <= {n for r in rows if r.protocol == "openvpn" for n in r.notes.split("; ")}
    assert any(r.protocol == "openvpn" and r.transport == "tcp" and r.server_port == 443 for r in rows)


def test_committed_captures_use_the_address_plan() -> None:
    """Every IPv4 packet of a capture is between 198.18.N.1 and 198.18.N.2 of its scenario."""
    import dpkt

    scenarios = all_scenarios()
    for row in read_manifest_rows(MANIFEST):
        n = scenarios[row.scenario].number
        allowed = {bytes([198, 18, n, 1]), bytes([198, 18, n, 2])}
        with open(PCAPS / row.file, "rb") as fh:
            for _ts, buf in dpkt.pcap.Reader(fh):
                eth = dpkt.ethernet.Ethernet(buf)
                if isinstance(eth.data, dpkt.ip.IP):
                    assert {eth.data.src, eth.data.dst} <= allowed, row.file


def test_scenario_numbers_are_unique_and_documented() -> None:
    scenarios = all_scenarios()
    numbers = [s.number for s in scenarios.values()]
    assert len(numbers) == len(set(numbers))
    doc = (REPO / "docs" / "lab.md").read_text()
    for s in scenarios.values():
        assert re.search(rf"\|\s*{s.number}\s*\|\s*`{re.escape(s.name)}`", doc), f"{s.name} missing from docs/lab.md"


def test_crafted_captures_regenerate_identically(tmp_path: Path) -> None:
    """Crafted samples are reproducible: the committed file is what the code makes today."""
    crafted = [s for s in all_scenarios().values() if s.crafted]
    assert crafted
    rows = {r.scenario: r for r in read_manifest_rows(MANIFEST)}
    for s in crafted:
        out = tmp_path / f"{s.name}.pcap"
        s.craft(out, s.number, 3.0)
        assert out.read_bytes() == (PCAPS / rows[s.name].file).read_bytes(), s.name


def test_varied_crafted_captures_differ_and_regenerate(tmp_path: Path) -> None:
    """A --vary seed gives another capture (training repeats are not copies), the same one each time."""
    for name in ("ipsec-esp-crafted", "gre-crafted"):
        s = all_scenarios()[name]
        files = []
        for i, seed in enumerate((0, 12345, 12345, 777)):
            out = tmp_path / f"{name}-{i}.pcap"
            s.craft(out, s.number, 3.0, seed)
            files.append(out.read_bytes())
        assert files[1] == files[2], name
        assert len({files[0], files[1], files[3]}) == 3, name


# -- the manifest reader -----------------------------------------------------------------

def test_read_manifest_gives_an_arrow_table() -> None:
    table = read_manifest(MANIFEST, resolve=True)
    assert isinstance(table, pa.Table)
    assert table.schema == MANIFEST_SCHEMA
    assert table.num_rows == len(read_manifest_rows(MANIFEST))
    assert all(Path(p).exists() for p in table.column("file").to_pylist())
    assert set(table.column("vpn").to_pylist()) == {True, False}


def test_bad_manifest_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "MANIFEST.csv"
    bad.write_text(",".join(MANIFEST_COLUMNS) + "\nx.pcap,x,yes,wireguard,udp,51820,no,,10,100\n"
                   "y.pcap,y,maybe,wireguard,udp,51820,no,,10,100\n")
    with pytest.raises(ManifestError, match=r"MANIFEST.csv:3: column vpn"):
        read_manifest_rows(bad)
    bad.write_text("file,scenario\nx.pcap,x\n")
    with pytest.raises(ManifestError, match=r"MANIFEST.csv:1: header"):
        read_manifest(bad)
    bad.write_text(",".join(MANIFEST_COLUMNS) + "\nx.pcap,x,yes,wireguard,sctp,51820,no,,10,100\n")
    with pytest.raises(ManifestError, match="transport"):
        read_manifest(bad)


def test_update_manifest_replaces_rows_of_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "MANIFEST.csv"
    a = ManifestRow("a.pcap", "wireguard", True, "wireguard", "udp", 51820, False, "x, y", 3, 300)
    b = ManifestRow("b.pcap", "dns", False, "dns", "udp", 53, False, "", 2, 200)
    update_manifest(path, [a, b])
    a2 = ManifestRow("a.pcap", "wireguard", True, "wireguard", "udp", 51820, True, "z", 4, 400)
    update_manifest(path, [a2])
    assert read_manifest_rows(path) == [a2, b]


def test_capture_refuses_without_root_or_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    scenarios = all_scenarios()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(VpnidError, match="needs root"):
        check_environment([scenarios["wireguard"]])
    check_environment([scenarios["ipsec-esp-crafted"]])  # crafted: no root needed
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name, path=None: None)
    with pytest.raises(VpnidError, match="make lab-deps"):
        check_environment([scenarios["wireguard"]])


def _frames(pcap: Path) -> list[tuple[float, bytes]]:
    import dpkt

    with open(pcap, "rb") as fh:
        return [(ts, bytes(buf)) for ts, buf in dpkt.pcap.Reader(fh)]


def test_kernel_ipsec_rewrite_moves_esp_to_protocol_50_and_ike_to_its_port(tmp_path: Path) -> None:
    """charon's NAT-T framing, rewritten as a host with kernel ESP and no NAT sends it."""
    import dpkt

    from classifier.lab.scenarios.crafted import outer_frame, write_pcap
    from classifier.lab.scenarios.ipsec import kernel_rewrite

    ike = bytes(range(8)) + bytes(8) + b"\x21\x20\x22\x08" + bytes(4) + (60).to_bytes(4, "big") + bytes(32)
    esp = (0x1234).to_bytes(4, "big") + (7).to_bytes(4, "big") + bytes(range(40))
    src = tmp_path / "charon.pcap"
    write_pcap(src, [
        (0.0, outer_frame(24, True, None, ike, (500, 500))),  # IKE_SA_INIT: left alone
        (0.1, outer_frame(24, True, None, bytes(4) + ike, (4500, 4500))),  # IKE behind the marker
        (0.2, outer_frame(24, False, None, esp, (4500, 4500))),  # ESP in UDP
        (0.3, outer_frame(24, True, None, b"\xff", (4500, 4500))),  # NAT-T keepalive
        (0.4, outer_frame(24, True, None, b"dns?", (40000, 53))),  # anything else: left alone
    ])
    originals = _frames(src)
    for ike_port in (500, 4500):
        dst = tmp_path / f"kernel-{ike_port}.pcap"
        kernel_rewrite(ike_port)(src, dst)
        frames = _frames(dst)
        assert [round(ts - originals[0][0], 6) for ts, _ in frames] == [0.0, 0.1, 0.2, 0.4]  # keepalive gone
        assert frames[0][1] == originals[0][1] and frames[3][1] == originals[4][1]
        moved = dpkt.ethernet.Ethernet(frames[1][1]).data
        if ike_port == 4500:  # MOBIKE: IKE stays on 4500 with its marker
            assert frames[1][1] == originals[1][1]
        else:
            assert (moved.data.sport, moved.data.dport, bytes(moved.data.data)) == (500, 500, ike)
        tunnel = dpkt.ethernet.Ethernet(frames[2][1]).data
        assert tunnel.p == 50 and bytes(tunnel.data) == esp and tunnel.len == 20 + len(esp)
        for _, frame in frames[1:3]:  # lengths and checksums as a kernel writes them
            ip = dpkt.ethernet.Ethernet(frame).data
            header = bytes(ip)[:20]
            assert dpkt.in_cksum(header) == 0 and ip.len == len(bytes(ip))
            if ip.p == 17:
                udp = bytes(ip.data)
                pseudo = ip.src + ip.dst + bytes([0, 17]) + len(udp).to_bytes(2, "big")
                assert dpkt.in_cksum(pseudo + udp) == 0


def test_rewriting_a_bad_capture_names_the_file_and_offset(tmp_path: Path) -> None:
    from classifier.lab.pcaprewrite import rewrite_pcap

    bad = tmp_path / "not.pcap"
    bad.write_bytes(b"\x0a\x0d\x0d\x0a" + bytes(40))
    with pytest.raises(LabError, match=r"not\.pcap: not a classic pcap"):
        rewrite_pcap(bad, tmp_path / "out.pcap", lambda f: f)
    cut = tmp_path / "cut.pcap"
    cut.write_bytes((PCAPS / "ping.pcap").read_bytes()[:24 + 16 + 10])
    with pytest.raises(LabError, match=r"cut\.pcap: byte offset 24: record of \d+ bytes runs past the end"):
        rewrite_pcap(cut, tmp_path / "out.pcap", lambda f: f)
    assert not (tmp_path / "out.pcap").exists()


def test_requirements_name_executables_gstreamer_elements_and_system_python_modules() -> None:
    """A scenario is ready only when its GStreamer elements and system-Python modules exist too."""
    from dataclasses import replace

    from classifier.lab.runner import missing_tools

    base = all_scenarios()["dns"]
    fake = ("no-such-tool-vpnid", "gst:no_such_element_vpnid", "py3:no_such_module_vpnid")
    missing = missing_tools(replace(base, requires=fake))
    assert missing[-3:] == list(fake)  # after any missing base tool, in order
    if not missing_tools(replace(base, requires=("gst-inspect-1.0",))):  # GStreamer present: a real element
        assert not missing_tools(replace(base, requires=("gst:fakesink",)))
    assert "py3:json" not in missing_tools(replace(base, requires=("py3:json",)))  # base tools may be absent
    assert "gst:srtpenc" in all_scenarios()["srtp-call"].requires
    assert "py3:libtorrent" in all_scenarios()["bittorrent-utp"].requires


def test_lab_list_and_crafted_capture_through_the_cli(tmp_path: Path) -> None:
    listing = _vpnid("lab", "list", "--json")
    rows = [json.loads(line) for line in listing.stdout.splitlines()]
    assert {r["name"] for r in rows} == set(all_scenarios())
    res = _vpnid("lab", "capture", "*-crafted", "-o", str(tmp_path))
    written = read_manifest_rows(tmp_path / "MANIFEST.csv")
    assert {r.scenario for r in written} == {s.name for s in all_scenarios().values() if s.crafted}, res.stderr
    bad = _vpnid("lab", "capture", "no-such-scenario", "-o", str(tmp_path), check=False)
    assert bad.returncode == 2 and "no scenario matches" in bad.stderr


def test_training_selects_every_scenario_but_the_held_out_ones() -> None:
    """`make lab-train` captures `training`; held-out scenarios (kcptun) come only with `all` or by name."""
    from classifier.cli.lab import select

    every = {s.name for s in select(["all"])}
    training = {s.name for s in select(["training"])}
    held_out = {n for n, s in all_scenarios().items() if not s.training}
    assert "kcptun" in held_out and "vmess" not in held_out and every == set(all_scenarios())
    assert training == every - held_out
    assert {s.name for s in select(["kcptun"])} == {"kcptun"}
    rows = [json.loads(line) for line in _vpnid("lab", "list", "--json").stdout.splitlines()]
    assert {r["name"] for r in rows if not r["training"]} == held_out


def _lab_train_batches(*make_args: str) -> list[tuple[str, list[str], set[int], int]]:
    """What `make lab-train` would run: (output dir, scenarios, capture indices, seed) per batch."""
    root = Path(__file__).resolve().parents[1]
    dry = subprocess.run(["make", "-n", "-C", str(root), "lab-train", "MODEL_LAB=/x", *make_args],
                         capture_output=True, text=True, check=True).stdout
    batches = []
    for line in dry.splitlines():
        if " lab capture " not in line:
            continue
        args = iter(line.split(" lab capture ", 1)[1].split())
        opts: dict[str, str] = {}
        names = []
        for a in args:
            if a in ("-o", "--repeat", "--first-index", "--seed", "--path"):
                opts[a] = next(args)
            elif not a.startswith("-"):
                names.append(a)
        first = int(opts.get("--first-index", 1))
        batches.append((opts["-o"], names, set(range(first, first + int(opts["--repeat"]))), int(opts["--seed"])))
    return batches


def test_lab_train_batches_can_run_side_by_side() -> None:
    """`make -j9 lab-train` runs its batches at once: no two may write the same capture or share a seed."""
    batches = _lab_train_batches()
    assert len(batches) == 9 and {b[0] for b in batches} == {"/x/plain", "/x/path"}
    for out in ("/x/plain", "/x/path"):
        mine = [b for b in batches if b[0] == out]
        for i, (_, names_a, idx_a, seed_a) in enumerate(mine):
            for _, names_b, idx_b, seed_b in mine[i + 1:]:
                assert seed_a != seed_b
                assert not (set(names_a) & set(names_b) or "training" in names_a + names_b) or not idx_a & idx_b
    # Held-out scenarios join a set with the same seeds and indices; no hard-tunnel batch is left empty.
    extra = _lab_train_batches("LAB_TRAIN=kcptun dnscrypt", "LAB_TRAIN_HARD=")
    assert len(extra) == 7 and all(b[1] == ["kcptun", "dnscrypt"] for b in extra)
    assert [(b[0], b[2], b[3]) for b in extra] == [(b[0], b[2], b[3]) for b in batches if b[1] == ["training"]]


def test_a_second_seed_adds_numbered_captures_beside_the_first(tmp_path: Path) -> None:
    """--first-index lets a run with another seed extend a training directory (make lab-train does)."""
    _vpnid("lab", "capture", "gre-crafted", "--repeat", "2", "--seed", "1", "-o", str(tmp_path))
    first = {p.name: p.read_bytes() for p in tmp_path.glob("*.pcap")}
    _vpnid("lab", "capture", "gre-crafted", "--repeat", "2", "--first-index", "3", "--seed", "2",
           "-o", str(tmp_path))
    files = sorted(r.file for r in read_manifest_rows(tmp_path / "MANIFEST.csv"))
    assert files == [f"gre-crafted-r0{k}.pcap" for k in (1, 2, 3, 4)]
    assert all((tmp_path / name).read_bytes() == data for name, data in first.items())  # untouched
    assert (tmp_path / "gre-crafted-r03.pcap").read_bytes() not in first.values()  # another seed, another draw
    bad = _vpnid("lab", "capture", "gre-crafted", "--repeat", "2", "--first-index", "99", "-o", str(tmp_path),
                 check=False)
    assert bad.returncode == 2 and "--first-index" in bad.stderr


def test_a_peer_that_stops_reading_fails_the_capture_instead_of_hanging_it(tmp_path: Path) -> None:
    """A DTLS server whose client went away stops reading stdin; feeding it must not block the lab run."""
    from classifier.lab.scenarios.negatives import send_line

    log = tmp_path / "peer.log"
    log.write_text("peer log line\n")
    popen = subprocess.Popen(["sleep", "30"], stdin=subprocess.PIPE)
    try:
        peer = Proc("stalled-peer", popen, log)
        send_line(peer, "short line\n")  # the pipe has room: written at once
        start = time.monotonic()
        with pytest.raises(LabError, match=r"stalled-peer took no input for 0\.5 s"):
            send_line(peer, "x" * 200_000, timeout=0.5)  # more than a pipe holds
        assert time.monotonic() - start < 5
    finally:
        popen.kill()
        popen.wait()
    with pytest.raises(LabError, match="exited before it took its input"):
        send_line(peer, "y" * 200_000, timeout=0.5)


# -- inner-traffic kinds and the profile --------------------------------------------------

L3_TUNNELS = ("wireguard", "wireguard-midflow", "openvpn-udp", "openvpn-tcp443", "ipsec-ikev2", "ipsec-ikev1", "tinc",
              "openconnect", "stunnel-openvpn")


def test_tunnels_offer_every_traffic_kind_and_negatives_only_their_own() -> None:
    scenarios = all_scenarios()
    for name in (*L3_TUNNELS, "shadowsocks", "vxlan"):  # vxlan: a cleartext tunnel, not a VPN
        assert scenarios[name].traffic_kinds == TRAFFIC_KINDS, name
    for s in scenarios.values():
        if (not s.vpn and s.name != "vxlan") or s.crafted or s.protocol in ("l2tp", "pptp"):
            assert s.traffic_kinds == ("default",), s.name
    services = ("https-h2-browse", "https-keepalive", "https-bulk", "ssh-interactive", "ssh-copy", "rtp-voice",
                "rtp-video", "dns-over-tls", "ntp", "iperf3-bidir-udp", "iperf3-bidir-tcp", "websocket",
                "bittorrent", "http-keepalive", "http-bulk")
    assert all(scenarios[n].number >= 108 and not scenarios[n].vpn for n in services)


def test_vary_draws_reproducible_profiles_within_the_scenarios_kinds() -> None:
    scenarios = all_scenarios()
    wg, dns = scenarios["wireguard"], scenarios["dns"]
    draws = [choose_profile(wg, None, True, random.Random(7)) for _ in range(2)]
    assert draws[0] == draws[1]  # same seed, same profile
    rng = random.Random(3)
    kinds = {choose_profile(wg, None, True, rng).kind for _ in range(200)}
    assert kinds == set(TRAFFIC_KINDS)
    rng = random.Random(3)
    assert {choose_profile(wg, ("bulk", "idle"), True, rng).kind for _ in range(50)} == {"bulk", "idle"}
    assert {choose_profile(dns, ("bulk",), True, rng).kind for _ in range(20)} == {"default"}
    fixed = choose_profile(wg, ("iperf",), False, rng)
    assert fixed == TrafficProfile(kind="iperf")  # no --vary: the kind's default parameters
    assert choose_profile(wg, None, False, rng) == TrafficProfile()
    for _ in range(100):
        p = TrafficProfile.draw(rng, TRAFFIC_KINDS)
        assert 2 << 20 <= p.bulk_size <= 16 << 20 and 256 << 10 <= p.bulk_rate <= 4 << 20
        assert p.kind != "idle" or p.ping_interval >= 1.0


def test_repeated_captures_cover_every_kind_before_repeating_one() -> None:
    wg = all_scenarios()["wireguard"]
    kinds = scenario_kinds(wg, None)
    for seed in range(20):
        plan = kind_plan(kinds, 8, random.Random(seed))
        assert len(plan) == 8 and set(plan[:len(kinds)]) == set(kinds)
        assert all(plan.count(k) <= 2 for k in kinds)
    assert kind_plan(kinds, 4, random.Random(1)) == kind_plan(kinds, 4, random.Random(1))
    assert len(set(kind_plan(kinds, 4, random.Random(1)))) == 4  # four captures, four different kinds
    assert kind_plan(("default",), 3, random.Random(0)) == ["default"] * 3
    profile = choose_profile(wg, None, True, random.Random(2), kind="bulk")
    assert profile.kind == "bulk"


def test_manifest_notes_name_the_traffic_kind_only_when_it_is_not_the_default() -> None:
    scenarios = all_scenarios()
    wg, https = scenarios["wireguard"], scenarios["https"]
    assert effective_profile(wg, None) == TrafficProfile()
    assert capture_notes(wg, TrafficProfile()) == wg.notes  # the committed samples' notes
    bulk = TrafficProfile(kind="bulk", bulk_size=8 << 20, bulk_rate=512 << 10)
    assert capture_notes(wg, bulk) == f"{wg.notes}; traffic bulk (8 MiB at 512 KiB/s)"
    iperf = TrafficProfile(kind="iperf", udp=True, reverse=True, rate_kbit=3000, datagram=400)
    assert capture_notes(wg, iperf).endswith("traffic iperf (udp 3000 kbit/s, 400-byte writes, reverse)")
    assert effective_profile(https, bulk).kind == "default"  # negatives keep their own traffic
    assert capture_notes(https, effective_profile(https, bulk)) == https.notes
    for row in read_manifest_rows(MANIFEST):  # the committed samples stay on the default traffic
        assert "traffic " not in row.notes, row.file


def test_traffic_option_is_checked(tmp_path: Path) -> None:
    assert parse_kinds(None) is None
    assert parse_kinds("all") == TRAFFIC_KINDS
    assert parse_kinds("bulk, idle,bulk") == ("bulk", "idle")
    with pytest.raises(UsageError, match="unknown kind nope"):
        parse_kinds("bulk,nope")
    res = _vpnid("lab", "capture", "wireguard", "--traffic", "nope", "-o", str(tmp_path), check=False)
    assert res.returncode == 2 and "unknown kind nope" in res.stderr


def test_offloads_need_the_plain_link_and_say_so_in_the_notes(tmp_path: Path) -> None:
    res = _vpnid("lab", "capture", "http", "--offloads", "--path", "delay=10", "-o", str(tmp_path), check=False)
    assert res.returncode == 2 and "--offloads needs the plain veth pair" in res.stderr
    http = all_scenarios()["http"]
    assert capture_notes(http, TrafficProfile(), offloads=True) == f"{http.notes}; {OFFLOADS_NOTE}"
    assert capture_notes(http, TrafficProfile()) == http.notes


@pytest.mark.lab
@pytest.mark.timeout(120)
def test_a_capture_with_offloads_holds_a_hosts_super_packets(tmp_path: Path) -> None:
    """``--offloads``: TCP data in packets larger than the link's MTU, as a capture made on a host
    shows it; the same scenario without it stays within the MTU."""
    import dpkt

    _skip_unless_lab((*LAB_SCENARIOS, "http-bulk"))
    largest = {}
    for option in ("--offloads", "--no-vary"):
        out = tmp_path / option.strip("-")
        rows = _capture_ok(out, 100, "http-bulk", "--duration", "2", option)
        assert rows["http-bulk"].notes.endswith(OFFLOADS_NOTE) == (option == "--offloads")
        sizes = [dpkt.ethernet.Ethernet(buf).data.len for _ts, buf in _frames(out / rows["http-bulk"].file)
                 if dpkt.ethernet.Ethernet(buf).type == dpkt.ethernet.ETH_TYPE_IP]
        largest[option] = max(sizes)
    assert largest["--no-vary"] <= 1500 < 8000 < largest["--offloads"] <= 65535, largest


def test_concurrent_manifest_updates_lose_no_rows(tmp_path: Path) -> None:
    """Several capture runs may write into one directory: every row survives, the file stays valid."""
    path = tmp_path / "MANIFEST.csv"

    def writer(w: int) -> None:
        for i in range(6):
            update_manifest(path, [ManifestRow(f"w{w}-{i}.pcap", "dns", False, "dns", "udp", 53, False, "", i, i)])
            read_manifest_rows(path)  # readers never see a partial file

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert {r.file for r in read_manifest_rows(path)} == {f"w{w}-{i}.pcap" for w in range(6) for i in range(6)}
    assert [p.name for p in tmp_path.iterdir()] == ["MANIFEST.csv"]  # no lock or temporary files left


# -- fresh captures from real daemons ---------------------------------------------------------

#: Where each run's private work directory (configs, keys, logs) is made.
WORKDIR_PREFIX = os.path.join(tempfile.gettempdir(), "vpnid-lab-")
LAB_SCENARIOS = ("wireguard", "openvpn-udp-tls-crypt", "ipsec-ikev2")
#: Accepted labels per manifest protocol (a NAT-T flow carries both IKE and ESP).
FAMILY = {"ipsec-ike": {"ipsec-ike", "ipsec-esp"}, "ipsec-esp": {"ipsec-esp", "ipsec-ike"}}


def _skip_unless_lab(names: tuple[str, ...] = LAB_SCENARIOS) -> None:
    """Skip, saying why, unless this is root and the tools of the scenarios ``names`` are installed."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces, veth, tcpdump)")
    scenarios = all_scenarios()
    missing = sorted({t for n in names for t in missing_tools(scenarios[n])})
    if missing:
        pytest.skip(f"lab tools not installed ({', '.join(missing)}); run `make lab-deps`")


def _vpnid(*args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "classifier.cli.main", *args], capture_output=True, text=True,
                         timeout=timeout, cwd=REPO, check=False)
    if check:
        assert res.returncode == 0, f"vpnid {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-3000:]}"
    return res


def _start_vpnid(*args: str) -> subprocess.Popen:
    """``vpnid ARGS`` in a child whose Ctrl-C (SIGINT) acts as at a terminal.

    A suite started as a background job (``make test &``) inherits SIGINT ignored, as shells
    do for background jobs, and the child would inherit that too; the interrupt tests
    check what a user's Ctrl-C does, so the child gets the default disposition back.
    """
    return subprocess.Popen([sys.executable, "-m", "classifier.cli.main", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _lab_state(pid: int, since: float) -> dict[str, list[str]]:
    """What the lab run in process ``pid`` still holds, found by its run tag in the names.

    Scoped to one run so that other lab runs on the machine (a concurrent test suite)
    are neither blamed nor mistaken for this one. Process ids come round again after a
    reboot: a work directory kept from before ``since`` (``--keep-workdir``, or a run killed
    outright) carries this run's tag but is not its doing.
    """
    tag = run_tag(pid)
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False).stdout
    workdir = re.compile(re.escape(WORKDIR_PREFIX) + rf"\d+-{tag}-")
    wg = re.compile(rf"wg\d+[sc]{tag}\b")
    procs = []
    for d in glob.glob("/proc/[0-9]*"):
        try:
            state = Path(d, "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = Path(d, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if state != "Z" and (workdir.search(cmd) or wg.search(cmd)):  # zombies hold nothing
            procs.append(f"{Path(d).name}: {cmd}")
    return {
        "namespaces": [n.split()[0] for n in ns.splitlines() if n.startswith(NS_PREFIX) and f"-{tag}-" in n],
        "links": [line.split(":")[1].strip() for line in links.splitlines() if wg.search(line)],
        "processes": procs,
        "workdirs": [p for p in glob.glob(WORKDIR_PREFIX + "*") if workdir.match(p + "/") and _made_since(p, since)],
        "wg_sockets": [p for p in glob.glob("/run/wireguard/*.sock") if wg.search(p)],
    }


def _made_since(path: str, since: float) -> bool:
    try:
        return os.stat(path).st_ctime >= since
    except FileNotFoundError:  # removed while we looked: not left behind
        return False


def _assert_nothing_left(pid: int, since: float) -> None:
    left = {k: v for k, v in _lab_state(pid, since).items() if v}
    assert not left, f"left behind: {left}"


def _capture_ok(out: Path, timeout: float, *args: str) -> dict:
    """Run ``vpnid lab capture ARGS -o OUT``; assert it succeeded and left nothing behind; manifest rows."""
    started = time.time()
    run = _start_vpnid("lab", "capture", *args, "-o", str(out))
    try:
        _, err = run.communicate(timeout=timeout)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, err[-3000:]
    _assert_nothing_left(run.pid, started)
    return {r.scenario: r for r in read_manifest_rows(out / "MANIFEST.csv")}


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.timeout(280)
def test_fresh_lab_captures_are_labelled_correctly(tmp_path: Path) -> None:
    _skip_unless_lab()
    rows = _capture_ok(tmp_path, 240, *LAB_SCENARIOS, "--duration", "2")
    assert set(rows) == set(LAB_SCENARIOS)
    for row in rows.values():
        assert count_pcap(tmp_path / row.file) == (row.packets, row.bytes)
        assert row.packets > 20

    out = tmp_path / "classified.jsonl"
    _vpnid("classify", "-q", *(str(tmp_path / r.file) for r in rows.values()), "-o", str(out))
    flows = [json.loads(line) for line in out.read_text().splitlines()]
    for row in rows.values():
        mine = [f for f in flows if f["capture"].endswith(row.file) and f["ip_proto"] in (6, 17, 50)]
        assert mine, f"{row.file}: no flows"
        accepted = FAMILY.get(row.protocol, {row.protocol})
        for f in mine:  # every flow of these captures is the tunnel (or its IKE exchange)
            assert f["is_vpn"] and f["vpn_protocol"] in accepted, \
                f"{row.file}: {f['src_ip']}:{f['src_port']} -> {f['dst_ip']}:{f['dst_port']} labelled " \
                f"{f['vpn_protocol']!r} (is_vpn={f['is_vpn']}), truth {row.protocol}"
        on_port = [f for f in mine if row.server_port in (f["src_port"], f["dst_port"])]
        assert on_port and all(f["vpn_protocol"] == row.protocol for f in on_port), row.file


def _udp_datagrams(pcap: Path, port: int) -> list[tuple[float, tuple[str, int, str, int], bytes]]:
    """(time, (src, sport, dst, dport), payload) of the IPv4 UDP datagrams to or from ``port`` in ``pcap``."""
    import socket

    import dpkt

    out = []
    for ts, buf in _frames(pcap):
        ip = dpkt.ethernet.Ethernet(buf).data
        if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.udp.UDP) and port in (ip.data.sport, ip.data.dport):
            key = (socket.inet_ntoa(ip.src), ip.data.sport, socket.inet_ntoa(ip.dst), ip.data.dport)
            out.append((ts, key, bytes(ip.data.data)))
    return out


def _udp_payloads(pcap: Path, port: int) -> list[tuple[tuple[str, int, str, int], bytes]]:
    """((src, sport, dst, dport), payload) of the IPv4 UDP datagrams to or from ``port`` in ``pcap``."""
    return [(key, payload) for _ts, key, payload in _udp_datagrams(pcap, port)]


def _timed_udp_payloads(pcap: Path, port: int) -> list[tuple[float, bytes]]:
    """(time, payload) of the IPv4 UDP datagrams to or from ``port`` in ``pcap``."""
    return [(ts, payload) for ts, _key, payload in _udp_datagrams(pcap, port)]


def _tcp_upstreams(pcap: Path, port: int) -> dict[int, bytes]:
    """Per client port, the bytes the client sent to TCP ``port`` in ``pcap``, in sequence order
    (each segment once)."""
    import dpkt

    segments: dict[int, dict[int, bytes]] = {}
    for _, buf in _frames(pcap):
        ip = dpkt.ethernet.Ethernet(buf).data
        if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.tcp.TCP) and ip.data.dport == port and ip.data.data:
            segments.setdefault(ip.data.sport, {}).setdefault(ip.data.seq, bytes(ip.data.data))
    return {sport: b"".join(seg[k] for k in sorted(seg)) for sport, seg in segments.items()}


def _tcp_upstream(pcap: Path, port: int) -> bytes:
    """The bytes the clients sent to TCP ``port`` in ``pcap``, connection after connection."""
    return b"".join(_tcp_upstreams(pcap, port).values())


def _signature_flows(tmp_path: Path, *captures: str) -> list[dict]:
    """The flows of ``captures`` (files in ``tmp_path``) as ``vpnid classify --no-model`` labels them."""
    out = tmp_path / "classified.jsonl"
    _vpnid("classify", "-q", "--no-model", *(str(tmp_path / c) for c in captures), "-o", str(out))
    return [json.loads(line) for line in out.read_text().splitlines()]


def _random_from_first_byte(flows: list[dict]) -> bool:
    """The initiators' first payloads look random (set bits per byte near 4) and none is a TLS record.

    64 random bytes give 4.0 set bits per byte with a spread of 0.18, so among dozens of
    connections one may fall near 3.5: the bound is on the median, with a floor far below.
    """
    bits = sorted(f["src2dst_first_payload_bits"] for f in flows)
    return bool(bits) and bits[0] > 3.2 and bits[len(bits) // 2] > 3.8 and \
        all(f["src2dst_tls_record_frac"] == 0 for f in flows)


def _proxy_flows(tmp_path: Path, names: tuple[str, ...], *ports: int) -> tuple[list[dict], list[list[dict]]]:
    """Capture proxy scenarios (3 s each); all their flows by signatures, and the TCP flows to each of ``ports``."""
    _skip_unless_lab(names)
    rows = _capture_ok(tmp_path, 180, *names, "--duration", "3")
    flows = _signature_flows(tmp_path, *(rows[n].file for n in names))
    return flows, [[f for f in flows if f["ip_proto"] == 6 and f["dst_port"] == p] for p in ports]


def _scenario_signature_flows(tmp_path: Path, scenario: str, duration: str) -> list[dict]:
    """Capture one scenario (skipping where the lab cannot run it) and label its flows by signatures."""
    _skip_unless_lab((scenario,))
    rows = _capture_ok(tmp_path, 100, scenario, "--duration", duration)
    return _signature_flows(tmp_path, rows[scenario].file)


def _tls_records(stream: bytes) -> list[tuple[int, bytes]]:
    """(content type, body) of the TLS records that make up ``stream``, up to the first that does not fit."""
    out, i = [], 0
    while i + 5 <= len(stream) and 20 <= stream[i] <= 23 and stream[i + 1] == 3:
        n = int.from_bytes(stream[i + 3:i + 5], "big")
        out.append((stream[i], stream[i + 5:i + 5 + n]))
        i += 5 + n
    return out


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.timeout(200)
def test_openconnect_without_dtls_carries_the_tunnel_in_tls_1_2_records(tmp_path: Path) -> None:
    """``openconnect-tcp`` with the default profile draws TLS 1.2 with AES-GCM: no UDP at all, the
    tunnel's packets in one TLS stream whose records carry their sequence number as explicit nonce."""
    _skip_unless_lab(("openconnect-tcp",))
    rows = _capture_ok(tmp_path, 100, "openconnect-tcp", "--duration", "3")
    pcap = tmp_path / rows["openconnect-tcp"].file
    assert _udp_payloads(pcap, 443) == []
    flows = _signature_flows(tmp_path, rows["openconnect-tcp"].file)
    tunnel = max(flows, key=lambda f: f["packets"])
    assert tunnel["dst_port"] == 443 and tunnel["src2dst_packets"] > 50 and tunnel["dst2src_packets"] > 50

    records = _tls_records(_tcp_upstreams(pcap, 443)[tunnel["src_port"]])
    hello = records[0][1]
    assert records[0][0] == 22 and hello[0] == 1 and hello[4:6] == b"\x03\x03"
    data = [body for kind, body in records if kind == 23]
    assert len(data) > 50
    nonces = [int.from_bytes(body[:8], "big") for body in data]
    rising = sum(b == a + 1 for a, b in itertools.pairwise(nonces)) / (len(nonces) - 1)
    assert rising > 0.95, f"{rising:.0%} of the client's records count up: not TLS 1.2 with AES-GCM"


def _mtproto_frames(stream: bytes) -> tuple[str, list[int]] | None:
    """Decrypt a client's MTProto obfuscated stream with the key its first 64 bytes carry and cut
    it into transport frames: (framing, message sizes), or None when the tag or framing is wrong."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    init = stream[:64]
    plain = Cipher(algorithms.AES(init[8:40]), modes.CTR(init[40:56])).encryptor().update(stream)
    framing = {b"\xef" * 4: "abridged", b"\xee" * 4: "intermediate", b"\xdd" * 4: "padded"}.get(plain[56:60])
    if framing is None:
        return None
    i, sizes = 64, []
    while i < len(plain):
        if framing == "abridged":
            n, i = plain[i], i + 1
            if n == 0x7F:
                n, i = int.from_bytes(plain[i:i + 3], "little"), i + 3
            n *= 4
        else:
            n, i = int.from_bytes(plain[i:i + 4], "little"), i + 4
        sizes.append(n)
        i += n
    return (framing, sizes) if i == len(plain) else None


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.timeout(200)
def test_a_messaging_app_is_random_from_its_first_byte_and_named_telegram(tmp_path: Path) -> None:
    """MTProto's obfuscated transport as the apps build it: the stream decrypts under its own key to
    a transport tag and frames that use it up exactly; chat and media connections; no VPN."""
    flows, (tcp,) = _proxy_flows(tmp_path, ("mtproto-chat", "mtproto-media"), 443)
    assert len(tcp) >= 4 and len(tcp) == len(flows)
    assert all(f["tunnel"] == "telegram" and not f["is_vpn"] for f in tcp), {f["tunnel"] for f in tcp}
    assert _random_from_first_byte(tcp)
    assert max(f["dst2src_bytes"] for f in tcp) > 100_000  # a file came down in parts
    assert min(f["packets"] for f in tcp) < 20  # and a short connection to another data centre

    for pcap in sorted(tmp_path.glob("mtproto-*.pcap")):
        streams = _tcp_upstreams(pcap, 443)
        assert streams, pcap.name
        for sport, stream in streams.items():
            parsed = _mtproto_frames(stream)
            assert parsed is not None, (pcap.name, sport)
            framing, sizes = parsed
            # messages are whole 4-byte words; padded intermediate adds 0-15 bytes after each
            words = framing != "padded"
            assert sizes and all(n >= 28 and (n % 4 == 0 or not words) for n in sizes), (pcap.name, framing, sizes[:5])


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.timeout(200)
def test_cbc_openvpn_hides_its_packet_id_and_calls_and_utp_count_like_tunnels(tmp_path: Path) -> None:
    """The look-alikes the model learns from: a tunnel without a visible counter, a call and uTP with one."""
    names = ("openvpn-udp-cbc", "srtp-call", "bittorrent-utp")
    _skip_unless_lab(names)  # srtpenc (gstreamer1.0-plugins-bad) and libtorrent are requirements too
    rows = _capture_ok(tmp_path, 180, *names, "--duration", "3")

    # OpenVPN's P_DATA_V2 (opcode 9): with AES-256-GCM bytes 4-7 are the packet id, rising by
    # one per packet; with AES-256-CBC + HMAC-SHA1 they are the start of the HMAC, random.
    data = [p for _, p in _udp_payloads(tmp_path / rows["openvpn-udp-cbc"].file, 1194) if p and p[0] >> 3 == 9]
    assert len(data) > 20
    ids = [int.from_bytes(p[4:8], "big") for p in data]
    rising = sum(b == a + 1 for a, b in itertools.pairwise(ids)) / (len(ids) - 1)
    assert rising < 0.1, f"{rising:.0%} of data packets carry a cleartext packet id: CBC was not negotiated"

    # The call: every datagram is on 5004 <-> 5004, both ways, with SRTP media (RTP version 2)
    # and STUN Binding requests (magic cookie 0x2112A442) from both sides.
    call = _udp_payloads(tmp_path / rows["srtp-call"].file, 5004)
    assert {(k[1], k[3]) for k, _ in call} == {(5004, 5004)}
    sides = {k[0] for k, _ in call}
    assert len(sides) == 2
    for side in sides:
        mine = [p for k, p in call if k[0] == side]
        assert sum(p[0] >> 6 == 2 for p in mine) > 0.8 * len(mine), side
        assert any(p[:2] == b"\x00\x01" and p[4:8] == bytes.fromhex("2112a442") for p in mine), side

    # uTP (BEP 29): version 1 in the low nibble of the first byte, ST_DATA (0) or ST_STATE (2)
    # in the high one; the file flows from the seeder (6881) to the leecher.
    utp = _udp_payloads(tmp_path / rows["bittorrent-utp"].file, 6881)
    assert utp and all(p[0] & 0x0F == 1 for _, p in utp)
    data_bytes = {}
    for k, p in utp:
        data_bytes[k[1]] = data_bytes.get(k[1], 0) + len(p) * (p[0] >> 4 == 0)
    assert data_bytes[6881] > 10 * data_bytes.get(6882, 0) and data_bytes[6881] > 100_000

    flows = _signature_flows(tmp_path, *(r.file for r in rows.values()))
    by_capture = {r.file: [f for f in flows if f["capture"].endswith(r.file) and f["ip_proto"] == 17] for r in rows.values()}
    assert [f["vpn_protocol"] for f in by_capture[rows["openvpn-udp-cbc"].file] if 1194 in (f["src_port"], f["dst_port"])] \
        == ["openvpn"]
    media = by_capture[rows["srtp-call"].file]
    assert len(media) == 1 and media[0]["src2dst_packets"] > 20 and media[0]["dst2src_packets"] > 20
    assert not media[0]["is_vpn"]
    assert not any(f["is_vpn"] for f in by_capture[rows["bittorrent-utp"].file])


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.timeout(200)
def test_aria2c_peer_wire_is_in_the_clear_or_rc4_as_drawn(tmp_path: Path) -> None:
    """Varied aria2c captures: aria2c opens every connection with an MSE negotiation; some peer
    wires then carry the handshake in the clear, the others are RC4 throughout (--bt-force-encryption;
    with --bt-require-crypto alone every wire stayed clear)."""
    _skip_unless_lab(("bittorrent",))
    _capture_ok(tmp_path, 180, "bittorrent", "--repeat", "4", "--vary", "--seed", "99", "--duration", "3")
    pcaps = sorted(tmp_path.glob("bittorrent-r*.pcap"))
    assert len(pcaps) == 4
    clear = []
    for pcap in pcaps:
        ups = _tcp_upstreams(pcap, 6881)
        assert ups, pcap.name
        clear += [b"\x13BitTorrent protocol" in up for up in ups.values()]
    assert any(clear) and not all(clear), clear


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_libtorrent_over_tcp_encrypts_its_peer_wire_and_streams_the_file_one_way(tmp_path: Path) -> None:
    """The second BitTorrent client over TCP: MSE from the first byte, the file from the seeder."""
    _skip_unless_lab(("bittorrent-mse",))
    rows = _capture_ok(tmp_path, 100, "bittorrent-mse", "--duration", "3")
    pcap = tmp_path / rows["bittorrent-mse"].file
    upstreams = _tcp_upstreams(pcap, 6881)
    assert upstreams, "no TCP connection to the seeder's port"
    for up in upstreams.values():
        # a plaintext peer wire opens with the handshake "\x13BitTorrent protocol"; MSE opens
        # with a 96-byte Diffie-Hellman key plus random padding, nothing readable
        assert not up.startswith(b"\x13BitTorrent protocol") and len(up) >= 96, up[:24]
    flows = [f for f in _signature_flows(tmp_path, rows["bittorrent-mse"].file) if f["ip_proto"] == 6]
    assert not any(f["is_vpn"] for f in flows)
    main = max(flows, key=lambda f: f["bytes"])
    assert main["dst_port"] == 6881, "the leecher connects to the seeder's listening port"
    seeder_sent, leecher_sent = main["dst2src_payload_bytes"], main["src2dst_payload_bytes"]
    assert seeder_sent > 100_000 and seeder_sent > 10 * leecher_sent, (seeder_sent, leecher_sent)


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.timeout(150)
def test_transmission_seeds_a_libtorrent_leecher_over_utp(tmp_path: Path) -> None:
    """The second uTP implementation: one uTP flow (named by the signature, no VPN) carrying the file
    from Transmission's port, after its unchoke cycle."""
    _skip_unless_lab(("bittorrent-utp-transmission",))
    rows = _capture_ok(tmp_path, 130, "bittorrent-utp-transmission", "--duration", "3")
    file = rows["bittorrent-utp-transmission"].file
    utp = _udp_payloads(tmp_path / file, 6881)
    assert utp and all(p[0] & 0x0F == 1 for _, p in utp)  # uTP version 1 only, no TCP fallback
    flows = [f for f in _signature_flows(tmp_path, file) if f["ip_proto"] == 17]
    assert len(flows) == 1 and flows[0]["evidence"].startswith("bittorrent utp") and not flows[0]["is_vpn"]
    f = flows[0]
    seeder_sent = f["dst2src_payload_bytes"] if f["dst_port"] == 6881 else f["src2dst_payload_bytes"]
    leecher_sent = f["src2dst_payload_bytes"] + f["dst2src_payload_bytes"] - seeder_sent
    assert seeder_sent > 100_000 and seeder_sent > 10 * leecher_sent, (seeder_sent, leecher_sent)


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.timeout(200)
def test_turn_calls_carry_their_media_in_channel_data_on_one_flow_to_the_relay(tmp_path: Path) -> None:
    """The relayed call: authenticated allocation, a channel, then media framed by ChannelData both ways;
    the direct ICE-TCP call: media framed by a 2-byte length."""
    names = ("turn-call-udp", "turn-call-tcp", "turn-call-tls", "ice-tcp-call")
    _skip_unless_lab(names)
    rows = _capture_ok(tmp_path, 180, *names, "--duration", "3")

    udp = _udp_payloads(tmp_path / rows["turn-call-udp"].file, 3478)
    up = [p for k, p in udp if k[3] == 3478]
    down = [p for k, p in udp if k[1] == 3478]
    # Allocate, challenged (401) and then granted; ChannelBind granted.
    assert [int.from_bytes(p[:2], "big") for p in up[:3]] == [0x0003, 0x0003, 0x0009]
    assert [int.from_bytes(p[:2], "big") for p in down[:3]] == [0x0113, 0x0103, 0x0109]
    for side in (up, down):
        channel = [p for p in side if p[:2] == b"\x40\x00"]
        assert len(channel) > 100 and len(channel) > 0.9 * len(side)
        assert all(int.from_bytes(p[2:4], "big") == len(p) - 4 for p in channel)

    # Over TCP the same messages follow each other on the stream, ChannelData padded to 4 bytes.
    stream, media, i = _tcp_upstream(tmp_path / rows["turn-call-tcp"].file, 3478), 0, 0
    assert stream[:2] == b"\x00\x03"
    while i < len(stream):
        kind, length = int.from_bytes(stream[i:i + 2], "big"), int.from_bytes(stream[i + 2:i + 4], "big")
        media += kind == 0x4000
        i += 20 + length if kind < 0x4000 else 4 + length + (-length % 4)
    assert i == len(stream) and media > 100
    tls = _tcp_upstream(tmp_path / rows["turn-call-tls"].file, 443)
    assert tls[0] == 0x16 and tls[5] == 1  # a TLS ClientHello; TURN runs inside
    # ICE-TCP: no relay, every packet behind a 2-byte length (RFC 4571), RTP or STUN inside
    stream, i, kinds = _tcp_upstream(tmp_path / rows["ice-tcp-call"].file, 50000), 0, []
    while i < len(stream):
        kinds.append(stream[i + 2] >> 6)  # RTP: version 2; STUN: the first two bits are 0
        i += 2 + int.from_bytes(stream[i:i + 2], "big")
    assert i == len(stream) and kinds.count(2) > 100 and set(kinds) <= {0, 2}

    flows = _signature_flows(tmp_path, *(r.file for r in rows.values()))
    for row in rows.values():
        call = [f for f in flows if f["capture"].endswith(row.file) and f["packets"] > 100]
        assert len(call) == 1 and call[0]["dst_port"] == row.server_port and not call[0]["is_vpn"], row.file


@pytest.mark.lab
@pytest.mark.timeout(120)
def test_ping6_echoes_over_the_links_ipv6_addresses(tmp_path: Path) -> None:
    """The scenario switches IPv6 on for the link only: echo requests answered by replies, one flow."""
    import dpkt

    _skip_unless_lab(("ping6",))
    rows = _capture_ok(tmp_path, 100, "ping6", "--duration", "2")
    echo = []
    for _, buf in _frames(tmp_path / rows["ping6"].file):
        ip = dpkt.ethernet.Ethernet(buf).data
        assert not isinstance(ip, dpkt.ip.IP), "IPv4 in an IPv6-only capture"
        if isinstance(ip, dpkt.ip6.IP6) and ip.nxt == 58 and ip.data.type in (128, 129):
            echo.append((ip.data.type, bytes(ip.src)[-1], bytes(ip.dst)[-1]))
    requests = [e for e in echo if e[0] == 128]
    assert requests and all(e[1:] == (2, 1) for e in requests)
    assert len([e for e in echo if e[0] == 129]) == len(requests)
    flows = _signature_flows(tmp_path, rows["ping6"].file)
    # one flow between the two addresses: the echo, plus the neighbour advertisement that preceded it
    pings = [f for f in flows if f["ip_proto"] == 58 and {f["src_ip"], f["dst_ip"]} == {"fd00:0:140::1", "fd00:0:140::2"}]
    assert len(pings) == 1 and min(pings[0]["src2dst_packets"], pings[0]["dst2src_packets"]) >= len(requests)
    assert pings[0]["packets"] <= 2 * len(requests) + 2 and not pings[0]["is_vpn"]


@pytest.mark.lab
@pytest.mark.timeout(120)
def test_a_refused_key_exchange_group_makes_four_ike_sa_init_messages_on_500(tmp_path: Path) -> None:
    """The server asks for another group (INVALID_KE_PAYLOAD); the client sends IKE_SA_INIT again."""
    _skip_unless_lab(("ipsec-ikev2-ke-retry",))
    rows = _capture_ok(tmp_path, 100, "ipsec-ikev2-ke-retry", "--duration", "2")
    ike = [p for _, p in _udp_payloads(tmp_path / rows["ipsec-ikev2-ke-retry"].file, 500)]
    assert [p[18] for p in ike] == [34] * 4  # IKE_SA_INIT, twice each way; IKE_AUTH runs on 4500
    first_reply = ike[1]
    assert first_reply[16] == 41 and int.from_bytes(first_reply[34:36], "big") == 17  # Notify: INVALID_KE_PAYLOAD
    assert ike[2][:8] == ike[0][:8] and ike[2][8:16] == bytes(8)  # the same initiator SPI, no responder's yet
    assert len(ike[2]) - len(ike[0]) == 256 - 32  # a MODP-2048 key share instead of X25519's
    flows = _signature_flows(tmp_path, rows["ipsec-ikev2-ke-retry"].file)
    on_500 = [f for f in flows if 500 in (f["src_port"], f["dst_port"])]
    assert len(on_500) == 1 and on_500[0]["packets"] == 4 and on_500[0]["vpn_protocol"] == "ipsec-ike"


@pytest.mark.lab
@pytest.mark.timeout(120)
def test_a_server_under_load_makes_the_client_repeat_its_ike_sa_init_with_a_cookie(tmp_path: Path) -> None:
    """One half-open IKE_SA puts the server over its cookie threshold: COOKIE, then IKE_SA_INIT again."""
    _skip_unless_lab(("ipsec-ikev2-cookie",))
    rows = _capture_ok(tmp_path, 100, "ipsec-ikev2-cookie", "--duration", "2")
    datagrams = _udp_payloads(tmp_path / rows["ipsec-ikev2-cookie"].file, 500)
    probe = [p for key, p in datagrams if key[1] != key[3]]  # from an ephemeral port
    ike = [p for key, p in datagrams if key[1] == key[3] == 500]
    assert len(probe) == 2 and probe[1][:8] == probe[0][:8] and probe[1][8:16] != bytes(8)  # answered: half-open
    assert [p[18] for p in ike] == [34] * 4  # IKE_SA_INIT, twice each way; IKE_AUTH runs on 4500
    cookie = ike[1]
    assert cookie[16] == 41 and int.from_bytes(cookie[34:36], "big") == 16390  # Notify: COOKIE
    assert ike[2][:8] == ike[0][:8] and ike[2][8:16] == bytes(8)  # the same initiator SPI, no responder's yet
    notify = len(cookie) - 28
    assert ike[2][16] == 41 and ike[2][28 + 8:28 + notify] == cookie[28 + 8:]  # the cookie it was sent first,
    assert ike[2][28 + notify:] == ike[0][28:]  # then the same payloads
    assert len(ike[0]) > 500  # six proposals and a MODP-2048 key share
    flows = _signature_flows(tmp_path, rows["ipsec-ikev2-cookie"].file)
    on_500 = [f for f in flows if f["src_port"] == f["dst_port"] == 500]
    assert len(on_500) == 1 and on_500[0]["packets"] == 4 and on_500[0]["vpn_protocol"] == "ipsec-ike"


@pytest.mark.lab
@pytest.mark.timeout(120)
def test_a_capped_packet_size_splits_the_openvpn_handshake_into_small_control_packets(tmp_path: Path) -> None:
    flows = _scenario_signature_flows(tmp_path, "openvpn-udp-small", "2")
    capture = next(tmp_path.glob("openvpn-udp-small*.pcap"))
    payloads = [p for _, p in _udp_payloads(capture, 1194)]
    control = [p for p in payloads if p[0] >> 3 == 4]  # P_CONTROL_V1: TLS records in pieces
    assert len(control) >= 20 and max(map(len, control)) <= 130, sorted(map(len, control))
    assert any(p[0] >> 3 == 9 for p in payloads)  # and the tunnel carried data
    tunnel = [f for f in flows if 1194 in (f["src_port"], f["dst_port"])]
    assert len(tunnel) == 1 and tunnel[0]["vpn_protocol"] == "openvpn"


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.timeout(200)
def test_openvpn_25_from_debians_archive_acknowledges_apart_where_26_piggybacks(tmp_path: Path) -> None:
    """The 2.5 scenarios really run 2.5: its control packets carry at most one acknowledgement and
    its P_ACK_V1 packets do the rest, where 2.6's control packets carry growing lists."""
    from classifier.lab import debian_archive
    from classifier.lab.scenarios.openvpn import OPENVPN_25

    names = ("openvpn-udp", "openvpn25-udp")
    _skip_unless_lab(names)
    rows = _capture_ok(tmp_path, 180, *names, "--duration", "2")
    assert "OpenVPN 2.5" in rows["openvpn25-udp"].notes
    assert debian_archive.program(*OPENVPN_25).version.startswith("openvpn 2.5.")

    def control(name: str) -> tuple[list[int], int]:
        """Acknowledgement counts (byte 9) of P_CONTROL_V1 packets, and the number of P_ACK_V1 packets."""
        payloads = [p for _, p in _udp_payloads(tmp_path / rows[name].file, 1194)]
        return [p[9] for p in payloads if p[0] >> 3 == 4], sum(p[0] >> 3 == 5 for p in payloads)

    acks26, _ = control("openvpn-udp")
    acks25, ack_packets25 = control("openvpn25-udp")
    assert len(acks25) >= 6 and max(acks25) <= 1 and ack_packets25 >= 3, (acks25, ack_packets25)
    assert max(acks26) >= 3, acks26
    flows = _signature_flows(tmp_path, rows["openvpn25-udp"].file)
    assert [f["vpn_protocol"] for f in flows if 1194 in (f["src_port"], f["dst_port"])] == ["openvpn"]


@pytest.mark.lab
@pytest.mark.timeout(150)
def test_kernel_ipsec_scenarios_keep_ike_talking_beside_plain_esp(tmp_path: Path) -> None:
    """Dead-peer checks and rekeys after the set-up, IKE on the port a kernel host uses, ESP as protocol 50."""
    names = ("ipsec-ikev2-kernel", "ipsec-ikev1-kernel")
    _skip_unless_lab(names)
    rows = _capture_ok(tmp_path, 120, *names, "--duration", "4", "--traffic", "idle")  # idle: dead-peer checks
    flows = _signature_flows(tmp_path, *(r.file for r in rows.values()))
    for name, ike_ports in (("ipsec-ikev2-kernel", {500, 4500}), ("ipsec-ikev1-kernel", {500})):
        mine = [f for f in flows if f["capture"].endswith(rows[name].file) and f["ip_proto"] in (17, 50)]
        esp = [f for f in mine if f["ip_proto"] == 50]
        ike = {f["dst_port"]: f for f in mine if f["ip_proto"] == 17}
        assert set(ike) == ike_ports, name  # no ESP in UDP, no keepalives, nothing else
        assert all(f["vpn_protocol"] == "ipsec-ike" for f in ike.values()), name
        assert len(esp) == 1 and esp[0]["vpn_protocol"] == "ipsec-esp" and esp[0]["packets"] >= 4, name
        talk = ike[max(ike_ports)]  # the flow that carries IKE after IKE_SA_INIT / main mode
        assert "INFORMATIONAL" in talk["evidence"].upper(), talk["evidence"]
        assert talk["packets"] >= (6 if name.endswith("v2-kernel") else 11), talk["evidence"]  # set-up: 2, 9


@pytest.mark.lab
@pytest.mark.timeout(150)
def test_tinc_greets_in_cleartext_and_quicktun_sends_a_rising_clock(tmp_path: Path) -> None:
    """tinc: ID lines on TCP 655, then encrypted packets on UDP 655; QuickTun: a clock in every datagram."""
    names = ("tinc", "quicktun")
    _skip_unless_lab(names)
    rows = _capture_ok(tmp_path, 140, *names, "--duration", "2")

    import dpkt

    with open(tmp_path / rows["tinc"].file, "rb") as fh:
        tcp = [bytes(ip.data.data) for _, buf in dpkt.pcap.Reader(fh)
               if isinstance(ip := dpkt.ethernet.Ethernet(buf).data, dpkt.ip.IP)
               and isinstance(ip.data, dpkt.tcp.TCP) and ip.data.data]
    assert tcp[0].startswith(b"0 client 17")  # tinc 1.0's ID request, before RSA and encryption
    udp = _udp_payloads(tmp_path / rows["tinc"].file, 655)
    assert len(udp) > 20 and {(k[1], k[3]) for k, _ in udp} == {(655, 655)}

    qt = _udp_payloads(tmp_path / rows["quicktun"].file, 2998)
    for side in {k[0] for k, _ in qt}:
        clock = [int.from_bytes(p[:12], "big") for k, p in qt if k[0] == side]  # TAI64N seconds + nanoseconds
        assert len(clock) > 20 and all(b > a for a, b in itertools.pairwise(clock)), side
        assert sum(b - a == 1 for a, b in itertools.pairwise(clock)) < len(clock) // 10  # a clock, not a counter

    flows = _signature_flows(tmp_path, *(r.file for r in rows.values()))
    tinc = [f for f in flows if 655 in (f["src_port"], f["dst_port"])]
    assert sorted(f["ip_proto"] for f in tinc) == [6, 17] and all(f["vpn_protocol"] == "tinc" for f in tinc)
    assert "2 ID lines" in next(f["evidence"] for f in tinc if f["ip_proto"] == 6)  # the server's in one segment
    quicktun = [f for f in flows if 2998 in (f["src_port"], f["dst_port"])]
    assert len(quicktun) == 1 and quicktun[0]["vpn_protocol"] == "quicktun", quicktun


@pytest.mark.lab
@pytest.mark.timeout(120)
def test_softether_carries_the_tunnel_in_tls_on_443(tmp_path: Path) -> None:
    flows = _scenario_signature_flows(tmp_path, "softether", "2")
    on_443 = sorted((f for f in flows if f["ip_proto"] == 6 and f["dst_port"] == 443), key=lambda f: -f["packets"])
    tunnel = on_443[0]
    assert tunnel["packets"] > 50 and tunnel["src2dst_tls_record_frac"] > 0.5 and tunnel["dst2src_tls_record_frac"] > 0.5
    assert not tunnel["is_vpn"]  # no signature names SoftEther: the model has to find it


@pytest.mark.lab
@pytest.mark.timeout(120)
def test_a_port_scan_is_many_short_flows_and_no_tunnel(tmp_path: Path) -> None:
    flows = _scenario_signature_flows(tmp_path, "port-scan", "3")
    tcp = [f for f in flows if f["ip_proto"] == 6]
    assert len(tcp) >= 30, len(tcp)  # the top 40 ports, one flow each
    assert sum(f["packets"] <= 3 for f in tcp) >= 0.9 * len(tcp)
    assert any(f["dst_port"] == 80 and f["packets"] >= 3 for f in tcp)  # the open port answers
    assert not any(f["is_vpn"] for f in flows)


@pytest.mark.lab
@pytest.mark.timeout(200)
def test_vmess_and_trojan_carry_https_and_no_signature_names_them(tmp_path: Path) -> None:
    """The proxies: VMess random from the first byte, Trojan TLS records both ways, no signature."""
    flows, (vmess, trojan) = _proxy_flows(tmp_path, ("vmess", "trojan"), 10086, 443)
    assert len(vmess) >= 2 and len(trojan) >= 2, (len(vmess), len(trojan))  # one connection per fetch
    assert _random_from_first_byte(vmess), [f["src2dst_first_payload_bits"] for f in vmess]
    # every payload packet opens a TLS record, but for those that carry the rest of a record longer
    # than a segment: the server's (certificates, the proxied flight and page) often do, 3 to 5 of its first 8
    assert all(f["src2dst_tls_record_frac"] > 0.5 and f["dst2src_tls_record_frac"] >= 0.25 for f in trojan), \
        [(f["src2dst_tls_record_frac"], f["dst2src_tls_record_frac"]) for f in trojan]
    # each connection carries one proxied HTTPS fetch: the inner ClientHello (517 bytes) and request one
    # way (about 1 KB with TLS 1.3, whose client sends no key exchange after the hello), the blob the other
    # (connections the capture's end cut short are left out: the fetch was still under way)
    done = [f for f in vmess + trojan if f["end_reason"] != "eof"]
    sizes = [(f["dst_port"], f["src2dst_payload_bytes"], f["dst2src_payload_bytes"], f["end_reason"]) for f in flows]
    assert len(done) >= 3 and all(f["src2dst_payload_bytes"] > 600 and f["dst2src_payload_bytes"] > 20000
                                  for f in done), sizes
    assert not any(f["is_vpn"] for f in flows)  # nothing a signature can name: the model's to find


@pytest.mark.lab
@pytest.mark.timeout(200)
def test_browser_weight_https_retries_its_hello_when_the_server_asks(tmp_path: Path) -> None:
    """https-browser: TLS 1.3 with heavy first requests; with --seed 5 the server forces a HelloRetryRequest."""
    _skip_unless_lab(("https-browser",))
    bursts = {}
    for seed in ("1", "5"):  # the run's draws (tls_protocols, browser_setup): 1 no retry, 5 retry; both TLS 1.3
        out = tmp_path / seed
        rows = _capture_ok(out, 90, "https-browser", "--vary", "--seed", seed, "--duration", "3")
        flows = _signature_flows(out, rows["https-browser"].file)
        bursts[seed] = [f["payload_bursts"] for f in flows if f["ip_proto"] == 6 and len(f["payload_bursts"]) >= 3]
        assert bursts[seed] and not any(f["is_vpn"] for f in flows)
    # a ClientHello, then either the whole server flight or only the ~100-byte retry request and a second hello
    assert all(b[0] >= 500 and b[1] <= -500 for b in bursts["1"]), bursts["1"]
    assert all(b[0] >= 500 and -200 <= b[1] < 0 and b[2] >= 500 and b[3] <= -500 for b in bursts["5"]), bursts["5"]
    # a browser's request (cookies, headers) of a few hundred bytes or more follows each handshake
    assert all(max(b[2:]) >= 300 for b in bursts["1"]), bursts["1"]


@pytest.mark.lab
@pytest.mark.timeout(240)
def test_real_browsers_over_tls_and_quic_are_no_tunnel(tmp_path: Path) -> None:
    """https-chromium, quic-chromium, https-firefox: browsers' own TLS and QUIC; neither stage calls them VPN."""
    names = ("https-chromium", "quic-chromium", "https-firefox")
    _skip_unless_lab(names)
    rows = _capture_ok(tmp_path, 200, *names, "--duration", "3")
    flows = {name: _signature_flows(tmp_path, rows[name].file) for name in names}
    web = {name: [f for f in flows[name] if f["ip_proto"] == (17 if "quic" in name else 6) and f["dst_port"] == 443]
           for name in names}
    assert all(web.values()), {k: [(f["ip_proto"], f["dst_port"]) for f in v] for k, v in flows.items()}
    # BoringSSL's and NSS's ClientHellos with a post-quantum key share: well over a kilobyte (curl's: ~500 B)
    for name in ("https-chromium", "https-firefox"):
        assert all(f["payload_bursts"][0] > 1500 for f in web[name]), [f["payload_bursts"][:2] for f in web[name]]
    # a client pads the datagrams of its Initial packets to at least 1200 bytes (RFC 9000, 14.1): IP size 1228
    assert all(f["first_sizes"][0] >= 1228 for f in web["quic-chromium"]), [f["first_sizes"][:3] for f in web["quic-chromium"]]
    out = tmp_path / "labelled.jsonl"
    _vpnid("classify", "-q", *(str(tmp_path / rows[n].file) for n in names), "-o", str(out))
    labelled = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(labelled) == sum(len(v) for v in flows.values())
    assert not any(f["is_vpn"] for f in labelled), [f["evidence"] for f in labelled if f["is_vpn"]]


@pytest.mark.lab
@pytest.mark.timeout(200)
def test_a_browser_through_shadowsocks_and_trojan_nests_its_own_hello(tmp_path: Path) -> None:
    """shadowsocks-browser, trojan-browser: Chromium's 1.8 KB ClientHello inside the proxy's stream."""
    flows, (ss, trojan) = _proxy_flows(tmp_path, ("shadowsocks-browser", "trojan-browser"), 8388, 443)
    assert ss and trojan and len(ss) + len(trojan) == len(flows), [(f["ip_proto"], f["dst_port"]) for f in flows]
    # Shadowsocks: random from the first byte, and that first flight is the browser's hello (salt and tags added)
    assert _random_from_first_byte(ss), [f["src2dst_first_payload_bits"] for f in ss]
    assert any(f["payload_bursts"] and f["payload_bursts"][0] > 1700 for f in ss), [f["payload_bursts"] for f in ss]
    # Trojan: its own ~500-byte hello, the server's flight, then (in connections the browser used) the
    # browser's hello inside, more than a kilobyte after the outer handshake
    assert all(f["payload_bursts"][0] < 1000 and f["src2dst_tls_record_frac"] > 0.5 for f in trojan), \
        [(f["payload_bursts"], f["src2dst_tls_record_frac"]) for f in trojan]
    assert any(max(f["payload_bursts"][2:], default=0) > 1500 for f in trojan), [f["payload_bursts"] for f in trojan]
    assert not any(f["is_vpn"] for f in flows)  # nothing a signature can name: the model's to find


@pytest.mark.lab
@pytest.mark.timeout(150)
def test_a_udp_scans_unanswered_ike_probes_are_no_tunnel(tmp_path: Path) -> None:
    """nmap's UDP scan sends 500 and 4500 an IKEv1 first message that nobody answers: no VPN flow, either stage."""
    _skip_unless_lab(("port-scan",))
    # --vary --seed 4 draws a SYN scan plus a UDP scan of the top 20 ports, which include 500 and 4500
    rows = _capture_ok(tmp_path, 120, "port-scan", "--vary", "--seed", "4", "--duration", "3")
    pcap = tmp_path / rows["port-scan"].file
    probes = [(k, p) for port in (500, 4500) for k, p in _udp_payloads(pcap, port)]
    assert {k[3] for k, _ in probes} == {500, 4500}, "the scan did not reach the IKE ports"
    assert all(k[3] in (500, 4500) for k, _ in probes), "an IKE port answered"
    ike = [p[4:] if p.startswith(bytes(4)) else p for _, p in probes]
    assert all(len(p) >= 28 and p[17] == 0x10 and p[8:16] == bytes(8) for p in ike)  # IKEv1, no responder SPI
    out = tmp_path / "labelled.jsonl"
    _vpnid("classify", "-q", str(pcap), "-o", str(out))  # signatures, then the shipped model
    flows = [json.loads(line) for line in out.read_text().splitlines()]
    ike_flows = [f for f in flows if f["ip_proto"] == 17 and f["dst_port"] in (500, 4500)]
    assert ike_flows and not any(f["is_vpn"] for f in flows), [f["evidence"] for f in flows if f["is_vpn"]]
    assert all(f["detection"] == "model" for f in ike_flows)  # no signature claims an unanswered initiation


@pytest.mark.lab
@pytest.mark.timeout(120)
def test_interrupted_capture_leaves_nothing_behind(tmp_path: Path) -> None:
    _skip_unless_lab()
    started = time.time()
    proc = _start_vpnid("lab", "capture", "wireguard", "-o", str(tmp_path), "--duration", "60")
    try:
        deadline = time.monotonic() + 30
        # Wait until the tunnel is up and traffic flows: its namespaces and wireguard-go exist.
        while time.monotonic() < deadline:
            state = _lab_state(proc.pid, started)
            if state["namespaces"] and any("wireguard-go" in p for p in state["processes"]):
                break
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.2)
        else:
            pytest.fail("the lab did not start within 30 s")
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert not (tmp_path / "wireguard.pcap").exists()  # no half-finished capture
    _assert_nothing_left(proc.pid, started)


@pytest.mark.lab
@pytest.mark.timeout(150)
def test_inner_traffic_kind_and_a_service_scenario(tmp_path: Path) -> None:
    """A proxy carrying iperf3 through ss-tunnel, and RTP voice: notes and packets as declared."""
    import dpkt

    _skip_unless_lab((*LAB_SCENARIOS, "shadowsocks", "rtp-voice"))
    rows = _capture_ok(tmp_path, 120, "shadowsocks", "rtp-voice", "--traffic", "iperf", "--duration", "2")
    assert rows["shadowsocks"].notes.endswith("traffic iperf (tcp 600 kbit/s, 1200-byte writes)")
    assert rows["rtp-voice"].notes == all_scenarios()["rtp-voice"].notes  # negatives ignore --traffic
    n = all_scenarios()["rtp-voice"].number
    directions: dict[tuple[str, int], int] = {}
    for (src, _sport, _dst, dport), _payload in _udp_payloads(tmp_path / rows["rtp-voice"].file, 5004):
        directions[(src, dport)] = directions.get((src, dport), 0) + 1
    for side in (1, 2):  # both ends send RTP to port 5004, about one packet per 20 ms
        assert directions.get((f"198.18.{n}.{side}", 5004), 0) > 40, directions
    with open(tmp_path / rows["shadowsocks"].file, "rb") as fh:
        ss_bytes = sum(len(buf) for _ts, buf in dpkt.pcap.Reader(fh))
    assert ss_bytes > 100_000  # 2 s of iperf3 at 600 kbit/s went through the proxy


@pytest.mark.lab
@pytest.mark.timeout(150)
def test_a_path_between_the_hosts_delays_round_trips_and_caps_packets_at_its_mtu(tmp_path: Path) -> None:
    """With ``--path`` the hosts talk through the delay line: a round trip takes twice the
    one-way delay, and no packet is larger than the path's MTU (TCP's MSS follows it)."""
    import dpkt

    _skip_unless_lab((*LAB_SCENARIOS, "openvpn-tcp"))
    rows = _capture_ok(tmp_path, 120, "wireguard", "openvpn-tcp", "--duration", "2",
                       "--path", "delay=50,mtu=1400")
    for row in rows.values():
        assert row.notes.endswith("; path 50 ms one way, MTU 1400"), row.notes
    wg = _timed_udp_payloads(tmp_path / rows["wireguard"].file, 51820)
    response = next(ts for ts, payload in wg if payload[:1] == b"\x02")  # handshake response (server)
    after = next(ts for ts, payload in wg if ts > response and payload[:1] == b"\x04")  # client's first data
    assert 0.100 <= after - response < 0.300  # out to the client and back: two 50 ms legs
    sizes, mss = [], []
    for name in ("wireguard", "openvpn-tcp"):
        for _ts, buf in _frames(tmp_path / rows[name].file):
            ip = dpkt.ethernet.Ethernet(buf).data
            if isinstance(ip, dpkt.ip.IP):
                sizes.append(ip.len)
                tcp = ip.data
                if isinstance(tcp, dpkt.tcp.TCP) and tcp.flags & dpkt.tcp.TH_SYN:
                    mss += [int.from_bytes(v, "big") for k, v in dpkt.tcp.parse_opts(tcp.opts) if k == 2]
    assert max(sizes) <= 1400 and max(sizes) > 1300  # bulk packets fill the smaller MTU
    assert mss and set(mss) == {1360}


@pytest.mark.lab
@pytest.mark.timeout(120)
def test_a_capture_at_the_client_sees_the_round_trip_before_the_answer(tmp_path: Path) -> None:
    """``--tap client`` captures at the client's end of the path: the WireGuard handshake
    response arrives a round trip after the initiation (at the server's end it leaves at once)."""
    _skip_unless_lab()
    rows = _capture_ok(tmp_path, 90, "wireguard", "--duration", "2", "--path", "delay=50", "--tap", "client")
    assert rows["wireguard"].notes.endswith("; path 50 ms one way, MTU 1500; captured at the client")
    wg = _timed_udp_payloads(tmp_path / rows["wireguard"].file, 51820)
    init = next(ts for ts, payload in wg if payload[:1] == b"\x01")
    response = next(ts for ts, payload in wg if ts > init and payload[:1] == b"\x02")
    assert 0.100 <= response - init < 0.300



@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.timeout(150)
def test_dnscrypt_scenario_sends_padded_encrypted_queries_the_signature_names(tmp_path: Path) -> None:
    """dnscrypt-proxy (Debian 11's) really speaks DNSCrypt v2 to dnsdist: a cleartext certificate
    lookup, then queries padded to 64-byte blocks behind one client magic, answers behind the
    resolver magic; the signature names every flow, lookups included, as encrypted DNS."""
    from classifier.lab import debian_archive
    from classifier.lab.scenarios.dnscrypt import DNSCRYPT_PORT, DNSCRYPT_PROXY, PROVIDER

    _skip_unless_lab(("dnscrypt",))
    rows = _capture_ok(tmp_path, 120, "dnscrypt", "--duration", "4")
    assert rows["dnscrypt"].vpn is False
    assert debian_archive.program(*DNSCRYPT_PROXY).version.startswith("dnscrypt-proxy 2.")
    datagrams = _udp_payloads(tmp_path / rows["dnscrypt"].file, DNSCRYPT_PORT)
    queries = [p for (_, _, _, dport), p in datagrams if dport == DNSCRYPT_PORT]
    answers = [p for (_, sport, _, _), p in datagrams if sport == DNSCRYPT_PORT]
    magic, count = Counter(p[:8] for p in queries).most_common(1)[0]
    encrypted = [p for p in queries if p[:8] == magic]
    lookups = [_dns_question(p) for p in queries if p[:8] != magic]
    assert (PROVIDER, 16) in lookups, lookups  # the certificate, asked in cleartext (TXT)
    assert count >= 5 and magic != b"r6fnvWj8", count
    assert all(len(p) % 64 == 0 and len(p) >= 256 for p in encrypted), sorted({len(p) for p in encrypted})
    sealed = [p for p in answers if p.startswith(b"r6fnvWj8")]
    assert len(sealed) >= len(encrypted) - 1 and min(map(len, sealed)) >= 8 + 24 + 16
    flows = _signature_flows(tmp_path, rows["dnscrypt"].file)
    # every flow, the certificate lookups too, is named; none is left to the model
    assert len(flows) >= 5 and all(f["tunnel"] == "dnscrypt" and not f["is_vpn"] for f in flows), \
        [(f["tunnel"], f["is_vpn"], f["packets"]) for f in flows]


def _dns_question(message: bytes) -> tuple[str, int]:
    """(name, type) of a DNS message's first question; the rest (padding too) is not read."""
    labels, off = [], 12
    while message[off]:
        labels.append(message[off + 1:off + 1 + message[off]].decode("ascii", "replace"))
        off += 1 + message[off]
    return ".".join(labels), int.from_bytes(message[off + 1:off + 3], "big")


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kcptun_scenario_relays_fetches_over_encrypted_kcp(tmp_path: Path) -> None:
    """kcptun really carries the HTTP fetches over UDP: one UDP flow to its port, the downloads
    coming back through it, every datagram random from its first byte (kcp-go's random nonce
    first, then the encrypted KCP header), and nothing a signature names: the model's job."""
    from classifier.lab.scenarios.kcptun import KCPTUN_PORT

    _skip_unless_lab(("kcptun",))
    rows = _capture_ok(tmp_path, 90, "kcptun", "--duration", "3")
    assert rows["kcptun"].vpn is True
    datagrams = _udp_payloads(tmp_path / rows["kcptun"].file, KCPTUN_PORT)
    down = [p for (_, sport, _, _), p in datagrams if sport == KCPTUN_PORT]
    up = [p for (_, _, _, dport), p in datagrams if dport == KCPTUN_PORT]
    assert len(up) >= 5 and sum(map(len, down)) > 20_000, (len(up), sum(map(len, down)))
    # no header repeats: a cleartext KCP datagram would start with its conversation id every time
    assert len({p[:4] for p in down}) > 0.9 * len(down) and len({p[:4] for p in up}) > 0.9 * len(up)
    flows = _signature_flows(tmp_path, rows["kcptun"].file)
    assert [(f["ip_proto"], f["dst_port"]) for f in flows] == [(17, KCPTUN_PORT)]
    assert flows[0]["vpn_protocol"] is None and flows[0]["tunnel"] is None
    # random from the first byte: set bits per byte near 4 over every datagram's first 20 bytes
    # (nonce and checksum; the engine's first-payload measure is one short packet, too noisy here)
    heads = b"".join(p[:20] for p in up + down)
    assert 3.8 < sum(bin(b).count("1") for b in heads) / len(heads) < 4.2


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_iodine_scenarios_tunnel_ip_over_dns_and_the_signature_names_them(tmp_path: Path) -> None:
    """iodine really carries the pings and fetches: over DNS (every datagram a DNS message of one
    question, long data names) and, in raw mode, behind its 0x10d19e header after a DNS
    handshake; one UDP flow to port 53 each, which the signature names from the handshake."""
    _skip_unless_lab(("iodine", "iodine-raw"))
    rows = _capture_ok(tmp_path, 150, "iodine", "iodine-raw", "--duration", "3")
    dns = _udp_payloads(tmp_path / rows["iodine"].file, 53)
    assert len(dns) > 40 and all(int.from_bytes(p[4:6], "big") == 1 for _, p in dns)  # one question each
    assert sum(p[12] >= 32 for (_, _, _, dport), p in dns if dport == 53) > 10  # data in long names
    raw = _udp_payloads(tmp_path / rows["iodine-raw"].file, 53)
    assert sum(p.startswith(b"\x10\xd1\x9e") for _, p in raw) > 10 and raw[0][1][4:6] == b"\x00\x01"
    flows = _signature_flows(tmp_path, rows["iodine"].file, rows["iodine-raw"].file)
    assert [(f["ip_proto"], f["dst_port"], f["vpn_protocol"], f["is_vpn"]) for f in flows] == [(17, 53, "iodine", True)] * 2
    assert all("handshake in DNS" in f["evidence"] for f in flows)
    assert sum("raw-mode datagram" in f["evidence"] for f in flows) == 1


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ptunnel_scenario_relays_fetches_in_pings_and_the_signature_names_it(tmp_path: Path) -> None:
    """ptunnel-ng really carries the fetches in ICMP echo: requests from the client, replies from
    the proxy (not the kernel's: it is told to stay quiet), the HTTP response inside the
    replies, and one ICMP flow that the signature names by its header."""
    import dpkt

    _skip_unless_lab(("ptunnel",))
    rows = _capture_ok(tmp_path, 90, "ptunnel", "--duration", "3")
    echoes = []
    for _, buf in _frames(tmp_path / rows["ptunnel"].file):
        ip = dpkt.ethernet.Ethernet(buf).data
        if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.icmp.ICMP):
            echoes.append((ip.data.type, bytes(ip.data.data)))
    replies = [d for t, d in echoes if t == 0]
    assert sum(t == 8 for t, _ in echoes) >= 3 and len(replies) >= 5
    assert all(d[4:8] == b"\xde\xad\xc0\xde" for _, d in echoes)  # after identifier and sequence: the magic
    assert any(b"HTTP/1." in d for d in replies)  # the proxied response rides in the replies
    flows = _signature_flows(tmp_path, rows["ptunnel"].file)
    assert [(f["ip_proto"], f["vpn_protocol"], f["is_vpn"]) for f in flows] == [(1, "ptunnel", True)]
    assert "client and proxy" in flows[0]["evidence"]


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_dns2tcp_scenario_relays_fetches_over_dns_and_the_signature_names_it(tmp_path: Path) -> None:
    """dns2tcp really carries the fetches in TXT queries and answers on UDP 53: its session
    commands in the first queries' names, the HTTP request Base64-encoded in later ones, and one
    UDP flow that the signature names."""
    _skip_unless_lab(("dns2tcp",))
    rows = _capture_ok(tmp_path, 90, "dns2tcp", "--duration", "3")
    dns = _udp_payloads(tmp_path / rows["dns2tcp"].file, 53)
    queries = [p for (_, _, _, dport), p in dns if dport == 53]
    assert len(queries) > 20 and all(int.from_bytes(p[4:6], "big") == 1 for p in queries)
    assert any(b"\x05=auth" in p for p in queries) and any(b"\x08=connect" in p for p in queries)
    assert any(b"GET /blob" in _base64_in_first_label(p) for p in queries)  # the request, encoded
    flows = _signature_flows(tmp_path, rows["dns2tcp"].file)
    assert [(f["ip_proto"], f["dst_port"], f["vpn_protocol"], f["is_vpn"]) for f in flows] == [(17, 53, "dns2tcp", True)]


def _base64_in_first_label(message: bytes) -> bytes:
    """The bytes a DNS question's first label decodes to as Base64, at whichever of the four
    alignments decodes (dns2tcp puts a short header before the data)."""
    import base64
    import binascii

    label = message[13:13 + message[12]]
    out = b""
    for start in range(4):
        chunk = label[start:start + (len(label) - start) // 4 * 4]
        try:
            out += base64.b64decode(chunk, validate=True)
        except (binascii.Error, ValueError):
            continue
    return out
