"""Endpoint context: the model's flows of one client to one server port, judged together."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import cut_pcap
from hypothesis import given, settings
from hypothesis import strategies as st

from classifier.cli.main import main
from classifier.model.endpoint_context import (
    DETECTION,
    ENCRYPTED_PROXY,
    MIN_FLOWS,
    EndpointTally,
    RunningEndpoints,
    judge,
    lift_scores,
    model_proba,
    with_endpoint_context,
)
from classifier.model.features import fully_encrypted_both_ways

REPO = Path(__file__).resolve().parents[1]
LAB_DIR = REPO / "pcaps"
SS = LAB_DIR / "shadowsocks.pcap"
THR = 0.9


def _keys(capture: list[str], port: list[int]) -> dict[str, pa.Array]:
    n = len(capture)
    return {"capture": pa.array(capture), "src_ip": pa.array(["10.0.0.2"] * n), "dst_ip": pa.array(["10.0.0.1"] * n),
            "dst_port": pa.array(port, pa.uint16()), "ip_proto": pa.array([6] * n, pa.uint8())}


#: First-payload statistics (set bits per byte, printable share, TLS record share) of a
#: random start and of a TLS one.
RANDOM_HEAD, TLS_HEAD = (4.02, 0.36, 0.0), (3.1, 0.2, 1.0)


def _heads(encrypted: list[bool]) -> dict[str, pa.Array]:
    """The columns ``fully_encrypted_both_ways`` reads: TCP from the SYN, random starts both
    ways where ``encrypted``, TLS both ways elsewhere."""
    n = len(encrypted)
    head = np.where(np.asarray(encrypted, bool)[:, None], RANDOM_HEAD, TLS_HEAD).reshape(n, 3)
    cols = {"first_tcp_flags": pa.array([0x02] * n, pa.uint8()), "truncated_packets": pa.array([0] * n, pa.int64())}
    for d in ("src2dst", "dst2src"):
        for j, name in enumerate(("first_payload_bits", "first_payload_printable", "tls_record_frac")):
            cols[f"{d}_{name}"] = pa.array(head[:, j])
    return cols


def _labelled(capture: list[str], port: list[int], proba: list[float], signature: list[bool],
              encrypted: list[bool] | None = None) -> pa.Table:
    """A labelled table as ``label_batch`` writes it, for a model with threshold ``THR`` (every
    flow TLS both ways unless ``encrypted`` says it is fully encrypted)."""
    p = np.asarray(proba)
    sig = np.asarray(signature, bool)
    vpn = sig | (p >= THR)
    return pa.table({
        **_keys(capture, port),
        **_heads(encrypted if encrypted is not None else [False] * len(p)),
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
    score, lifted, by_encryption = lift_scores(t, p, np.ones(12, bool), THR)
    assert np.flatnonzero(lifted).tolist() == [3, 4]
    assert score[[3, 4]].tolist() == [.99, .99] and np.array_equal(score[~lifted], p[~lifted])
    assert not by_encryption.any()
    # The two high flows a signature decided neither count nor get lifted.
    scored = np.ones(12, bool)
    scored[[0, 1]] = False
    assert not lift_scores(t, p, scored, THR).lifted.any()


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
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.floats(0, 1), st.booleans(), st.booleans()),
                min_size=1, max_size=60),
       st.lists(st.integers(1, 60), max_size=5), st.booleans())
def test_streaming_two_passes_equal_one_pass_over_the_whole_table(rows, cuts, encrypted) -> None:
    cap = [f"c{r[0]}" for r in rows]
    port = [r[1] for r in rows]
    t = _labelled(cap, port, [r[2] for r in rows], [r[3] for r in rows], [r[4] for r in rows])
    bounds = sorted({0, len(rows), *[c for c in cuts if c < len(rows)]})
    parts = [t.slice(a, b - a) for a, b in itertools.pairwise(bounds)]
    streamed = pa.concat_tables(list(with_endpoint_context(parts, encrypted=encrypted)))
    tally = EndpointTally(encrypted=encrypted)
    tally.add(t)
    whole = tally.apply(t)
    assert streamed.equals(whole)
    # The same rules as evaluate's array form.
    proba, scored, _ = model_proba(t)
    lift = lift_scores(t, proba, scored, THR, encrypted=encrypted)
    assert np.array_equal(np.asarray(whole.column("detection").to_pylist()) == DETECTION, lift.lifted)
    by_fe = np.asarray(whole.column("vpn_protocol").to_pylist(), object) == ENCRYPTED_PROXY
    assert encrypted or not lift.by_encryption.any()
    assert not (by_fe & ~lift.by_encryption).any()  # encrypted-proxy only from that rule


def test_fully_encrypted_needs_tcp_from_the_syn_and_random_starts_both_ways() -> None:
    t = pa.table(_heads([True] * 7)).append_column("ip_proto", pa.array([6] * 6 + [17], pa.uint8()))
    t = t.set_column(0, "first_tcp_flags", pa.array([0x02, 0x10, None, 0x02, 0x02, 0x02, None], pa.uint8()))
    bits = t.column("dst2src_first_payload_bits").to_pylist()
    bits[3] = 3.1  # the server's first payload is not random (a header, text)
    printable = t.column("src2dst_first_payload_printable").to_pylist()
    printable[4] = 0.9  # the client's is mostly text
    tls = t.column("dst2src_tls_record_frac").to_pylist()
    tls[5] = 1.0  # the server answers with TLS records
    for name, col in (("dst2src_first_payload_bits", bits), ("src2dst_first_payload_printable", printable),
                      ("dst2src_tls_record_frac", tls)):
        t = t.set_column(t.schema.get_field_index(name), name, pa.array(col))
    # row 0 only: row 1 entered mid-stream (no SYN), row 2 is unknown, row 6 is UDP
    assert fully_encrypted_both_ways(t).tolist() == [True] + [False] * 6
    no_payload = t.set_column(t.schema.get_field_index("dst2src_first_payload_bits"), "dst2src_first_payload_bits",
                              pa.array([None] * 7, pa.float64()))
    assert not fully_encrypted_both_ways(no_payload).any()
    # a snapshot length cut some of row 0's packets: the Telegram signature could not read its start
    cut = t.set_column(t.schema.get_field_index("truncated_packets"), "truncated_packets", pa.array([3] + [0] * 6))
    assert not fully_encrypted_both_ways(cut).any()


def test_an_endpoint_of_fully_encrypted_flows_is_lifted_only_with_the_rule_on() -> None:
    """Six flows the model leaves under its threshold, five fully encrypted: the rule lifts all six."""
    t = _labelled(["a"] * 8, [8388] * 6 + [443] * 2, [.8, .7, .6, .5, .4, .3, .2, .2], [False] * 8,
                  [True] * 5 + [False] + [True] * 2)
    tally = EndpointTally()
    tally.add(t)
    assert tally.apply(t).equals(t)  # off: the model called none of them VPN
    tally = EndpointTally(encrypted=True)
    tally.add(t)
    v = tally.finish()
    assert v.encrypted.tolist() == [5, 2] and v.lifted.tolist() == [True, False]
    assert v.by_encryption.tolist() == [True, False]
    rows = tally.apply(t).to_pylist()
    assert [r["detection"] for r in rows] == [DETECTION] * 6 + ["model"] * 2
    assert {r["vpn_protocol"] for r in rows[:6]} == {ENCRYPTED_PROXY}
    assert rows[0]["confidence"] == pytest.approx(5 / 6)
    assert rows[5]["evidence"].startswith("endpoint: 5 of 6 flows from this client to this server port fully "
                                          "encrypted both ways")
    assert rows[5]["evidence"].endswith("this flow alone: flow 5")
    # Evaluate's form: a flow the rule alone lifted scores 1 (its P(VPN) does not describe it).
    proba, scored, _ = model_proba(t)
    score, lifted, by_encryption = lift_scores(t, proba, scored, THR, encrypted=True)
    assert lifted.tolist() == [True] * 6 + [False] * 2 and score[:6].tolist() == [1.0] * 6
    assert np.array_equal(by_encryption, lifted)
    assert not lift_scores(t, proba, scored, THR).lifted.any()
    # A flow or two the model called VPN give the endpoint their protocol.
    t = _labelled(["a"] * 6, [8388] * 6, [.95, .7, .6, .5, .4, .3], [False] * 6, [True] * 6)
    tally = EndpointTally(encrypted=True)
    tally.add(t)
    assert [r["vpn_protocol"] for r in tally.apply(t).to_pylist()] == ["shadowsocks"] * 6


def test_a_model_majority_keeps_its_own_verdict_when_the_flows_are_also_encrypted() -> None:
    t = _labelled(["a"] * 6, [8388] * 6, [.99, .98, .97, .96, .5, .2], [False] * 6, [True] * 6)
    tally = EndpointTally(encrypted=True)
    tally.add(t)
    rows = tally.apply(t).to_pylist()
    assert [r["vpn_protocol"] for r in rows[4:]] == ["shadowsocks"] * 2  # the model's guess
    assert rows[4]["confidence"] == pytest.approx(0.965)
    assert rows[4]["evidence"].startswith("endpoint: 4 of 6 flows from this client to this server port called VPN")


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
    want = lift_scores(a, proba, scored, thr).lifted
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


def test_running_endpoints_apply_the_fully_encrypted_rule_only_when_asked() -> None:
    on, off = RunningEndpoints(encrypted=True), RunningEndpoints()
    got_on, got_off = [], []
    for i in range(6):
        flow = _labelled(["eth0"], [8388], [.3], [False], [i != 1])
        got_on.append(on.apply(flow).column("vpn_protocol")[0].as_py())
        got_off.append(off.apply(flow).column("vpn_protocol")[0].as_py())
    # the fifth flow ends with four of five fully encrypted
    assert got_on == [None] * 4 + [ENCRYPTED_PROXY] * 2 and got_off == [None] * 6


def test_running_endpoints_stay_bounded() -> None:
    run = RunningEndpoints(keep=4, max_endpoints=3)
    for port in range(10):
        run.apply(_labelled(["eth0"] * 6, [port] * 6, [.99] * 6, [False] * 6))
    assert len(run) == 3
    assert all(len(scores) == 4 for scores, _ in run._seen.values())
    assert [k.split("\x1f")[3] for k in run._seen] == ["7", "8", "9"]  # the least recently seen went first


def _replay_live(capture: Path, model, signatures: bool, tmp_path: Path) -> pa.Table:
    """``capture`` through the live sensor (every flow ends at stop, together): its flow file, read back."""
    from test_live import FileCapture

    from classifier.live.capture import CaptureOptions
    from classifier.live.sensor import LiveOptions, Sensor
    from classifier.pipeline import LabelOptions

    opts = LiveOptions(capture=CaptureOptions("test0"), out_dir=tmp_path / "out", alerts=str(tmp_path / "a.jsonl"),
                       label=LabelOptions(signatures=signatures, model=model), tick_s=1e9, early=False, stats_s=0,
                       quiet=True)
    holder: dict = {}
    cap = FileCapture(capture, per_read=10_000, on_empty=lambda: holder["sensor"].stop())
    holder["sensor"] = Sensor(opts, capture=cap)
    holder["sensor"].run()
    return pq.read_table(next((tmp_path / "out").glob("*.parquet")))


@needs_lab
def test_live_sensor_lifts_what_classify_lifts(tmp_path) -> None:
    """Replayed through the live sensor (every flow ends at stop, together), an endpoint is lifted as offline."""
    from classifier.model import load_model

    capture, _, _, thr = _majority_endpoint(tmp_path)
    offline = tmp_path / "offline.parquet"
    assert main(["classify", "--no-signatures", "--threshold", str(thr), str(capture), "-o", str(offline), "-q"]) == 0
    model = load_model()
    model.threshold = thr
    live = _replay_live(capture, model, False, tmp_path)

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


#: A threshold the shipped model's scores of the Shadowsocks sample stay under, so any flow
#: lifted there is lifted by the fully-encrypted rule, not by a model majority.
HIGH = 0.9999


def _encryption_lifted(t: pa.Table) -> np.ndarray:
    return np.asarray(t.column("vpn_protocol").to_pylist(), object) == ENCRYPTED_PROXY


@needs_lab
def test_classify_lifts_a_fully_encrypted_endpoint_only_with_the_signatures_on(tmp_path) -> None:
    off, on, alone = tmp_path / "off.parquet", tmp_path / "on.parquet", tmp_path / "alone.parquet"
    base = ["classify", "--threshold", str(HIGH), str(SS), "-q", "-o"]
    assert main([*base, str(off), "--no-endpoint-context"]) == 0
    assert main([*base, str(on)]) == 0
    assert main([*base, str(alone), "--no-signatures"]) == 0
    a, b = pq.read_table(off), pq.read_table(on)
    proba, scored, vpn = model_proba(a)
    assert not vpn.any()
    want = lift_scores(a, proba, scored, HIGH, encrypted=True).lifted
    got = np.asarray(b.column("detection").to_pylist(), object) == DETECTION
    assert want.sum() >= MIN_FLOWS and np.array_equal(got, want) and np.array_equal(_encryption_lifted(b), got)
    assert all(e.startswith("endpoint: ") and "fully encrypted both ways" in e
               for e in np.asarray(b.column("evidence").to_pylist(), object)[got])
    keep = np.flatnonzero(~got)
    assert b.take(keep).equals(a.take(keep))
    # The model alone: Telegram's transport would count as well, so the rule stays off.
    c = pq.read_table(alone)
    assert not (np.asarray(c.column("detection").to_pylist(), object) == DETECTION).any()
    # Cut to 96 bytes a frame, the same capture hides the starts the Telegram signature reads: off too.
    cut, cut_out = tmp_path / "cut.pcap", tmp_path / "cut.parquet"
    cut_pcap(SS, cut, 96)
    assert main(["classify", "--threshold", str(HIGH), str(cut), "-q", "-o", str(cut_out)]) == 0
    d = pq.read_table(cut_out)
    assert d.num_rows == a.num_rows and (d.column("truncated_packets").to_numpy() > 0).all()
    assert not _encryption_lifted(d).any()


@needs_lab
def test_live_and_batch_lift_the_fully_encrypted_endpoint_classify_lifts(tmp_path) -> None:
    from classifier.batch import BatchOptions, LabelSpec, run_batch
    from classifier.batch.split import split_pcap
    from classifier.batch.verify import compare_tables
    from classifier.errors import ErrorLog
    from classifier.model import default_model_path, load_model
    from classifier.model.io import load_bundle, save_bundle

    bundle = load_bundle(default_model_path())
    bundle["threshold"] = HIGH
    model_path = tmp_path / "model.skops"
    save_bundle(bundle, model_path)
    whole = tmp_path / "whole.parquet"
    assert main(["classify", "--model", str(model_path), str(SS), "-o", str(whole), "-q"]) == 0
    want = pq.read_table(whole).sort_by("flow_id")
    assert _encryption_lifted(want).sum() >= MIN_FLOWS

    live = _replay_live(SS, load_model(model_path), True, tmp_path)

    def lifted(t: pa.Table) -> list:
        return sorted((r["src_port"], r["confidence"]) for r in t.to_pylist() if r["vpn_protocol"] == ENCRYPTED_PROXY)

    assert lifted(live) == lifted(want)
    alerts = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert sum(a["detection"] == DETECTION for a in alerts) == len(lifted(live))

    pieces = split_pcap(SS, tmp_path / "rot", seconds=1)
    assert len(pieces) >= 2
    spec = LabelSpec(signatures=True, model_path=str(model_path))
    run_batch(BatchOptions(inputs=[str(x) for x in pieces], output=str(tmp_path / "ds"), scheduler="inline",
                           quiet=True, spec=spec), ErrorLog(quiet=True))
    got = pa.concat_tables([pq.read_table(x) for x in sorted((tmp_path / "ds").glob("part-*.parquet"))])
    assert not compare_tables(got.sort_by("flow_id"), want)
