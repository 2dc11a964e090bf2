"""Loading and validating the registered-IP list: formats, line numbers, strict mode."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from classifier.errors import ErrorLog
from classifier.registry import Registry, RegistryError
from classifier.registry.loader import parse_block

ROOT = Path(__file__).resolve().parents[1]
HEADER = "ip,organization,registration_id,category,valid_from,valid_until\n"


def write(tmp_path: Path, text: str, name: str = "reg.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_sample_registry_loads_cleanly():
    reg = Registry.load(ROOT / "pcaps" / "registered-sample.csv", strict=True)
    d = reg.describe()
    assert d["entries"] >= 6 and d["ipv6_entries"] >= 1 and d["skipped_rows"] == 0
    assert any(e.prefix < 32 for e in reg.entries if e.family == 4), "the sample shows a CIDR block"
    assert any(e.valid_until is not None for e in reg.entries), "the sample shows validity dates"
    assert len(d["sha256"]) == 64


def test_parse_block_forms():
    assert parse_block("10.1.0.0/16") == (4, 0x0A010000, 0x0A01FFFF, 16)
    assert parse_block("192.0.2.7") == (4, 0xC0000207, 0xC0000207, 32)
    fam, start, end, plen = parse_block("2001:db8::/32")
    assert (fam, plen) == (6, 32) and start == 0x20010DB8 << 96 and end == start | ((1 << 96) - 1)
    assert parse_block("::/0")[2] == (1 << 128) - 1
    assert parse_block(" 0.0.0.0/0 ")[1:3] == (0, 2**32 - 1)


@pytest.mark.parametrize("text, needle", [
    ("10.0.0.256", "not an IPv4 address"),
    ("10.0.0.0/33", "prefix length must be 0..32"),
    ("10.0.0.1/24", "host bits set after /24 (the block is 10.0.0.0/24)"),
    ("2001:db8::/129", "prefix length must be 0..128"),
    ("2001:db8::g", "not an IPv6 address"),
    ("10.0.0.0/x", "prefix length"),
])
def test_bad_addresses_are_named(text, needle):
    with pytest.raises(ValueError, match="bad address") as exc:
        parse_block(text)
    assert needle in str(exc.value)


def test_bad_rows_are_skipped_with_line_numbers(tmp_path, capsys):
    p = write(tmp_path, HEADER
              + "10.0.0.0/8,Org A,R1,bank,,\n"
              + "10.0.0.300,Org B,R2,bank,,\n"            # line 3: bad address
              + "10.2.0.0/16,Org C,R3,bank,2024-13-01,\n"  # line 4: bad date
              + ",Org D,R4,bank,,\n"                       # line 5: missing ip
              + "10.4.0.0/16,Org E,,bank,,\n"              # line 6: missing registration id
              + "10.5.0.0/16,Org F,R6\n"                   # line 7: short row
              + "10.6.0.0/16,Org G,R7,bank,2024-05-01,2024-04-01\n"  # line 8: from after until
              + "\n# a comment line\n"
              + "2001:db8::/32,Org H,R8,university,,\n")
    reg = Registry.load(p)
    assert [e.registration_id for e in reg.entries] == ["R1", "R8"]
    assert [(x.line, x.message.split(" ")[0]) for x in reg.problems] == [
        (3, "bad"), (4, "bad"), (5, "missing"), (6, "missing"), (7, "expected"), (8, "valid_from")]
    err = capsys.readouterr().err
    assert f"{p}: line 3: bad address '10.0.0.300'" in err
    assert "line 4: bad date in valid_from: '2024-13-01'" in err
    assert "line 5: missing ip" in err
    assert "line 6: missing registration_id" in err
    assert "line 7: expected 6 fields, found 3" in err
    assert "row skipped" in err
    assert err.count("vpnid: warning:") == 6


def test_strict_fails_listing_every_bad_row(tmp_path):
    p = write(tmp_path, HEADER + "10.0.0.0/8,A,R1,bank,,\nnope,B,R2,bank,,\n10.1.0.0/16,C,R3,bank,,someday\n")
    with pytest.raises(RegistryError) as exc:
        Registry.load(p, strict=True)
    msg = str(exc.value)
    assert "2 invalid rows (--strict)" in msg
    assert "line 3: bad address 'nope'" in msg and "line 4: bad date in valid_until: 'someday'" in msg


def test_missing_column_is_one_clear_error(tmp_path):
    p = write(tmp_path, "ip,organization,category\n10.0.0.1,A,bank\n")
    with pytest.raises(RegistryError, match=r"missing column registration_id in the header"):
        Registry.load(p)


def test_optional_date_columns_may_be_absent_and_header_is_case_insensitive(tmp_path):
    p = write(tmp_path, "\ufeffIP,Organization,Registration_ID,Category\n10.0.0.1,A,R1,\n")
    reg = Registry.load(p, strict=True)
    assert len(reg) == 1 and reg.entries[0].category is None


def test_empty_and_unreadable_files(tmp_path):
    with pytest.raises(RegistryError, match="empty file"):
        Registry.load(write(tmp_path, ""))
    with pytest.raises(RegistryError, match="cannot read the registry"):
        Registry.load(tmp_path / "absent.csv")
    bad = tmp_path / "latin1.csv"
    bad.write_bytes(HEADER.encode() + "10.0.0.1,Caf\xe9,R1,bank,,\n".encode("latin-1"))
    with pytest.raises(RegistryError, match="line 2: not UTF-8"):
        Registry.load(bad)


def test_header_only_warns_no_entries(tmp_path):
    log = ErrorLog(quiet=True)
    reg = Registry.load(write(tmp_path, HEADER), log=log)
    assert len(reg) == 0


def test_dates_whole_days_and_timestamps(tmp_path):
    p = write(tmp_path, HEADER
              + "10.0.0.1,A,R1,bank,2024-01-01,2024-01-31\n"
              + "10.0.0.2,B,R2,bank,2024-01-01T08:00:00+05:00,2024-01-01T17:00:00+05:00\n")
    a, b = Registry.load(p, strict=True).entries

    def ns(s: str) -> int:
        return int(dt.datetime.fromisoformat(s).timestamp()) * 10**9

    assert a.valid_from_ns == ns("2024-01-01T00:00:00+00:00")
    assert a.valid_until_ns == ns("2024-02-01T00:00:00+00:00"), "valid_until includes the whole day"
    assert b.valid_from_ns == ns("2024-01-01T03:00:00+00:00")
    assert b.valid_until_ns == ns("2024-01-01T12:00:00+00:00") + 1, "a timestamp bound is inclusive"


def test_parquet_registry_with_typed_dates(tmp_path):
    table = pa.table({
        "ip": ["10.0.0.0/24", "bad", "2001:db8::1"],
        "organization": ["A", "B", "C"],
        "registration_id": ["R1", "R2", "R3"],
        "category": ["bank", None, "embassy"],
        "valid_from": pa.array([dt.date(2024, 1, 1), None, None], pa.date32()),
        "valid_until": pa.array([None, None, dt.date(2030, 1, 1)], pa.date32()),
    })
    p = tmp_path / "reg.parquet"
    pq.write_table(table, p)
    log = ErrorLog(quiet=True)
    reg = Registry.load(p, log=log)
    assert [e.registration_id for e in reg.entries] == ["R1", "R3"]
    assert reg.entries[0].valid_from == "2024-01-01"
    assert [(x.unit, x.line) for x in reg.problems] == [("row", 2)]
    with pytest.raises(RegistryError, match="row 2: bad address 'bad'"):
        Registry.load(p, strict=True)


def test_cli_strict_exit_status(tmp_path, capsys):
    from classifier.cli.main import main

    p = write(tmp_path, HEADER + "nope,B,R2,bank,,\n")
    rc = main(["report", str(tmp_path / "none.pcap"), "--registry", str(p), "--strict", "-o", str(tmp_path / "o")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "line 2: bad address 'nope'" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists(), "nothing is written when the registry is refused"
