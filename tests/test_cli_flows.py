"""``vpnid flows``: the output files (Parquet, CSV, JSON lines), their schema and metadata.

Also checks that payload bytes never reach an output file: the capture carries a
distinctive payload, and no output (decoded, for Parquet) contains it.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import NS, T0, write_pcap
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from classifier._version import __version__
from classifier.cli.main import main
from classifier.flows.api import read_flows
from classifier.flows.schema import FLOW_SCHEMA

MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
SECRET = b"SECRET-PAYLOAD-7f3a9c"


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    frames = [
        (T0, Ether(**MAC) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=5, dport=443, flags="S")),
        (T0 + NS // 10, Ether(**MAC) / IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=443, dport=5, flags="SA")),
        (T0 + NS // 5, Ether(**MAC) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=5, dport=443, flags="PA")
         / Raw(SECRET * 3)),
        (T0 + NS, Ether(**MAC) / IP(src="10.0.0.3", dst="10.0.0.4") / UDP(sport=500, dport=500) / Raw(SECRET)),
    ]
    return write_pcap(tmp_path / "c.pcap", frames, nanos=True)


def test_parquet_schema_compression_and_metadata(capture, tmp_path, capsys):
    out = tmp_path / "flows.parquet"
    assert main(["flows", str(capture), "-o", str(out)]) == 0
    assert "2 flows from 4 packets" in capsys.readouterr().err
    f = pq.ParquetFile(out)
    schema = f.schema_arrow
    assert schema.remove_metadata().equals(FLOW_SCHEMA.remove_metadata(), check_metadata=False)
    assert [fld.nullable for fld in schema] == [fld.nullable for fld in FLOW_SCHEMA]
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert meta["vpnid.version"] == __version__
    assert json.loads(meta["vpnid.inputs"]) == [str(capture)]
    assert float(meta["vpnid.idle_timeout_s"]) == 120.0 and float(meta["vpnid.active_timeout_s"]) == 1800.0
    md = f.metadata
    assert all(md.row_group(0).column(i).compression == "ZSTD" for i in range(md.num_columns))
    table = f.read()
    assert table.select(FLOW_SCHEMA.names).equals(read_flows(capture), check_metadata=False)
    rows = table.to_pylist()
    assert [(r["src_ip"], r["dst_ip"], r["src_port"], r["dst_port"], r["ip_proto"]) for r in rows] == [
        ("10.0.0.1", "10.0.0.2", 5, 443, 6), ("10.0.0.3", "10.0.0.4", 500, 500, 17)]
    assert table.schema.field("first_seen").type == pa.timestamp("ns", tz="UTC")
    assert table.column("first_seen").cast("int64").to_pylist() == [T0, T0 + NS]
    assert SECRET not in repr(rows).encode()


def test_csv_and_jsonl_outputs(capture, tmp_path):
    csv_out, jl_out, forced = tmp_path / "f.csv", tmp_path / "f.jsonl", tmp_path / "f.out"
    assert main(["flows", str(capture), "-o", str(csv_out), "-q"]) == 0
    assert main(["flows", str(capture), "-o", str(jl_out), "-q"]) == 0
    assert main(["flows", str(capture), "-o", str(forced), "--format", "jsonl", "-q"]) == 0
    with open(csv_out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == FLOW_SCHEMA.names
    assert [(r["src_ip"], r["src_port"], r["packets"]) for r in rows] == [("10.0.0.1", "5", "3"),
                                                                        ("10.0.0.3", "500", "1")]
    assert rows[0]["first_sizes"] == "40 40 103"
    lines = [json.loads(ln) for ln in jl_out.read_text().splitlines()]
    assert [r["dst_port"] for r in lines] == [443, 500]
    assert set(lines[0]) == set(FLOW_SCHEMA.names)
    assert lines[0]["first_dirs"] == [0, 1, 0]
    assert lines[1]["tcp_syn"] == 0 and lines[1]["first_tcp_flags"] is None
    assert forced.read_text() == jl_out.read_text()
    for out in (csv_out, jl_out):
        assert SECRET not in out.read_bytes()
        assert SECRET.hex().encode() not in out.read_bytes()


def test_csv_to_standard_output(capture, capsysbinary):
    assert main(["flows", str(capture), "-o", "-", "--format", "csv", "-q"]) == 0
    out = capsysbinary.readouterr().out.decode()
    assert out.splitlines()[0].startswith('"flow_id","capture","src_ip"')
    assert len(out.splitlines()) == 3


def test_parquet_to_standard_output_is_a_usage_error(capture, capsys):
    assert main(["flows", str(capture), "-o", "-"]) == 2
    assert "standard output" in capsys.readouterr().err


def test_empty_result_still_writes_a_valid_file(tmp_path):
    from scapy.layers.l2 import ARP

    cap = write_pcap(tmp_path / "arp.pcap", [(T0, Ether(**MAC) / ARP())])
    for name in ("e.parquet", "e.csv", "e.jsonl"):
        assert main(["flows", str(cap), "-o", str(tmp_path / name), "-q"]) == 0
    assert pq.read_table(tmp_path / "e.parquet").num_rows == 0
    assert (tmp_path / "e.csv").read_text().startswith('"flow_id"')
    assert (tmp_path / "e.jsonl").read_text() == ""


def test_console_script(capture, tmp_path):
    script = Path(sys.executable).with_name("vpnid")
    if not script.exists():
        pytest.skip(f"console script not installed beside {sys.executable} (run `make install`)")
    out = tmp_path / "s.parquet"
    r = subprocess.run([str(script), "flows", str(capture), "-o", str(out)], capture_output=True, text=True,
                       timeout=300, env={k: v for k, v in os.environ.items() if k != "VPNID_DEBUG"})
    assert r.returncode == 0, r.stderr
    assert pq.read_table(out).num_rows == 2
