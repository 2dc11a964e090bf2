"""Endpoint context: the model's flows of one client to one server port, judged together."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from classifier.cli.main import main
from classifier.model.endpoint_context import (
    DETECTION,
    MIN_FLOWS,
    EndpointTally,
    RunningEndpoints,
    judge,
    lift_scores,
    model_proba,
    with_endpoint_context,
)

REPO = Path(__file__).resolve().parents[1]
LAB_DIR = REPO / "pcaps"
SS = LAB_DIR / "shadowsocks.pcap"
THR = 0.9


def _keys(capture: list[str], port: list[int]) -> dict[str, pa.Array]:
    n = len(capture)
    return {"capture": pa.array(capture), "src_ip": pa.array(["10.0.0.2"] * n), "dst_ip": pa.array(["10.0.0.1"] * n),
            "dst_port": pa.array(port, pa.uint16()), "ip_proto": pa.array([6] * n, pa.uint8())}


def _labelled(capture: list[str], port: list[int], proba: list[float], signature: list[bool]) -> pa.Table:
    """A labelled table as ``label_batch`` writes it, for a model with threshold ``THR``."""
    p = np.asarray(proba)
    sig = np.asarray(signature, bool)
    vpn = sig | (p >= THR)
    return pa.table({
        **_keys(capture, port),
        "is_vpn": pa.array(vpn),
        "vpn_protocol": pa.array(np.where(sig, "wireguard", np.where(vpn, "shadowsocks", None)).tolist(), pa.string()),
        "confidence": pa.array(np.where(sig, 0.99, np.where(vpn, p, 1 - p))),
        "detection": pa.array(np.where(sig, "signature", "model").tolist(), pa.string()),
        "evidence": pa.array([f"flow {i}" for i in range(len(p))], pa.string()),
    })


def test_judge_lifts_an_endpoint_the_model_mostly_called_vpn_and_only_with_enough_flows() -> None:
    codes = np.array([0] * 5 + [1] * 4 + [2] * 5 + [3] * 6)
    proba = np.array([.99, .95, .93, .5, .1, .99, .99, .99, .1, .99, .95, .5, .4, .1, .99, .99, .99, .5, .4, .1])
    v = judge(codes, proba >= THR, proba, 4)
    assert v.flows.tolist() == [5, 4, 5, 6] and v.vpn.tolist() == [3, 3, 2, 3]
    assert v.median.tolist() == pytest.approx([.93, .99, .5, .745])
    # 4 flows are too few; a minority passes nothing, and neither does half
    assert v.lifted.tolist() == [True, False, False, False]
    assert judge(codes, proba >= THR, proba, 4, min_flows=4).lifted.tolist() == [True, True, False, False]


def test_lift_scores_keeps_captures_and_ports_apart_and_ignores_unscored_flows() -> None:
    t = pa.table(_keys(["a"] * 5 + ["b"] * 5 + ["a"] * 2, [443] * 10 + [80] * 2))
    p = np.array([.99, .99, .99, .2, .3, .99, .99, .2, .2, .2, .1, .1])
    score, lifted = lift_scores(t, p, np.ones(12, bool), THR)
    assert np.flatnonzero(lifted).tolist() == [3, 4]
    assert score[[3, 4]].tolist() == [.99, .99] and np.array_equal(score[~lifted], p[~lifted])
    # The two high flows a signature decided neither count nor get lifted.
    scored = np.ones(12, bool)
    scored[[0, 1]] = False
    _, lifted = lift_scores(t, p, scored, THR)
    assert not lifted.any()


def test_tally_relabels_only_the_lifted_flows() -> None:
    t = _labelled(["a"] * 7, [8388] * 7, [.99, .98, .97, .96, .5, .2, .1], [False] * 6 + [True])
    tally = EndpointTally()
    tally.add(t)
    out = tally.apply(t)
    rows = out.to_pylist()
    assert [r["detection"] for r in rows] == ["model"] * 4 + [DETECTION] * 2 + ["signature"]
    assert all(r["is_vpn"] and r["vpn_protocol"] for r in rows)
    lifted = rows[4]
    assert lifted["vpn_protocol"] == "shadowsocks"  # the endpoint's model guess, not the signature's
    assert lifted["confidence"] == pytest.approx(0.965)  # median of the six scored flows
    assert lifted["evidence"].startswith("endpoint: 4 of 6 flows") and lifted["evidence"].endswith("flow 4")
    assert out.select(["capture", "dst_port"]).equals(t.select(["capture", "dst_port"]))
    unchanged = [0, 1, 2, 3, 6]
    assert out.take(unchanged).equals(t.take(unchanged))
    assert model_proba(out)[1].sum() == 4  # lifted flows are no longer the model's alone


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.floats(0, 1), st.booleans()), min_size=1,
                max_size=60),
       st.lists(st.integers(1, 60), max_size=5))
def test_streaming_two_passes_equal_one_pass_over_the_whole_table(rows, cuts) -> None:
    cap = [f"c{r[0]}" for r in rows]
    port = [r[1] for r in rows]
    t = _labelled(cap, port, [r[2] for r in rows], [r[3] for r in rows])
    bounds = sorted({0, len(rows), *[c for c in cuts if c < len(rows)]})
    parts = [t.slice(a, b - a) for a, b in itertools.pairwise(bounds)]
    streamed = pa.concat_tables(list(with_endpoint_context(parts)))
    tally = EndpointTally()
    tally.add(t)
    whole = tally.apply(t)
    assert streamed.equals(whole)
    # The same rule as evaluate's array form.
    proba, scored, _ = model_proba(t)
    _, lifted = lift_scores(t, proba, scored, THR)
    assert np.array_equal(np.asarray(whole.column("detection").to_pylist()) == DETECTION, lifted)


needs_lab = pytest.mark.skipif(not ((LAB_DIR / "dns.pcap").is_file() and SS.is_file()),
                               reason="lab captures pcaps/*.pcap absent")


def _p(table: pa.Table) -> np.ndarray:
    return model_proba(table)[0]


def _majority_threshold(p: np.ndarray) -> float | None:
    """A threshold that more than half of the scores ``p`` pass and some do not, halfway
    between two of them (P recovered from a written ``confidence`` can be an ulp off, so a
    threshold equal to a score would be a coin toss); None when ties leave no such split."""
    values = np.unique(p)
    for i in range(len(values) - 1, 0, -1):
        passing = int((p >= values[i]).sum())
        if passing > len(p) // 2:
            return float((values[i - 1] + values[i]) / 2)
    return None


#: Sample captures whose server endpoint holds at least MIN_FLOWS flows; the shipped model
#: scores them all as non-VPN, some a little higher than others.
ONE_ENDPOINT = ("dns.pcap", "quic.pcap", "https.pcap", "ssh.pcap")


def _endpoint_flows(table: pa.Table, capture: Path) -> np.ndarray:
    """Rows of ``capture``'s busiest server endpoint (destination address and port)."""
    caps = np.asarray(table.column("capture").to_pylist(), str)
    keys = np.asarray([f"{a}|{b}" for a, b in zip(table.column("dst_ip").to_pylist(),
                                                  table.column("dst_port").to_pylist(), strict=True)])
    mine = np.char.endswith(caps, capture.name)
    values, counts = np.unique(keys[mine], return_counts=True)
    return np.flatnonzero(mine & (keys == values[np.argmax(counts)]))


