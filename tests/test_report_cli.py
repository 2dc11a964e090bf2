"""``vpnid report`` and ``vpnid classify --registry`` end to end on the lab captures in pcaps/."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from classifier.cli.main import main
from classifier.flows.schema import REPORT_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
PCAPS = ROOT / "pcaps"
SAMPLE = PCAPS / "registered-sample.csv"
# scenario N: client 198.18.N.2, server 198.18.N.1 (docs/lab.md)
CAPTURES = ["wireguard.pcap", "wireguard-port443.pcap", "wireguard-midflow.pcap", "openvpn-udp.pcap",
            "ipsec-ikev1.pcap", "http.pcap"]

pytestmark = pytest.mark.skipif(not all((PCAPS / c).exists() for c in CAPTURES),
                                reason="lab captures not in pcaps/ (made by `vpnid lab`)")


def inputs() -> list[str]:
    return [str(PCAPS / c) for c in CAPTURES]


def _dump(path: Path) -> str:
    """Every value of every output file as text (Parquet decoded, so compression hides nothing)."""
    parts = []
    for p in sorted(path.rglob("*")):
        if p.suffix == ".parquet":
            parts.append(json.dumps(pq.read_table(p).to_pylist(), default=str))
            parts.append(str(pq.read_schema(p).metadata))
        elif p.is_file():
            parts.append(p.read_text())
    return "\n".join(parts)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "report"
    rc = main(["report", *inputs(), "--registry", str(SAMPLE), "-o", str(out), "--no-model", "--quiet"])
    return rc, out


def test_report_answers_which_vpn_use_is_unregistered(plain):
    rc, out = plain
    assert rc == 0
    flows = pq.read_table(out / "flows.parquet")
    assert flows.schema.remove_metadata() == REPORT_SCHEMA.remove_metadata()
    vpn = {(r["src_ip"], r["vpn_protocol"]): r for r in flows.to_pylist() if r["is_vpn"]}
    # scenario 1: the bank's client address is registered
    assert vpn[("198.18.1.2", "wireguard")]["registration_id"] == "PTA-VPN-2024-000118"
    assert vpn[("198.18.1.2", "wireguard")]["matched_endpoint"] == "src"
    # scenario 2: the software house registered its server, so the flow matches on dst
    assert vpn[("198.18.2.2", "wireguard")]["matched_endpoint"] == "dst"
    # scenario 10: inside a registered /24
    assert vpn[("198.18.10.2", "openvpn")]["registered"] is True
    # scenario 3: nobody registered it; scenario 21: the registration expired in 2020
    assert vpn[("198.18.3.2", "wireguard")]["registered"] is False
    assert vpn[("198.18.21.2", "ipsec-ike")]["registered"] is False
    non_vpn = [r for r in flows.to_pylist() if not r["is_vpn"]]
    assert non_vpn and all(r["registered"] is None for r in non_vpn)
    un = {(r["client_ip"], r["vpn_protocol"]) for r in pq.read_table(out / "unregistered.parquet").to_pylist()}
    assert {("198.18.3.2", "wireguard"), ("198.18.21.2", "ipsec-ike")} <= un
    assert not any(c.startswith(("198.18.1.", "198.18.2.", "198.18.10.")) for c, _ in un)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["registry"]["sha256"] == __import__("hashlib").sha256(SAMPLE.read_bytes()).hexdigest()
    assert summary["model"] is None and summary["errors"] == []
    assert summary["flows"]["registered"] >= 3 and summary["flows"]["unregistered"] >= 2
    meta = pq.read_schema(out / "vpn_use.parquet").metadata
    assert meta[b"vpnid.model"] == b"none (signatures only)"
    assert json.loads(meta[b"vpnid.inputs"]) == inputs()


def test_payload_bytes_never_reach_the_outputs(plain):
    _, out = plain
    http = (PCAPS / "http.pcap").read_bytes()
    assert b"User-Agent" in http, "the capture carries a plaintext HTTP request"
    assert "User-Agent" not in _dump(out)


def test_terminal_summary_and_exit_status_with_a_missing_input(tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["report", *inputs()[:2], str(tmp_path / "missing.pcap"), "--registry", str(SAMPLE),
               "-o", str(out), "--no-model"])
    assert rc == 1, "an input problem is exit status 1, and the report is still written"
    cap = capsys.readouterr()
    assert "missing.pcap: no such file or directory" in cap.err and "Traceback" not in cap.err
    assert "VPN use by protocol" in cap.out and "report.html" in cap.out
    summary = json.loads((out / "summary.json").read_text())
    assert any("missing.pcap" in e for e in summary["errors"])


def test_anonymized_partitioned_report(tmp_path):
    out = tmp_path / "shared"
    rc = main(["report", *inputs(), "--registry", str(SAMPLE), "-o", str(out), "--no-model", "--quiet",
               "--anonymize", "research key 2024", "--partition-by", "date"])
    assert rc == 0
    assert (out / "flows").is_dir() and not (out / "flows.parquet").exists()
    text = _dump(out)
    assert "198.18." not in text, "no lab address survives pseudonymization"
    flows = pq.read_table(out / "flows")
    assert flows.num_rows > 0 and "date" in flows.column_names
    # the registration results were computed on the real addresses
    assert sorted(set(flows.column("registration_id").drop_null().to_pylist())) == [
        "PTA-VPN-2024-000118", "PTA-VPN-2024-000342"]


def test_bad_usage(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["report", *inputs()[:1], "--registry", str(SAMPLE), "-o", str(f)]) == 2
    assert main(["report", *inputs()[:1], "--registry", str(SAMPLE), "-o", str(tmp_path / "o"),
                 "--anonymize", "hex:12"]) == 2
    assert main(["report", *inputs()[:1], "--registry", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "o")]) == 1
    assert main(["report", *inputs()[:1], "--registry", str(SAMPLE), "-o", str(tmp_path / "o"),
                 "--review-floor", "0"]) == 2
    err = capsys.readouterr().err
    assert "exists and is not a directory" in err and "64 hex digits" in err and "cannot read the registry" in err
    assert "--review-floor must be above 0 and at most 1, not 0" in err


def test_classify_takes_the_registry(tmp_path):
    out = tmp_path / "flows.parquet"
    rc = main(["classify", *inputs(), "--registry", str(SAMPLE), "-o", str(out), "--no-model", "--quiet"])
    assert rc == 0
    t = pq.read_table(out)
    assert t.schema.remove_metadata() == REPORT_SCHEMA.remove_metadata()
    by_src = {r["src_ip"]: r for r in t.to_pylist() if r["is_vpn"]}
    assert by_src["198.18.1.2"]["registered"] is True and by_src["198.18.3.2"]["registered"] is False
    csv_out = tmp_path / "flows.csv"
    assert main(["classify", *inputs()[:1], "--registry", str(SAMPLE), "-o", str(csv_out), "--no-model",
                 "--quiet"]) == 0
    header = csv_out.read_text().splitlines()[0].replace('"', "").split(",")
    assert header[-4:] == ["registered", "registration_id", "organization", "matched_endpoint"]
