"""The report directory from classified tables: files, aggregates, metadata, partitions, anonymization."""

from __future__ import annotations

import io
import ipaddress
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from _flowtables import classified

from classifier.anonymize import Anonymizer
from classifier.flows.schema import REPORT_SCHEMA
from classifier.registry import Registry
from classifier.report import VPN_USE_SCHEMA, ReportBuilder, ReportContext
from classifier.report.progress import ByteProgress
from classifier.report.review import REVIEW_SCHEMA
from classifier.report.terminal import print_summary

DAY = 86400


def registry() -> Registry:
    return Registry.from_records([
        {"ip": "198.18.1.0/24", "organization": "Indus Bank", "registration_id": "PTA-1", "category": "bank"},
        {"ip": "198.18.5.2", "organization": "Old Co", "registration_id": "PTA-5", "category": "bank",
         "valid_until": "2024-03-01"},
        {"ip": "2001:db8:4a1::/48", "organization": "Uni", "registration_id": "PTA-6", "category": "university"},
    ])


def flows() -> pa.Table:
    """T0 = 2024-03-01 09:00 UTC. PTA-5 ends with that day."""
    rows = [
        dict(src_ip="198.18.1.2", dst_ip="198.18.1.1", proto="wireguard", bytes=5000, packets=50, dst_port=51820),
        dict(src_ip="198.18.1.2", dst_ip="198.18.1.1", proto="wireguard", t=60, bytes=7000, packets=70,
             dst_port=51820),
        # same pair, one flow inside PTA-5's validity, one the next day (unregistered)
        dict(src_ip="198.18.5.2", dst_ip="198.18.5.1", proto="openvpn", t=0, bytes=1000, dst_port=1194,
             detection="model", confidence=0.97, evidence="model says so"),
        dict(src_ip="198.18.5.2", dst_ip="198.18.5.1", proto="openvpn", t=DAY, bytes=3000, dst_port=1194,
             confidence=0.9, evidence="openvpn P_CONTROL_HARD_RESET_CLIENT_V2 then server reset"),
        dict(src_ip="198.18.7.2", dst_ip="198.18.7.1", proto="ipsec-esp", t=120, bytes=90000, ip_proto=50),
        dict(src_ip="198.18.7.2", dst_ip="198.18.7.1", proto="ipsec-esp", t=180, bytes=10000, ip_proto=50),
        dict(src_ip="198.18.8.2", dst_ip="198.18.7.1", proto="ipsec-esp", t=240, bytes=500, ip_proto=50),
        dict(src_ip="2001:db8:4a1::2", dst_ip="2001:db8:ffff::1", proto="wireguard", t=30, bytes=800),
        dict(src_ip="2001:db8:9::2", dst_ip="2001:db8:ffff::1", proto=None, t=40, is_vpn=True, bytes=700,
             detection="model", confidence=0.8, evidence="model: P(VPN)=0.8"),
        dict(src_ip="10.0.0.5", dst_ip="10.0.0.1", t=50, bytes=400),
        dict(src_ip="10.0.0.6", dst_ip="10.0.0.1", t=55, bytes=300, tunnel="gre", ip_proto=47),
    ]
    return registry().annotate(classified(rows))