def _majority_endpoint(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray, float]:
    """A sample capture whose endpoint's scores a threshold splits, more than half over it:
    (capture, the endpoint's rows, their P(VPN), that threshold)."""
    for name in ONE_ENDPOINT:
        capture = LAB_DIR / name
        first = tmp_path / f"{name}.parquet"
        assert main(["classify", "--no-signatures", str(capture), "-o", str(first), "-q"]) == 0
        t = pq.read_table(first)
        rows = _endpoint_flows(t, capture)
        p = _p(t)[rows]
        thr = _majority_threshold(p)
        if len(rows) >= MIN_FLOWS and thr is not None:
            return capture, rows, p, thr
    raise AssertionError(f"no endpoint of {ONE_ENDPOINT} with scores a majority threshold splits")


@needs_lab
def test_classify_lifts_exactly_what_the_rule_says(tmp_path) -> None:
    """At a threshold most of one endpoint's flows pass, the rest are lifted; nothing else moves."""
    capture, _, p, thr = _majority_endpoint(tmp_path)
    first = tmp_path / "first.parquet"
    assert main(["classify", "--no-signatures", str(capture), str(SS), "-o", str(first), "-q"]) == 0
    t = pq.read_table(first)
    mine = _endpoint_flows(t, capture)
    assert np.array_equal(_p(t)[mine], p) and (p < thr).any()
    off, on = tmp_path / "off.parquet", tmp_path / "on.parquet"
    assert main(["classify", "--no-signatures", "--threshold", str(thr), "--no-endpoint-context", str(capture),
                 str(SS), "-o", str(off), "-q"]) == 0
    assert main(["classify", "--no-signatures", "--threshold", str(thr), str(capture), str(SS), "-o", str(on),
                 "-q"]) == 0
    a, b = pq.read_table(off), pq.read_table(on)
    assert json.loads(pq.read_metadata(on).metadata[b"vpnid.endpoint_context"]) is True
    assert a.num_rows == b.num_rows == t.num_rows
    proba, scored, _ = model_proba(a)
    _, want = lift_scores(a, proba, scored, thr)
    got = np.asarray(b.column("detection").to_pylist(), object) == DETECTION
    assert np.array_equal(got, want) and got.sum() == (p < thr).sum()
    assert set(np.flatnonzero(got)) <= set(mine)
    assert all(b.column("is_vpn").to_pylist()[i] for i in np.flatnonzero(got))
    keep = np.flatnonzero(~got)
    assert b.take(keep).equals(a.take(keep))


