"""``vpnid classify`` end to end: output columns, formats, metadata, summary, exit status."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from classifier.cli.main import main
from classifier.flows.schema import CLASSIFY_SCHEMA

REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "pcaps"
WG = LAB / "wireguard.pcap"
DNS = LAB / "dns.pcap"

needs_lab = pytest.mark.skipif(not (WG.is_file() and DNS.is_file()), reason="lab captures pcaps/*.pcap absent")


@needs_lab
def test_classify_parquet(tmp_path, capsys):
    out = tmp_path / "out.parquet"
    rc = main(["classify", str(WG), str(DNS), "-o", str(out), "--no-model"])
    assert rc == 0
    t = pq.read_table(out)
    assert t.schema.names == CLASSIFY_SCHEMA.names
    rows = t.to_pylist()
    wg = [r for r in rows if r["capture"].endswith("wireguard.pcap")]
    dns = [r for r in rows if r["capture"].endswith("dns.pcap")]
    assert wg and all(r["is_vpn"] and r["vpn_protocol"] == "wireguard" and r["detection"] == "signature"
                      for r in wg)
    assert wg[0]["evidence"] and 0 < wg[0]["confidence"] <= 1
    assert dns and not any(r["is_vpn"] for r in dns)
    assert all(r["detection"] is None and r["vpn_protocol"] is None for r in dns)
    meta = pq.read_metadata(out).metadata
    assert json.loads(meta[b"vpnid.inputs"]) == [str(WG), str(DNS)]
    assert b"vpnid.model" in meta
    err = capsys.readouterr().err
    assert "VPN (wireguard" in err and f"{len(rows)} flows" in err


@needs_lab
def test_classify_no_signatures_and_jsonl(tmp_path):
    out = tmp_path / "out.jsonl"
    assert main(["classify", str(WG), "-o", str(out), "--no-signatures", "--no-model", "-q"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows and not any(r["is_vpn"] for r in rows)
    assert "src_ip" in rows[0] and "evidence" in rows[0]


@needs_lab
def test_classify_csv_and_partial_input_errors(tmp_path):
    bad = tmp_path / "broken.pcap"
    bad.write_bytes(b"\xd4\xc3\xb2\xa1" + b"\x00" * 10)
    good = tmp_path / "wg.pcap"
    shutil.copy(WG, good)
    out = tmp_path / "out.csv"
    rc = main(["classify", str(good), str(bad), "-o", str(out), "--no-model", "-q"])
    assert rc == 1
    text = out.read_text()
    assert "wireguard" in text and text.splitlines()[0].startswith('"flow_id"')


def test_classify_usage_errors(tmp_path):
    out = tmp_path / "o.parquet"
    assert main(["classify", "x.pcap", "-o", str(out), "--model", "m.skops", "--no-model"]) == 2
    assert main(["classify", "x.pcap", "-o", str(out), "--strict-registry", "--no-model"]) == 2
    assert main(["classify", "x.pcap", "-o", str(out), "--model", str(tmp_path / "missing.skops")]) == 2
    assert not out.exists()


def test_summary_line():
    from collections import Counter

    from classifier.cli.classify import summary

    line = summary(10, Counter({"openvpn": 2, "wireguard": 3}), Counter({"gre": 1}))
    assert line == "10 flows, 5 VPN (wireguard 3, openvpn 2), tunnels: gre 1"
    line = summary(10, Counter({"wireguard": 3}), Counter(), review=2)
    assert line == "10 flows, 3 VPN (wireguard 3); 2 more at P(VPN) >= 0.5 under the threshold (`vpnid report` lists them)"


def test_threshold_option_overrides_the_model_threshold(tmp_path):
    """--threshold changes which flows the model calls VPN; out-of-range values are usage errors."""
    from classifier.cli.main import main

    pcaps = Path(__file__).resolve().parents[1] / "pcaps"
    src = [str(pcaps / "shadowsocks.pcap"), str(pcaps / "https.pcap")]
    low, high = tmp_path / "low.parquet", tmp_path / "high.parquet"
    assert main(["classify", *src, "-o", str(low), "--no-signatures", "--threshold", "0.000001", "-q"]) == 0
    assert main(["classify", *src, "-o", str(high), "--no-signatures", "--threshold", "1.0", "-q"]) == 0
    n_low = sum(pq.read_table(low).column("is_vpn").to_pylist())
    n_high = sum(pq.read_table(high).column("is_vpn").to_pylist())
    assert n_low > n_high
    assert main(["classify", *src, "-o", str(low), "--threshold", "1.5", "-q"]) == 2
    assert main(["classify", *src, "-o", str(low), "--no-model", "--threshold", "0.5", "-q"]) == 2