def build(tmp_path: Path, table: pa.Table | None = None, **kw) -> tuple[Path, object]:
    out = tmp_path / "report"
    reg = registry()
    ctx = ReportContext(inputs=["lab/a.pcap", "lab/b.pcap"], registry={**reg.describe(), "path": "reg.csv",
                                                                         "sha256": "ab" * 32},
                        model="vpnid-default 1.2", model_version="1.2", review_floor=kw.get("review_floor", 0.5))
    b = ReportBuilder(out, ctx, partition_by=kw.get("partition_by"), anonymizer=kw.get("anonymizer"))
    t = flows() if table is None else table
    # two batches, as the pipeline streams them
    b.add(t.slice(0, 5))
    b.add(t.slice(5))
    return out, b.finish()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One plain report shared by the tests that only read it."""
    return build(tmp_path_factory.mktemp("built"))


def test_all_files_written_with_schema_and_metadata(built):
    out, _ = built
    names = sorted(p.name for p in out.iterdir())
    assert names == ["flows.parquet", "for_review.parquet", "report.html", "summary.json", "unregistered.parquet",
                     "vpn_use.parquet"]
    f = pq.read_table(out / "flows.parquet")
    assert f.schema.remove_metadata() == REPORT_SCHEMA.remove_metadata()
    assert f.num_rows == 11
    for name in ("flows.parquet", "vpn_use.parquet", "unregistered.parquet", "for_review.parquet"):
        meta = {k.decode(): v.decode() for k, v in pq.read_schema(out / name).metadata.items()}
        assert meta["vpnid.version"]
        assert meta["vpnid.model"] == "vpnid-default 1.2" and meta["vpnid.model_version"] == "1.2"
        assert meta["vpnid.registry_sha256"] == "ab" * 32 and meta["vpnid.registry"] == "reg.csv"
        assert json.loads(meta["vpnid.inputs"]) == ["lab/a.pcap", "lab/b.pcap"]
    assert pq.read_schema(out / "vpn_use.parquet").remove_metadata() == VPN_USE_SCHEMA.remove_metadata()
    assert pq.read_schema(out / "for_review.parquet").remove_metadata() == REVIEW_SCHEMA.remove_metadata()
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temporary files left"


def test_vpn_use_aggregates(built):
    out, _ = built
    use = {(r["client_ip"], r["server_ip"], r["vpn_protocol"]): r
           for r in pq.read_table(out / "vpn_use.parquet").to_pylist()}
    assert len(use) == 6, "one row per client, server and protocol; the non-VPN flows are not in it"
    wg = use[("198.18.1.2", "198.18.1.1", "wireguard")]
    assert (wg["flows"], wg["bytes"], wg["packets"]) == (2, 12000, 120)
    assert wg["registered"] is True and wg["registration_id"] == "PTA-1" and wg["organization"] == "Indus Bank"
    assert wg["matched_endpoint"] == "src" and wg["server_port"] == 51820
    assert wg["first_seen"].isoformat().startswith("2024-03-01T09:00:00")
    assert wg["last_seen"].isoformat().startswith("2024-03-01T09:01:10")
    ov = use[("198.18.5.2", "198.18.5.1", "openvpn")]
    assert ov["registered"] is False and (ov["registered_flows"], ov["unregistered_flows"]) == (1, 1)
    assert ov["registration_id"] == "PTA-5"
    # the strongest flow is the signature one even though the model flow has higher confidence
    assert ov["detection"] == "signature" and ov["evidence"].startswith("openvpn P_CONTROL")
    assert ov["confidence"] == pytest.approx(0.97)
    assert use[("2001:db8:9::2", "2001:db8:ffff::1", "unknown")]["registered"] is False
    assert use[("2001:db8:4a1::2", "2001:db8:ffff::1", "wireguard")]["registration_id"] == "PTA-6"
    ordered = pq.read_table(out / "vpn_use.parquet").column("registered").to_pylist()
    assert ordered == sorted(ordered), "unregistered use first"


def test_unregistered_counts_only_unregistered_flows(built):
    out, _ = built
    un = {(r["client_ip"], r["vpn_protocol"]): r for r in pq.read_table(out / "unregistered.parquet").to_pylist()}
    assert set(un) == {("198.18.5.2", "openvpn"), ("198.18.7.2", "ipsec-esp"), ("198.18.8.2", "ipsec-esp"),
                       ("2001:db8:9::2", "unknown")}
    ov = un[("198.18.5.2", "openvpn")]
    assert (ov["flows"], ov["bytes"], ov["registered_flows"]) == (1, 3000, 0)
    assert ov["first_seen"].date().isoformat() == "2024-03-02"
    assert all(r["registered"] is False and r["registration_id"] is None for r in un.values())


def test_summary_json(built):
    out, res = built
    s = json.loads((out / "summary.json").read_text())
    assert s == json.loads(json.dumps(res.summary))
    f = s["flows"]
    assert (f["total"], f["vpn"], f["registered"], f["unregistered"], f["non_vpn_tunnels"]) == (11, 9, 4, 5, 1)
    assert f["bytes"] == sum(flows().column("bytes").to_pylist())
    vpn = [r for r in flows().to_pylist() if r["is_vpn"]]
    assert f["vpn_by_detection"] == {k: sum(r["detection"] == k for r in vpn) for k in ("signature", "model",
                                                                                         "endpoint")}
    assert sum(f["vpn_by_detection"].values()) == f["vpn"] and f["vpn_by_detection"]["model"] > 0
    assert f["unregistered_bytes"] == 3000 + 90000 + 10000 + 500 + 700
    assert s["vpn_use"] == {"pairs": 6, "unregistered_pairs": 4, "unregistered_clients": 4, "unregistered_servers": 3}
    top = s["top_unregistered_servers"][0]
    assert (top["address"], top["flows"], top["peers"]) == ("198.18.7.1", 3, 2)
    assert s["top_unregistered_clients"][0]["address"] == "198.18.7.2"
    protos = {p["vpn_protocol"]: p for p in s["protocols"]}
    assert protos["wireguard"]["registered_flows"] == 3 and protos["ipsec-esp"]["unregistered_flows"] == 3
    assert {r["registration_id"] for r in s["registered_use"]} == {"PTA-1", "PTA-5", "PTA-6"}
    assert s["time_span"] == {"first_seen": "2024-03-01T09:00:00.000Z", "last_seen": "2024-03-02T09:00:10.000Z"}
    assert s["registry"]["sha256"] == "ab" * 32 and s["model"]["version"] == "1.2"


def near_misses() -> pa.Table:
    """flows() plus four flows that are not VPN: three the model scored, one a signature named."""
    def model(src: str, p_vpn: float, t: int) -> dict:
        return dict(src_ip=src, dst_ip="198.51.100.7", dst_port=8388, ip_proto=6, t=t, detection="model",
                    confidence=1.0 - p_vpn, evidence=f"model vpnid-default: P(VPN)={p_vpn:.3f} vs threshold 0.963 "
                                                     "-> not VPN")
    extra = [model("203.0.113.5", 0.55, 300), model("203.0.113.6", 0.80, 310), model("203.0.113.7", 0.30, 320),
             # a signature's confidence is no P(VPN): 1 - 0.3 must not put it on the list
             dict(src_ip="203.0.113.8", dst_ip="198.51.100.7", t=330, detection="signature", confidence=0.3,
                  evidence="telegram: mtproto obfuscated2 header")]
    return pa.concat_tables([flows(), registry().annotate(classified(extra))])


def test_flows_close_to_the_threshold_are_listed_for_review_not_as_findings(tmp_path):
    out, res = build(tmp_path, table=near_misses())
    review = pq.read_table(out / "for_review.parquet")
    assert review.schema.remove_metadata() == REVIEW_SCHEMA.remove_metadata()
    # the model's two "not VPN" verdicts at P(VPN) >= 0.5, highest first; not the 0.30 one, not the signature's
    assert review.column("src_ip").to_pylist() == ["203.0.113.6", "203.0.113.5"]
    assert review.column("p_vpn").to_pylist() == pytest.approx([0.80, 0.55])
    assert review.column("evidence").to_pylist()[0].startswith("model vpnid-default: P(VPN)=0.800")
    s = res.summary
    assert s["flows"]["vpn"] == 9 and s["flows"]["total"] == 15, "review rows are not VPN findings"
    assert (s["for_review"]["floor"], s["for_review"]["flows"]) == (0.5, 2)
    assert [r["src_ip"] for r in s["for_review"]["top"]] == ["203.0.113.6", "203.0.113.5"]
    assert "203.0.113.5" not in json.dumps(s["unregistered_findings"])
    page = (out / "report.html").read_text()
    section = page[page.index('id="review"'):page.index('id="about"')]
    assert "2 flows the model scored at P(VPN) of 0.5 or more" in section
    assert "203.0.113.6" in section and "0.800" in section and "203.0.113.7" not in section
    from rich.console import Console

    buf = io.StringIO()
    print_summary(s, console=Console(file=buf, width=160, color_system=None))
    assert "2 more flows for review" in buf.getvalue()
    # the floor moves the list; None turns it off
    _, lower = build(tmp_path / "lower", table=near_misses(), review_floor=0.25)
    assert lower.for_review.column("src_ip").to_pylist() == ["203.0.113.6", "203.0.113.5", "203.0.113.7"]
    out_off, off = build(tmp_path / "off", table=near_misses(), review_floor=None)
    assert off.for_review.num_rows == 0 and off.summary["for_review"]["flows"] == 0
    assert "turned off" in (out_off / "report.html").read_text()
    # pseudonymized reports pseudonymize the review list too
    out_anon, _ = build(tmp_path / "anon", table=near_misses(), anonymizer=Anonymizer(b"k" * 32))
    text = json.dumps(pq.read_table(out_anon / "for_review.parquet").to_pylist(), default=str)
    assert pq.read_table(out_anon / "for_review.parquet").num_rows == 2 and "203.0.113." not in text


def test_partition_by_date(tmp_path):
    out, res = build(tmp_path, partition_by="date")
    assert not (out / "flows.parquet").exists()
    parts = sorted(p.parent.name for p in (out / "flows").rglob("*.parquet"))
    assert parts == ["date=2024-03-01", "date=2024-03-02"]
    data = ds.dataset(out / "flows", format="parquet", partitioning="hive").to_table()
    assert data.num_rows == 11
    per_day = {d: n for d, n in zip(*[c.to_pylist() for c in
                                      data.group_by("date").aggregate([("flow_id", "count")]).columns], strict=True)}
    assert {str(k): v for k, v in per_day.items()} == {"2024-03-01": 10, "2024-03-02": 1}
    one = pq.read_schema(out / "flows" / "date=2024-03-02" / "part-0.parquet")
    assert one.metadata[b"vpnid.partition"] == b"2024-03-02" and b"vpnid.registry_sha256" in one.metadata
    assert res.summary["outputs"]["flows_partitions"] == ["2024-03-01", "2024-03-02"]
    # a second run replaces the dataset as a whole
    build(tmp_path, table=flows().slice(0, 2), partition_by="date")
    assert sorted(p.parent.name for p in (out / "flows").rglob("*.parquet")) == ["date=2024-03-01"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_anonymized_report_leaks_no_address(tmp_path):
    anon = Anonymizer(b"k" * 32)
    table = flows()
    table = table.set_column(table.schema.get_field_index("capture"), "capture",
                             pa.array(["sensor-198.18.1.2.pcap"] * table.num_rows))
    out, res = build(tmp_path, table=table, anonymizer=anon)
    originals = {a for r in flows().select(["src_ip", "dst_ip"]).to_pylist() for a in r.values()}
    assert "sensor-198.18.1.2.pcap" not in res.summary["captures"][0]["capture"]
    texts = [(out / "summary.json").read_text(), (out / "report.html").read_text()]
    for name in ("flows.parquet", "vpn_use.parquet", "unregistered.parquet"):
        texts.append(json.dumps(pq.read_table(out / name).drop_columns(
            [c for c in ("first_sizes", "first_dirs", "first_iats_ms") if c in pq.read_schema(out / name).names]
        ).to_pylist(), default=str))
    for text in texts:
        for addr in originals:
            assert addr not in text, f"{addr} leaked"
    f = pq.read_table(out / "flows.parquet")
    # registration results survive, prefixes are preserved
    assert f.column("registered").to_pylist() == flows().column("registered").to_pylist()
    pairs = f.select(["src_ip", "dst_ip"]).to_pylist()
    a, b = ipaddress.ip_address(pairs[0]["src_ip"]), ipaddress.ip_address(pairs[0]["dst_ip"])
    assert int(a) >> 8 == int(b) >> 8, "198.18.1.2 and 198.18.1.1 stay in one /24"
    assert res.summary["anonymized"] is True
    assert pq.read_schema(out / "flows.parquet").metadata[b"vpnid.anonymized"] == b"true"
    assert "pseudonymized (Crypto-PAn" in (out / "report.html").read_text()


def test_empty_input_still_makes_a_report(tmp_path):
    out, res = build(tmp_path, table=classified([]))
    assert pq.read_table(out / "flows.parquet").num_rows == 0
    assert pq.read_table(out / "vpn_use.parquet").num_rows == 0
    assert res.summary["flows"]["vpn"] == 0
    assert "No VPN traffic was found" in (out / "report.html").read_text()


def test_abort_leaves_nothing(tmp_path):
    b = ReportBuilder(tmp_path / "r", ReportContext(inputs=["x"]))
    b.add(flows())
    b.abort()
    assert list((tmp_path / "r").iterdir()) == []
    b = ReportBuilder(tmp_path / "p", ReportContext(inputs=["x"]), partition_by="date")
    b.add(flows())
    b.abort()
    assert list((tmp_path / "p").iterdir()) == []


def test_terminal_summary(built):
    from rich.console import Console

    _, res = built
    buf = io.StringIO()
    print_summary(res.summary, console=Console(file=buf, width=140, color_system=None))
    text = buf.getvalue()
    assert "11 flows, 9 VPN (4 registered, 5 unregistered)" in text
    assert "ipsec-esp" in text and "198.18.7.2" in text and "report.html" in text


def test_progress_counts_bytes(tmp_path):
    from rich.console import Console

    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    a.write_bytes(b"x" * 1000)
    b.write_bytes(b"y" * 3000)
    buf = io.StringIO()
    with ByteProgress([str(a), str(b), str(tmp_path / "gone")], min_bytes=0,
                      console=Console(file=buf, force_terminal=True)) as bar:
        assert bar.enabled and bar.total == 4000
        bar.advance(1000)
        bar.advance(3000)
    assert bar.done == 4000
    assert not ByteProgress([str(a)], min_bytes=10**9).enabled, "small inputs get no bar"
