"""Signatures on real captures: the public corpus (against nDPI's labels) and the lab captures.

Public corpus (../shared/pcaps/public): every file where nDPI labels a flow with a real
VPN protocol (not a port or IP-list guess) must yield that protocol here; every file
marked ``contains_vpn=no`` must yield no VPN flow. Lab captures (pcaps/MANIFEST.csv):
every tunnel file yields its protocol (and the mid-flow flag for mid-flow captures),
no non-VPN file yields a VPN flow.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from classifier.errors import ErrorLog
from classifier.flows.api import iter_flow_batches
from classifier.flows.batch import FlowBatch
from classifier.signatures import detect_verdicts

REPO = Path(__file__).resolve().parents[1]
PUBLIC = REPO.parent / "shared" / "pcaps" / "public"
LAB = REPO / "pcaps"

#: nDPI protocol label -> our label family (prefix). Provider labels found from TLS
#: names or IP lists (NordVPN, ProtonVPN, TunnelBear, ...) are not protocol detections.
NDPI_PROTOCOLS = {"OpenVPN": "openvpn", "IPSec": "ipsec", "WireGuard": "wireguard", "PPTP": "pptp",
                  "Softether": "softether", "Tailscale": "tailscale", "TINC": "tinc",
                  "FortiClient": "fortinet-sslvpn"}
#: Files whose only nDPI VPN label is a port guess or an IP-list match (MANIFEST notes).
PORT_OR_IP_ONLY = {"ntop_nDPI/synscan.pcap", "ntop_nDPI/anyconnect-vpn.pcap", "ntop_nDPI/openvpn_obfuscated.pcapng"}


def _manifest(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _verdicts(path: Path):
    log = ErrorLog(quiet=True)
    batch = FlowBatch.concat(list(iter_flow_batches([str(path)], log=log)))
    return [v for v in detect_verdicts(batch) if v is not None]


def _public_rows() -> list[dict[str, str]]:
    if not (PUBLIC / "MANIFEST.csv").is_file():
        return []
    return _manifest(PUBLIC / "MANIFEST.csv")


needs_public = pytest.mark.skipif(not (PUBLIC / "MANIFEST.csv").is_file(),
                                  reason=f"public capture corpus not present at {PUBLIC}")
needs_lab = pytest.mark.skipif(not (LAB / "MANIFEST.csv").is_file(),
                               reason=f"lab captures not present at {LAB}")


def _ndpi_cases():
    out = []
    for r in _public_rows():
        if r["file"] in PORT_OR_IP_ONLY or not r["flows_vpn_per_ndpi"].isdigit():
            continue
        want = sorted({NDPI_PROTOCOLS[x] for x in r["ndpi_labels"].split(";") if x in NDPI_PROTOCOLS})
        if int(r["flows_vpn_per_ndpi"]) > 0 and want:
            out.append(pytest.param(r["file"], want, id=r["file"]))
    return out


@needs_public
@pytest.mark.parametrize(("name", "want"), _ndpi_cases() or [pytest.param("", [], marks=pytest.mark.skip)])
def test_public_ndpi_vpn_files_found(name, want):
    got = Counter(v.protocol for v in _verdicts(PUBLIC / name) if v.is_vpn)
    for family in want:
        assert any(p.startswith(family) for p in got), f"{name}: nDPI finds {family}, we found {dict(got)}"


@needs_public
def test_public_non_vpn_files_yield_no_vpn():
    bad = {}
    for r in _public_rows():
        if r["contains_vpn"] != "no":
            continue
        vpn = [v for v in _verdicts(PUBLIC / r["file"]) if v.is_vpn]
        if vpn:
            bad[r["file"]] = [(v.protocol, v.evidence) for v in vpn]
    assert not bad


@needs_public
def test_public_telegram_connections_are_named_and_no_vpn():
    """The Telegram call's TCP connections are MTProto's obfuscated transport, random from the first byte."""
    tg = [v for v in _verdicts(PUBLIC / "ntop_nDPI/telegram_videocall.pcapng") if v.protocol == "telegram"]
    assert len(tg) >= 5 and not any(v.is_vpn for v in tg) and all("abridged" in v.evidence for v in tg)


@needs_public
def test_public_dnscrypt_exchanges_are_named_and_no_vpn():
    """Each DNSCrypt query and its answer: the resolver magic, and the client nonce echoed."""
    v = _verdicts(PUBLIC / "ntop_nDPI/dnscrypt-v2.pcap")
    assert len(v) == 3 and all(x and x.protocol == "dnscrypt" and not x.is_vpn and "echoing" in x.evidence for x in v)


@needs_public
def test_public_bittorrent_peer_wires_and_utp_are_named_and_no_vpn():
    """All 24 plain peer-wire flows by their handshake; of the uTP capture's two flows, the uTP one
    by its header (the other is DHT)."""
    tcp = _verdicts(PUBLIC / "ntop_nDPI/bittorrent.pcap")
    assert len(tcp) == 24 and all(x.protocol == "bittorrent" and not x.is_vpn for x in tcp)
    assert sum("same info hash" in x.evidence for x in tcp) >= 15
    utp = _verdicts(PUBLIC / "ntop_nDPI/bittorrent_utp.pcap")
    assert len(utp) == 1 and utp[0].protocol == "bittorrent" and "utp" in utp[0].evidence and not utp[0].is_vpn


@needs_public
def test_public_kcp_game_sessions_are_named_and_no_vpn():
    """Genshin Impact's three UDP sessions (miHoYo's KCP: a token after the id, opened by a
    handshake whose answer names the id) and the KCP test capture's conversation."""
    game = _verdicts(PUBLIC / "ntop_nDPI/genshin-impact.pcap")
    kcp = [v for v in game if v.protocol == "kcp"]
    assert len(kcp) == 3 and not any(v.is_vpn for v in game)
    assert all(v.confidence == 0.95 and "which names that id" in v.evidence for v in kcp)
    test = _verdicts(PUBLIC / "ntop_nDPI/kcp.pcap")
    assert [v.protocol for v in test] == ["kcp"] and "0x0000000a" in test[0].evidence


