"""``vpnid batch`` datasets: contract columns, restart after changes, failures and crashes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import classifier.batch.runner as runner_mod
from classifier.batch import BatchOptions, LabelSpec, run_batch
from classifier.batch.split import split_pcap
from classifier.cli.main import main
from classifier.errors import ErrorLog
from classifier.flows.schema import CLASSIFY_SCHEMA, REGISTRY_FIELDS

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "pcaps"


@pytest.fixture(scope="module")
def pieces(tmp_path_factory) -> list[Path]:
    from test_batch_merge import _synthetic

    d = tmp_path_factory.mktemp("pieces")
    _synthetic(d / "whole.pcap")
    return split_pcap(d / "whole.pcap", d / "rot", seconds=3)


def _opts(inputs, out, **kw) -> BatchOptions:
    return BatchOptions(inputs=[str(p) for p in inputs], output=str(out), scheduler="inline", quiet=True,
                        spec=kw.pop("spec", LabelSpec(signatures=True)), **kw)


def _parts(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*.parquet"))}


def test_dataset_has_classify_columns_and_merged_flows(pieces, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    s = run_batch(_opts(pieces, out), ErrorLog(quiet=True))
    assert s.exit_status == 0 and s.processed == len(pieces) and s.merges > 0
    table = ds.dataset(out).to_table()
    assert table.column_names == CLASSIFY_SCHEMA.names
    assert table.num_rows == s.flows
    assert table.column("flow_id").to_pylist() == sorted(table.column("flow_id").to_pylist())
    assert len(set(table.column("flow_id").to_pylist())) == table.num_rows
    tcp = table.filter((pc.field("dst_port") == 443) & (pc.field("ip_proto") == 6))
    assert tcp.num_rows == 1 and tcp.column("packets")[0].as_py() == 30
    assert not list(out.rglob("*.tmp-*"))


def test_rerun_skips_done_inputs_and_redoes_changed_ones(pieces, tmp_path: Path) -> None:
    inputs = []
    for p in pieces:  # private copies: this test modifies one
        q = tmp_path / "in" / p.name
        q.parent.mkdir(exist_ok=True)
        q.write_bytes(p.read_bytes())
        inputs.append(q)
    out = tmp_path / "ds"
    first = run_batch(_opts(inputs, out), ErrorLog(quiet=True))
    before = _parts(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}

    again = run_batch(_opts(inputs, out), ErrorLog(quiet=True))
    assert (again.processed, again.cached, again.written) == (0, len(inputs), False)
    assert {p: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")} == mtimes

    # Change one input (drop its last packet record): only it is processed again.
    victim = inputs[len(inputs) // 2]
    from classifier.batch.split import record_index

    offs, _, _ = record_index(victim)
    data = victim.read_bytes()[: int(offs[-1])]
    victim.write_bytes(data)
    changed = run_batch(_opts(inputs, out), ErrorLog(quiet=True))
    assert (changed.processed, changed.cached) == (1, len(inputs) - 1)
    assert changed.flows >= first.flows - 1

    # The result equals a fresh run over the same inputs.
    fresh = tmp_path / "fresh"
    run_batch(_opts(inputs, fresh), ErrorLog(quiet=True))
    assert _parts(fresh).keys() == _parts(out).keys()
    assert ds.dataset(fresh).to_table().equals(ds.dataset(out).to_table())
    assert before  # the first run wrote partitions
    manifest = json.loads((out / "_manifest.json").read_text())
    entry = manifest["inputs"][os.path.abspath(victim)]
    assert entry["status"] == "done" and entry["size"] == len(data) and len(entry["digest"]) == 32


def test_failed_input_is_redone_on_the_next_run(pieces, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "ds"
    real = runner_mod.process_file
    bad = str(Path(pieces[1]).resolve())

    def flaky(path, config, spec):
        if path == bad:
            raise RuntimeError("worker lost")
        return real(path, config, spec)

    monkeypatch.setattr(runner_mod, "process_file", flaky)
    s = run_batch(_opts(pieces, out), ErrorLog(quiet=True))
    assert s.failed == 1 and s.exit_status == 1
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["inputs"][bad]["status"] == "failed"
    assert "worker lost" in manifest["inputs"][bad]["error"]

    monkeypatch.setattr(runner_mod, "process_file", real)
    s2 = run_batch(_opts(pieces, out), ErrorLog(quiet=True))
    assert (s2.processed, s2.failed, s2.exit_status) == (1, 0, 0)
    whole = tmp_path / "whole"
    run_batch(_opts(pieces, whole), ErrorLog(quiet=True))
    assert ds.dataset(whole).to_table().equals(ds.dataset(out).to_table())


def test_crash_while_committing_never_leaves_half_written_partitions(pieces, tmp_path: Path,
                                                                    monkeypatch) -> None:
    out = tmp_path / "ds"
    real_replace = os.replace
    calls = {"n": 0}

    def crashing_replace(src, dst):
        if str(dst).endswith(".parquet") and "part-" in str(dst) and "stage" not in str(dst):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt("power cut")
        return real_replace(src, dst)

    monkeypatch.setattr(runner_mod.os, "replace", crashing_replace)
    with pytest.raises(KeyboardInterrupt):
        run_batch(_opts(pieces, out), ErrorLog(quiet=True))
    monkeypatch.setattr(runner_mod.os, "replace", real_replace)
    for p in out.glob("part-*.parquet"):  # every partition present is a whole Parquet file
        pq.read_table(p)
    s = run_batch(_opts(pieces, out), ErrorLog(quiet=True))
    assert s.processed == 0 and s.written
    fresh = tmp_path / "fresh"
    run_batch(_opts(pieces, fresh), ErrorLog(quiet=True))
    assert _parts(fresh) == _parts(out)


def test_cli_batch_with_registry(pieces, tmp_path: Path, capsys) -> None:
    registry = LAB / "registered-sample.csv"
    if not registry.exists():
        pytest.skip("pcaps/registered-sample.csv not present")
    out = tmp_path / "ds"
    rc = main(["batch", *map(str, pieces), "-o", str(out), "--registry", str(registry), "--workers", "1",
               "--scheduler", "inline", "--no-model"])
    assert rc == 0
    err = capsys.readouterr().err
    assert f"[{len(pieces)}/{len(pieces)}]" in err and "merged across files" in err
    table = ds.dataset(out).to_table()
    assert table.column_names == CLASSIFY_SCHEMA.names + [f.name for f in REGISTRY_FIELDS]


def test_cli_batch_takes_a_shipped_model_by_name(pieces, tmp_path: Path) -> None:
    from classifier.model.model import shipped_model_path

    out = tmp_path / "ds"
    assert main(["batch", str(pieces[0]), "-o", str(out), "--scheduler", "inline", "--model", "headers-only"]) == 0
    settings = json.loads((out / "_manifest.json").read_text())["settings"]
    assert settings["model"]["path"] == str(shipped_model_path("headers-only").resolve())
    assert main(["batch", str(pieces[0]), "-o", str(tmp_path / "o2"), "--scheduler", "inline",
                 "--model", "no-such-model"]) == 2


def test_cli_reports_bad_input_with_file_and_offset(tmp_path: Path, capsys, pieces) -> None:
    bad = tmp_path / "broken.pcap"
    bad.write_bytes(b"this is not a capture at all")
    out = tmp_path / "ds"
    rc = main(["batch", str(bad), str(pieces[0]), "-o", str(out), "--scheduler", "inline", "--no-model"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "broken.pcap at byte 0: not a pcap or pcapng capture" in err
    assert "Traceback" not in err
    assert ds.dataset(out).to_table().num_rows > 0


def test_usage_errors(tmp_path: Path, capsys) -> None:
    assert main(["batch", str(tmp_path / "missing.pcap"), "-o", str(tmp_path / "o")]) == 2
    assert main(["batch", "x.pcap", "-o", str(tmp_path / "o"), "--scheduler", "bogus"]) == 2
    assert "--scheduler" in capsys.readouterr().err


def test_inputs_out_of_time_order_give_the_same_dataset(pieces, tmp_path: Path) -> None:
    """Files are stitched in input order while later ones are still being processed;
    when their timestamps say otherwise, everything is stitched again in time order."""
    ordered, shuffled = tmp_path / "ordered", tmp_path / "shuffled"
    s1 = run_batch(_opts(pieces, ordered), ErrorLog(quiet=True))
    mixed = [*reversed(pieces[1:]), pieces[0]]
    s2 = run_batch(_opts(mixed, shuffled), ErrorLog(quiet=True))
    assert (s1.flows, s1.merges) == (s2.flows, s2.merges) and s1.merges > 0
    assert _parts(ordered) == _parts(shuffled)