def test_running_endpoints_judge_each_flow_on_the_flows_ended_before_and_with_it() -> None:
    run = RunningEndpoints()
    proba = [.99, .99, .2, .99, .1, .3]
    got = []
    for p in proba:  # one flow ends at a time
        out = run.apply(_labelled(["eth0"], [8388], [p], [False]))
        got.append(out.column("detection")[0].as_py())
    # flow 2 ended with 3 flows on record; flow 4 with 5, three of them VPN; flow 5 with
    # 6, of which only half VPN
    assert got == ["model", "model", "model", "model", DETECTION, "model"]
    # Signature verdicts neither count nor change; other endpoints are apart.
    batch = _labelled(["eth0"] * 6, [443] * 5 + [8388], [.99, .99, .99, .99, .5, .5], [True] * 5 + [False])
    assert run.apply(batch).equals(batch)
    assert len(run) == 1


def test_running_endpoints_stay_bounded() -> None:
    run = RunningEndpoints(keep=4, max_endpoints=3)
    for port in range(10):
        run.apply(_labelled(["eth0"] * 6, [port] * 6, [.99] * 6, [False] * 6))
    assert len(run) == 3
    assert all(len(scores) == 4 for scores, _ in run._seen.values())
    assert [k.split("\x1f")[3] for k in run._seen] == ["7", "8", "9"]  # the least recently seen went first


@needs_lab
def test_live_sensor_lifts_what_classify_lifts(tmp_path) -> None:
    """Replayed through the live sensor (every flow ends at stop, together), an endpoint is lifted as offline."""
    from test_live import FileCapture

    from classifier.live.capture import CaptureOptions
    from classifier.live.sensor import LiveOptions, Sensor
    from classifier.model import load_model
    from classifier.pipeline import LabelOptions

    capture, _, _, thr = _majority_endpoint(tmp_path)
    offline = tmp_path / "offline.parquet"
    assert main(["classify", "--no-signatures", "--threshold", str(thr), str(capture), "-o", str(offline), "-q"]) == 0
    model = load_model()
    model.threshold = thr
    opts = LiveOptions(capture=CaptureOptions("test0"), out_dir=tmp_path / "out", alerts=str(tmp_path / "a.jsonl"),
                       label=LabelOptions(signatures=False, model=model), tick_s=1e9, early=False, stats_s=0,
                       quiet=True)
    holder: dict = {}
    cap = FileCapture(capture, per_read=10_000, on_empty=lambda: holder["sensor"].stop())
    holder["sensor"] = Sensor(opts, capture=cap)
    holder["sensor"].run()
    live = pq.read_table(next((tmp_path / "out").glob("*.parquet")))

    def lifted(t: pa.Table) -> list:
        rows = [r for r in t.to_pylist() if r["detection"] == DETECTION]
        return sorted((r["src_port"], r["dst_port"], r["confidence"]) for r in rows)

    assert lifted(live) == lifted(pq.read_table(offline)) and lifted(live)
    alerts = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert sum(a["detection"] == DETECTION for a in alerts) == len(lifted(live))


@needs_lab
def test_batch_over_rotated_files_lifts_what_classify_lifts_on_the_whole_capture(tmp_path) -> None:
    """A run is one capture: an endpoint's flows, split over rotated files, are judged together."""
    from classifier.batch import BatchOptions, LabelSpec, run_batch
    from classifier.batch.split import split_pcap
    from classifier.batch.verify import compare_tables
    from classifier.errors import ErrorLog
    from classifier.model import default_model_path
    from classifier.model.io import load_bundle, save_bundle

    capture, _, p, thr = _majority_endpoint(tmp_path)
    bundle = load_bundle(default_model_path())
    bundle["threshold"] = thr
    model = tmp_path / "model.skops"
    save_bundle(bundle, model)
    whole = tmp_path / "whole.parquet"
    assert main(["classify", "--no-signatures", "--model", str(model), str(capture), "-o", str(whole), "-q"]) == 0
    pieces = split_pcap(capture, tmp_path / "rot", seconds=2)
    assert len(pieces) >= 2

    def run(out: Path, context: bool) -> pa.Table:
        spec = LabelSpec(signatures=False, model_path=str(model), endpoint_context=context)
        run_batch(BatchOptions(inputs=[str(x) for x in pieces], output=str(out), scheduler="inline", quiet=True,
                               spec=spec), ErrorLog(quiet=True))
        t = pa.concat_tables([pq.read_table(x) for x in sorted(out.glob("part-*.parquet"))])
        return t.sort_by("flow_id")

    got, per_flow = run(tmp_path / "ds", True), run(tmp_path / "ds0", False)
    want = pq.read_table(whole).sort_by("flow_id")
    assert not compare_tables(got, want)
    lifted = np.asarray(got.column("detection").to_pylist(), object) == DETECTION
    assert lifted.sum() == (p < thr).sum() > 0
    assert not (np.asarray(per_flow.column("detection").to_pylist(), object) == DETECTION).any()
    assert json.loads(pq.read_schema(next((tmp_path / "ds").glob("part-*.parquet"))).metadata[
        b"vpnid.endpoint_context"]) is True