@needs_public
def test_public_iodine_capture_is_named_by_its_handshake():
    """nDPI calls it plain DNS; its codec checks, downstream pattern and version answer are iodine's."""
    v = _verdicts(PUBLIC / "ntop_nDPI/dns-tunnel-iodine.pcap")
    assert [x.protocol for x in v] == ["iodine"] and v[0].is_vpn and v[0].confidence == 0.95
    assert "upstream codec check" in v[0].evidence and "8-bit names" in v[0].evidence and not v[0].midflow


@needs_public
def test_public_icmp_tunnel_is_named_by_the_packets_in_its_pings():
    """nDPI calls it plain ICMP; every echo payload is an IPv4 packet whose length fills it."""
    v = _verdicts(PUBLIC / "ntop_nDPI/icmp-tunnel.pcap")
    assert [x.protocol for x in v] == ["icmp-tunnel"] * 2 and all(x.is_vpn for x in v)
    assert all("16 of 16 packets carry an IPv4 packet" in x.evidence for x in v)


@needs_public
def test_public_tunnel_files_get_tunnel_labels():
    for name, label in (("ntop_nDPI/vxlan.pcap", "vxlan"), ("zeek_zeek/gre-sample.pcap", "gre"),
                        ("ntop_nDPI/4in4tunnel.pcap", "ipip"), ("the-tcpdump-group_tcpdump/geneve.pcap", "geneve")):
        vs = _verdicts(PUBLIC / name)
        assert any(v.protocol == label and not v.is_vpn for v in vs), name


def _lab_rows():
    return _manifest(LAB / "MANIFEST.csv") if (LAB / "MANIFEST.csv").is_file() else []


#: Tunnels whose every byte is encrypted from the first one: no signature can see them
#: (the model's job, docs/detection.md).
OPAQUE = {"shadowsocks", "stunnel-openvpn"}


@needs_lab
@pytest.mark.lab
@pytest.mark.parametrize("row", [pytest.param(r, id=r["file"]) for r in _lab_rows() if (LAB / r["file"]).is_file()])
def test_lab_captures(row):
    vs = _verdicts(LAB / row["file"])
    vpn = [v for v in vs if v.is_vpn]
    if row["vpn"] != "yes":
        assert not vpn, f"{row['file']}: {[(v.protocol, v.evidence) for v in vpn]}"
        return
    if row["protocol"] in OPAQUE:
        # No signature applies; one that fires would be guessing (never by port alone).
        assert not vpn, f"{row['file']}: a signature claimed an opaque tunnel: {[v.evidence for v in vpn]}"
        return
    family = row["protocol"].split("-")[0]
    hits = [v for v in vpn if v.protocol.split("-")[0] == family]
    assert hits, f"{row['file']}: expected {row['protocol']}, got {[v.protocol for v in vpn]}"
    if row["midflow"] == "yes":
        assert any(v.midflow for v in hits), f"{row['file']}: mid-flow capture not flagged"
    elif "crafted" not in row["file"]:
        # Crafted data-only captures hold no session setup, which the flag rightly reports.
        assert any(not v.midflow for v in hits), f"{row['file']}: start was captured but flagged mid-flow"

