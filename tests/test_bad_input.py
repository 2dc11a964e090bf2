"""Bad input: one clear message naming the file and byte offset, partial flows kept, run goes on.

Each damaged capture is run through the CLI (in process, and all together in a real
subprocess to see exit status and stderr exactly as a user would) and through the API.
The flows in each damaged file are all distinct (one packet each), so "flows parsed
before the fault are kept" is checked by counting them.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO, T0, pcap_bytes
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from classifier.cli.main import main
from classifier.errors import ErrorLog
from classifier.flows.api import read_flows

MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def frame(i: int) -> bytes:
    return bytes(Ether(**MAC) / IP(src="10.0.0.1", dst=f"10.0.1.{i + 1}") / UDP(sport=1000 + i, dport=53)
                 / Raw(b"p" * (10 + i)))


FRAMES = [frame(i) for i in range(5)]


def record_offsets(frames: list[bytes]) -> list[int]:
    offs = [24]
    for f in frames[:-1]:
        offs.append(offs[-1] + 16 + len(f))
    return offs


def good_pcap() -> bytes:
    return pcap_bytes([(T0 + i, f) for i, f in enumerate(FRAMES)])


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def _pcapng_prefix() -> bytes:
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = _block(1, struct.pack("<HHI", 1, 0, 0))
    epbs = b"".join(_block(6, struct.pack("<IIIII", 0, 0, i, len(f), len(f)) + f) for i, f in enumerate(FRAMES[:2]))
    return shb + idb + epbs


def _lying(kind: str) -> bytes:
    f = bytearray(FRAMES[2])
    if kind == "ihl":
        f[14] = 0x4F  # IHL 60 bytes > total length 48
    else:
        struct.pack_into(">H", f, 16, 1400)  # total length beyond the frame
    frames = [*FRAMES[:2], bytes(f), *FRAMES[3:]]
    return pcap_bytes([(T0 + i, x) for i, x in enumerate(frames)])


def _absurd() -> bytes:
    data = bytearray(good_pcap())
    struct.pack_into("<I", data, record_offsets(FRAMES)[2] + 8, 0x7FFFFFF0)
    return bytes(data)


def _bad_block(kind: str) -> bytes:
    prefix = _pcapng_prefix()
    f = FRAMES[2]
    body = struct.pack("<IIIII", 0, 0, 9, len(f), len(f)) + f + b"\0" * (-len(f) % 4)
    n = len(body) + 12
    if kind == "odd":
        blk = struct.pack("<II", 6, n + 2) + body + struct.pack("<I", n + 2)
    elif kind == "caplen":
        blk = _block(6, struct.pack("<IIIII", 0, 0, 9, 4096, 4096) + f)
    else:
        blk = struct.pack("<II", 6, n) + body + struct.pack("<I", n + 8)
    return prefix + blk + _block(6, struct.pack("<IIIII", 0, 0, 10, len(FRAMES[3]), len(FRAMES[3])) + FRAMES[3])


# id: (file bytes, byte offset the message must name, flows kept, phrase in the message)
CASES = {
    "empty": (b"", 0, 0, "empty"),
    "not-a-capture": (b"GET / HTTP/1.1\r\nHost: example\r\n\r\n" * 4, 0, 0, "not a pcap"),
    "truncated-last-record": (good_pcap()[:-7], record_offsets(FRAMES)[4], 4, "truncated"),
    "absurd-record-length": (_absurd(), record_offsets(FRAMES)[2], 2, "absurd"),
    "pcapng-block-length-not-multiple-of-4": (_bad_block("odd"), len(_pcapng_prefix()), 2, "bad length"),
    "pcapng-trailing-length-differs": (_bad_block("trail"), len(_pcapng_prefix()), 2, "length"),
    "pcapng-captured-length-beyond-block": (_bad_block("caplen"), len(_pcapng_prefix()), 2, "length"),
    "ihl-beyond-total-length": (_lying("ihl"), record_offsets(FRAMES)[2], 4, "IP header"),
    "total-length-beyond-frame": (_lying("total"), record_offsets(FRAMES)[2], 4, "IP header"),
}


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, (data, *_rest) in CASES.items():
        out[name] = tmp_path / f"{name}.pcap"
        out[name].write_bytes(data)
    out["good"] = tmp_path / "good.pcap"
    out["good"].write_bytes(good_pcap())
    return out


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("vpnid: error")]


@pytest.mark.parametrize("case", list(CASES))
def test_cli_reports_once_keeps_partial_flows_and_goes_on(files, tmp_path, capsys, case):
    _data, offset, kept, phrase = CASES[case]
    out = tmp_path / "out.parquet"
    status = main(["flows", str(files[case]), str(files["good"]), "-o", str(out)])
    err = capsys.readouterr().err
    assert status == 1
    assert "Traceback" not in err
    lines = _error_lines(err)
    assert len(lines) == 1, err
    assert str(files[case]) in lines[0]
    assert f"at byte {offset}:" in lines[0]
    assert phrase.lower() in lines[0].lower()
    table = pq.read_table(out)
    captures = table.column("capture").to_pylist()
    assert captures.count(str(files[case])) == kept
    assert captures.count(str(files["good"])) == 5  # the next input was read in full


@pytest.mark.parametrize("case", list(CASES))
def test_api_records_the_problem_and_keeps_partial_flows(files, case):
    _data, offset, kept, _phrase = CASES[case]
    log = ErrorLog(quiet=True)
    table = read_flows(files[case], files["good"], log=log)
    assert [(p.path, p.offset) for p in log.problems] == [(str(files[case]), offset)]
    assert log.exit_status == 1
    assert table.column("capture").to_pylist().count(str(files[case])) == kept
    assert table.num_rows == kept + 5


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("VPNID_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "classifier.cli.main", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)


def test_subprocess_all_bad_inputs_then_a_good_one(files, tmp_path):
    out = tmp_path / "all.jsonl"
    names = list(CASES)
    r = _run("flows", *(str(files[n]) for n in names), str(files["good"]), "-o", str(out))
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    lines = _error_lines(r.stderr)
    assert len(lines) == len(names)
    for name, line in zip(names, lines, strict=True):
        assert str(files[name]) in line and f"at byte {CASES[name][1]}:" in line
    assert len(out.read_text().splitlines()) == sum(c[2] for c in CASES.values()) + 5


def test_exit_status_clean_run_and_usage_errors(files, tmp_path):
    r = _run("flows", str(files["good"]), "-o", str(tmp_path / "ok.csv"))
    assert r.returncode == 0, r.stderr
    assert _error_lines(r.stderr) == []
    r = _run("flows", str(files["good"]))  # no -o
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "-o" in r.stderr
    with pytest.raises(SystemExit) as exc:
        main(["flows", str(files["good"]), "-o", str(tmp_path / "x.parquet"), "--format", "xml"])
    assert exc.value.code == 2
    assert main(["flows", str(files["good"]), "-o", str(tmp_path / "x.parquet"), "--idle-timeout", "0"]) == 2
    assert not (tmp_path / "x.parquet").exists()
    assert main(["flows", str(tmp_path / "missing.pcap"), "-o", str(tmp_path / "m.parquet")]) == 1


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_output_is_never_half_written(files, tmp_path, monkeypatch, capsys):
    """A failure mid-run removes the temporary file; the target appears only when complete."""
    import classifier.flows.api as api

    real = api.iter_flow_batches
    target = tmp_path / "flows.parquet"
    target.write_bytes(b"previous complete output")
    seen_during_run: list[tuple[bool, list[str]]] = []

    def failing(*args, **kw):
        for batch in real(*args, **kw):
            yield batch
            seen_during_run.append((target.read_bytes() == b"previous complete output",
                                    sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name)))
            raise RuntimeError("disk vanished")

    monkeypatch.setattr(api, "iter_flow_batches", failing)
    status = main(["flows", str(files["good"]), str(files["good"]), "-o", str(target)])
    err = capsys.readouterr().err
    assert status == 3 and "internal error" in err and "Traceback" not in err
    assert seen_during_run == [(True, [f".flows.parquet.tmp-{os.getpid()}"])]
    assert target.read_bytes() == b"previous complete output"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]

    monkeypatch.setattr(api, "iter_flow_batches", real)
    assert main(["flows", str(files["good"]), "-o", str(target)]) == 0
    assert pq.read_table(target).num_rows == 5
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_cut_gzip_input_keeps_what_decompressed(tmp_path, capsys):
    import gzip

    frames = [bytes(Ether(**MAC) / IP(src="10.0.0.1", dst=f"10.{i // 250}.0.{i % 250 + 1}") / UDP(sport=7, dport=53)
                    / Raw(bytes(range(256)) * 4)) for i in range(1500)]
    data = gzip.compress(pcap_bytes([(T0 + i, f) for i, f in enumerate(frames)]), compresslevel=1)
    cut = tmp_path / "cut.pcap.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(b"\x1f\x8b" + b"not deflate" * 20)
    good = tmp_path / "good.pcap"
    good.write_bytes(good_pcap())
    out = tmp_path / "o.parquet"
    assert main(["flows", str(cut), str(garbage), str(good), "-o", str(out)]) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 2
    assert str(cut) in lines[0] and "at byte " in lines[0]
    assert str(garbage) in lines[1] and "at byte 0:" in lines[1]
    captures = pq.read_table(out).column("capture").to_pylist()
    assert 500 < captures.count(str(cut)) < 1500  # most of what was decompressed is kept
    assert captures.count(str(good)) == 5
