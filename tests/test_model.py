"""The model: training recipe, calibrated predictions with evidence, safe skops files, CLI commands."""

from __future__ import annotations

import itertools
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import cut_pcap

from classifier.cli.main import main
from classifier.errors import UsageError
from classifier.model import ModelError, Prediction, VpnModel, load_model
from classifier.model.data import LabeledFlows, Truth, label_capture_flows, load_labeled, parse_labels
from classifier.model.features import FEATURE_NAMES, feature_matrix, transport_kind
from classifier.model.io import (
    BUNDLE_FORMAT,
    TRUSTED_TYPES,
    card_markdown,
    card_paths,
    load_bundle,
    save_bundle,
)
from classifier.model.synthetic import flow_row, synthetic_flows
from classifier.model.train import (
    TrainConfig,
    apply_calibration,
    group_splits,
    oof_scores,
    sample_weights,
    threshold_for_fpr,
    train,
)
from classifier.model.workflow import train_on

ROOT = Path(__file__).resolve().parents[1]
FAST = TrainConfig(candidates=("hgb",), folds=3, name="test-model")


def _labeled(table: pa.Table) -> LabeledFlows:
    label = table.column("label").to_numpy().astype(np.int8)
    return LabeledFlows(table.drop_columns(["label", "protocol"]), label,
                        np.asarray(table.column("protocol").to_pylist(), object),
                        np.asarray(table.column("capture").to_pylist(), object),
                        np.full(len(label), "original", object))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("model") / "syn.skops"
    _, card = train_on(_labeled(synthetic_flows(27, seed=11)), path, FAST)
    return path, card


def test_train_save_load_predict(trained):
    path, _card = trained
    model = load_model(path)
    assert isinstance(model, VpnModel)
    assert model.name == "test-model" and model.version == "1"
    assert 0.5 <= model.threshold <= 1.0
    test = synthetic_flows(18, seed=99)  # other captures than the training ones
    pred = model.predict(test)
    assert isinstance(pred, Prediction) and len(pred) == test.num_rows
    assert pred.proba.dtype == np.float64 and ((pred.proba >= 0) & (pred.proba <= 1)).all()
    y = test.column("label").to_numpy()
    called = pred.proba >= model.threshold
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, pred.proba) > 0.9  # synthetic tunnels are easy; this checks the plumbing
    assert called[y == 1].any()
    assert called[y == 0].mean() < 0.05
    assert set(pred.protocol) <= {"wireguard", "openvpn-udp", "openvpn-tcp", "shadowsocks", "unknown"}
    names = np.asarray(test.column("protocol").to_pylist())
    vpn = y == 1
    assert (pred.protocol[vpn] == names[vpn]).mean() > 0.6
    for ev, p in zip(pred.evidence, pred.proba, strict=True):
        assert f"P(VPN)={p:.3f}" in ev
        assert any(name in ev for name in FEATURE_NAMES)
        assert ("-> VPN" in ev) == (p >= model.threshold)
    # a probability that prints like the threshold says on which side it fell
    t = model.threshold
    X = feature_matrix(test)[:2]
    near = model.evidence_from_features(X, np.array([np.nextafter(t, 0.0), t]))
    assert f"P(VPN)={t:.3f}, just under threshold {t:.3f} -> not VPN" in near[0]
    assert f"P(VPN)={t:.3f}, just over threshold {t:.3f} -> VPN" in near[1]


def test_card_beside_model(trained):
    path, _card = trained
    jpath, mpath = card_paths(path)
    assert jpath.name == "syn.card.json" and mpath.name == "syn.card.md"
    on_disk = json.loads(jpath.read_text())
    assert on_disk["threshold"] == pytest.approx(load_model(path).threshold)
    assert on_disk["features"] == list(FEATURE_NAMES)
    assert len(on_disk["training_data"]["sha256"]) == 64
    assert {"scikit-learn", "skops", "numpy"} <= set(on_disk["libraries"])
    assert 0 <= on_disk["metrics"]["fpr"] <= 0.01
    assert "Model card: test-model" in mpath.read_text()
    assert load_model(path).card["name"] == "test-model"
    # the medians the evidence compares with, per transport: [VPN, non-VPN]
    model = load_model(path)
    typical = on_disk["typical_values"]
    assert set(typical) == set(FEATURE_NAMES)
    j = FEATURE_NAMES.index("up_size_max")
    assert typical["up_size_max"]["tcp"] == pytest.approx([model._pos[0, j], model._neg[0, j]])
    assert typical["is_udp"]["udp"] == [1.0, 1.0] and typical["is_udp"]["tcp"] == [0.0, 0.0]
    assert "## Typical values" in mpath.read_text()
    # rendered again from the saved JSON (keys sorted), the card reads the same, byte for byte
    assert card_markdown(on_disk) == mpath.read_text()


def test_training_is_reproducible(tmp_path):
    data = _labeled(synthetic_flows(18, seed=5))
    a, b = tmp_path / "a.skops", tmp_path / "b.skops"
    train_on(data, a, FAST)
    train_on(data, b, FAST)
    assert a.read_bytes() == b.read_bytes()
    assert a.stat().st_size < 5 * 1024 * 1024


def _trained_ensemble(tmp_path: Path, kind: str) -> tuple[Path, dict]:
    """Train ``kind`` on small synthetic data; check that training again writes the same file."""
    data = _labeled(synthetic_flows(18, seed=5))
    path = tmp_path / f"{kind}.skops"
    config = TrainConfig(candidates=(kind,), folds=3, name=kind)
    train_on(data, path, config)
    again = tmp_path / "again.skops"
    train_on(data, again, config)
    assert again.read_bytes() == path.read_bytes()
    return path, load_bundle(path)


def test_mean_probability_ensemble_saves_loads_and_averages_its_members(tmp_path):
    """The hgb+rf candidate: one skops file, P(VPN) the mean of its two members' probabilities."""
    path, bundle = _trained_ensemble(tmp_path, "hgb+rf")
    clf = bundle["classifier"]
    assert bundle["estimator"] == "hgb+rf" and [type(e).__name__ for e in clf.estimators_] == \
        ["HistGradientBoostingClassifier", "Pipeline"]
    X = feature_matrix(synthetic_flows(6, seed=3))
    members = [e.predict_proba(X)[:, 1] for e in clf.estimators_]
    np.testing.assert_allclose(clf.predict_proba(X)[:, 1], (members[0] + members[1]) / 2)
    assert not np.allclose(members[0], members[1])  # two models, not one twice
    # each member calibrated on its own out-of-fold scores; the model's P(VPN) is their mean
    cal = bundle["calibration"]
    assert cal["method"] == "mean" and len(cal["members"]) == 2
    boost = apply_calibration(cal["members"][0], clf.estimators_[0].decision_function(X))
    forest = apply_calibration(cal["members"][1], members[1])
    np.testing.assert_allclose(load_model(path).proba_from_features(X), (boost + forest) / 2)


def test_seed_bag_saves_loads_and_averages_members_that_draw_different_features(tmp_path):
    """The hgb-bag candidate: five feature-subsampled boosting models, one skops file, their mean log-odds."""
    path, bundle = _trained_ensemble(tmp_path, "hgb-bag")
    clf = bundle["classifier"]
    assert bundle["estimator"] == "hgb-bag" and len(clf.estimators_) == 5
    assert "- estimator: hgb-bag (mean log-odds of five gradient-boosting models" in card_paths(path)[1].read_text()
    assert [e.max_features for e in clf.estimators_] == [0.2] * 5
    assert len({e.random_state for e in clf.estimators_}) == 5
    X = feature_matrix(synthetic_flows(6, seed=3))
    members = np.array([e.decision_function(X) for e in clf.estimators_])
    np.testing.assert_allclose(clf.decision_function(X), members.mean(axis=0))
    np.testing.assert_allclose(clf.predict_proba(X)[:, 1], 1 / (1 + np.exp(-members.mean(axis=0))))
    assert not np.allclose(members[0], members[1])  # the seeds draw different features
    # one calibration over the mean score, as for a single model
    assert bundle["calibration"]["method"] == "isotonic"
    np.testing.assert_allclose(load_model(path).proba_from_features(X),
                               apply_calibration(bundle["calibration"], members.mean(axis=0)))


def test_folds_fitted_side_by_side_give_the_same_model(tmp_path):
    """``--jobs 2`` fits the out-of-fold models in two processes; the scores, threshold and file are the same."""
    data = _labeled(synthetic_flows(18, seed=5))
    X = feature_matrix(data.table)
    groups = np.asarray(data.group).astype(str)
    splits = group_splits(data.label, groups, 3)
    one = oof_scores("hgb-sub", X, data.label, groups, splits, seed=0)
    two = oof_scores("hgb-sub", X, data.label, groups, splits, seed=0, jobs=2)
    assert np.isfinite(one).any()
    np.testing.assert_array_equal(one, two)
    a, b = tmp_path / "a.skops", tmp_path / "b.skops"
    train_on(data, a, FAST)
    train_on(data, b, FAST, jobs=2)
    assert a.read_bytes() == b.read_bytes()


def test_evidence_names_features_pushing_the_verdict(trained):
    model = load_model(trained[0])
    X = feature_matrix(synthetic_flows(9, seed=4))
    lean = model.lean(X)
    p = model.proba_from_features(X)
    ev = model.evidence_from_features(X, p)
    for i in range(len(X)):
        sign = 1 if p[i] >= model.threshold else -1
        toward = sign * lean[i]
        best = [FEATURE_NAMES[j] for j in np.flatnonzero(toward == toward.max())]  # ties: any of them
        if toward.max() > 0:
            assert any(f"{name}=" in ev[i] for name in best), (best, ev[i])
    # medians per transport: a TCP or UDP flow is compared with flows of its own transport,
    # so the transport itself is never why it looks like a VPN or not
    tcp_or_udp = transport_kind(X) < 2
    assert tcp_or_udp.any()
    assert not any(t in e for e in ev[tcp_or_udp] for t in ("is_tcp=", "is_udp=", "is_icmp="))


def test_refuses_untrusted_types(tmp_path):
    import skops.io as sio
    from sklearn.neighbors import KNeighborsClassifier

    path = tmp_path / "evil.skops"
    path.write_bytes(sio.dumps({"format": BUNDLE_FORMAT, "x": KNeighborsClassifier()}))
    with pytest.raises(ModelError, match="KNeighborsClassifier"):
        load_bundle(path)
    with pytest.raises(ModelError, match="allow-list"):
        save_bundle({"format": BUNDLE_FORMAT, "x": KNeighborsClassifier()}, tmp_path / "no.skops")
    assert not (tmp_path / "no.skops").exists()


class _Trap:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_never_unpickles(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "pickle.skops"
    path.write_bytes(pickle.dumps(_Trap(str(marker))))
    with pytest.raises(ModelError, match="not a readable skops model"):
        load_model(path)
    assert not marker.exists()
    with zipfile.ZipFile(tmp_path / "z.skops", "w") as z:
        z.writestr("schema.json", "{not json")
    with pytest.raises(ModelError):
        load_model(tmp_path / "z.skops")
    with pytest.raises(ModelError, match="no such model file"):
        load_model(tmp_path / "absent.skops")


def test_allow_list_is_explicit():
    assert all("." in t for t in TRUSTED_TYPES)
    assert not any(t.startswith(("builtins.eval", "builtins.exec", "os.", "subprocess")) for t in TRUSTED_TYPES)


def test_refuses_other_feature_version(trained, tmp_path):
    bundle = load_bundle(trained[0])
    bundle["feature_version"] = -1
    save_bundle(bundle, tmp_path / "old.skops")
    with pytest.raises(ModelError, match="feature set version"):
        load_model(tmp_path / "old.skops")


def test_threshold_rule():
    neg = np.linspace(0, 0.9, 1000)
    t = threshold_for_fpr(neg, 0.001, 0.5)
    assert (neg >= t).mean() <= 0.001
    assert t > 0.899
    assert threshold_for_fpr(np.array([0.1, 0.2]), 0.001, 0.5) == 0.5


def test_sample_weights_balance_classes_and_captures():
    y = np.array([1] * 10 + [0] * 100 + [0])
    g = np.array(["a"] * 10 + ["big"] * 100 + ["small"])
    w = sample_weights(y, g)
    assert w[y == 1].sum() == pytest.approx(w[y == 0].sum())
    assert w[g == "big"].sum() / w[g == "small"].sum() == pytest.approx(10.0)


def test_needs_both_classes():
    t = synthetic_flows(6, seed=1, kinds=("https", "dns"))
    X = feature_matrix(t)
    with pytest.raises(ValueError, match="both"):
        train(X, t.column("label").to_numpy(), t.column("capture").to_pylist(), config=FAST)


def test_parse_labels():
    np.testing.assert_array_equal(parse_labels(["1", "0", "vpn", "non-vpn", "True", " NO"], "x"), [1, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(parse_labels(pa.array([True, False]), "x"), [1, 0])
    np.testing.assert_array_equal(parse_labels(pa.chunked_array([[1, 0], [1]], pa.int8()), "x"), [1, 0, 1])
    with pytest.raises(UsageError, match="row 1"):
        parse_labels(["vpn", "maybe"], "f.parquet")
    with pytest.raises(UsageError, match="row 2"):
        parse_labels(pa.array([1, 0, 2]), "f.parquet")
    with pytest.raises(UsageError, match="row 0"):
        parse_labels(pa.array([None, 1], pa.int64()), "f.parquet")


def test_tunnel_labeling_rule():
    """Only the tunnel flows of a VPN capture are VPN; its other flows are left out."""
    rows = [
        flow_row([176, 92, 1400], [0, 1, 1], [0, 1, 1], [0] * 3, 17, src_ip="198.18.1.2", dst_ip="198.18.1.1",
                 src_port=40000, dst_port=51820),
        flow_row([70, 120], [0, 1], [0, 1], [0] * 2, 17, src_ip="198.18.1.2", dst_ip="198.18.1.254",
                 src_port=40001, dst_port=53),
        flow_row([70, 120], [0, 1], [0, 1], [0] * 2, 17, src_ip="198.18.9.9", dst_ip="198.18.1.1",
                 src_port=40002, dst_port=51820),
    ]
    from classifier.flows.schema import FLOW_SCHEMA

    table = pa.Table.from_pylist(rows, schema=FLOW_SCHEMA)
    label, keep = label_capture_flows(table, Truth("c", True, "wireguard", 51820))
    assert label.tolist() == [1, 0, 0] and keep.tolist() == [True, False, False]
    label, keep = label_capture_flows(table, Truth("c", False, None, None))
    assert label.tolist() == [0, 0, 0] and keep.all()
    label, keep = label_capture_flows(table, Truth("c", True, "openvpn", 1194))  # no port match: largest flow
    assert label.tolist() == [1, 0, 0] and keep.all()
    label, keep = label_capture_flows(table, Truth("c", None, None, None))
    assert not keep.any()


def _write_labeled(path: Path, table: pa.Table, label_strings: bool = False) -> None:
    if label_strings:
        lab = ["vpn" if v else "non-vpn" for v in table.column("label").to_pylist()]
        table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(lab))
    pq.write_table(table, path)


def test_cli_train_and_evaluate(tmp_path, capsys):
    train_pq, test_pq = tmp_path / "train.parquet", tmp_path / "test.parquet"
    # trained without Shadowsocks, so the test set holds a protocol the model never saw
    train_table = synthetic_flows(18, seed=21)
    shadowsocks = pc.fill_null(pc.equal(train_table.column("protocol"), "shadowsocks"), False)
    _write_labeled(train_pq, train_table.filter(pc.invert(shadowsocks)))
    _write_labeled(test_pq, synthetic_flows(18, seed=22), label_strings=True)
    model = tmp_path / "m.skops"
    assert main(["train", str(train_pq), "-o", str(model), "--candidates", "logreg", "--folds", "3",
                 "-q"]) == 0
    assert model.is_file() and card_paths(model)[0].is_file()
    out = tmp_path / "eval"
    assert main(["evaluate", str(model), str(test_pq), "-o", str(out), "--folds", "3", "-q"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    for view in ("holdout", "grouped_cv", "leave_one_protocol_out"):
        for key in ("precision", "recall", "f1", "roc_auc", "fpr"):
            assert key in report[view], (view, key)
    assert report["holdout"]["flows"] == pq.read_table(test_pq).num_rows
    assert set(report["leave_one_protocol_out"]["runs"]) == {"wireguard", "openvpn-udp", "openvpn-tcp",
                                                              "shadowsocks"}
    assert report["grouped_cv"]["folds"]
    # the trade-off table: recall and FPR fall (weakly) as the threshold rises
    rows = report["holdout"]["tradeoff"]
    assert [r["threshold"] for r in rows] == sorted(r["threshold"] for r in rows)
    assert all(a["recall"] >= b["recall"] and a["fpr"] >= b["fpr"] for a, b in itertools.pairwise(rows))
    assert report["holdout"]["vpn_flows_20_packets_or_more"] > 0
    # the captures listed for misses and false alarms account for the confusion matrix (fewer than 10 each)
    h = report["holdout"]
    for field, wrong, of, total in (("missed_captures", "missed", "vpn_flows", h["fn"]),
                                    ("false_positive_captures", "false_positives", "non_vpn_flows", h["fp"])):
        rows = h[field]
        assert all(0 < r[wrong] <= r[of] for r in rows)
        assert sum(r[wrong] for r in rows) == total if len(rows) < 10 else sum(r[wrong] for r in rows) <= total
    # endpoint context only adds VPN verdicts: recall and FPR at least those of each flow on its own
    ec, h = report["holdout"]["endpoint_context"], report["holdout"]
    assert ec["applied"] and h["recall"] >= ec["recall_per_flow"] and h["fpr"] >= ec["fpr_per_flow"]
    assert h["tp"] - ec["found"] == round(ec["recall_per_flow"] * h["vpn_flows"])
    for png in ("roc.png", "confusion.png", "protocol_recall.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "precision" in printed and "FPR" in printed
    per_protocol = next(line for line in printed.splitlines() if line.startswith("holdout found per protocol: "))
    assert all(f"{name} {r['found']}/{r['flows']}" in per_protocol for name, r in h["per_protocol"].items())
    # protocols the model trained on and the one it never saw, apart; together every VPN flow
    split = h["by_training"]
    assert split["trained_on"]["protocols"] == ["openvpn-tcp", "openvpn-udp", "wireguard"]
    assert split["not_trained_on"]["protocols"] == ["shadowsocks"]
    assert split["trained_on"]["flows"] + split["not_trained_on"]["flows"] == h["vpn_flows"]
    assert split["trained_on"]["found"] + split["not_trained_on"]["found"] == h["tp"]
    assert split["not_trained_on"]["found"] == h["per_protocol"]["shadowsocks"]["found"]
    other = split["not_trained_on"]
    assert (f"holdout protocols the model trained on: {split['trained_on']['found']} of "
            f"{split['trained_on']['flows']} VPN flows found") in printed
    assert f"others (shadowsocks): {other['found']} of {other['flows']}" in printed

    # a set of VPN flows only (a batch of tunnel captures) has no ROC curve: plots, no warning
    vpn_only = tmp_path / "vpn.parquet"
    table = synthetic_flows(18, seed=23)
    _write_labeled(vpn_only, table.filter(pc.equal(table.column("label"), 1)))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["evaluate", str(model), str(vpn_only), "-o", str(tmp_path / "eval1"), "--no-cv", "--no-lopo",
                     "-q"]) == 0
    assert (tmp_path / "eval1" / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recall_by_training_names_families():
    """A set that names a protocol family (``ipsec``) counts as trained on its members (``ipsec-esp``)."""
    from classifier.model.evaluate import per_protocol_recall, recall_by_training, trained_protocol_names

    trained = ["ipsec-esp", "ipsec-ike", "openvpn", "wireguard"]
    names = np.array(["ipsec", "ipsec-ike", "openvpn", "proxy", "vmess", "non-vpn", "wire"], object)
    assert trained_protocol_names(names, trained) == ["ipsec", "ipsec-ike", "openvpn"]
    y = np.array([1, 1, 1, 1, 1, 0, 1])
    pred = np.array([True, False, True, False, True, True, False])
    split = recall_by_training(per_protocol_recall(names, y, pred), trained)
    assert split["trained_on"] == {"protocols": ["ipsec", "ipsec-ike", "openvpn"], "flows": 3, "found": 2,
                                   "recall": 2 / 3}
    assert split["not_trained_on"] == {"protocols": ["proxy", "vmess", "wire"], "flows": 3, "found": 1,
                                       "recall": 1 / 3}
    empty = recall_by_training(per_protocol_recall(names[:1], y[:1], pred[:1]), trained)["not_trained_on"]
    assert empty["flows"] == 0 and np.isnan(empty["recall"])


def test_cli_bad_input_is_one_clear_message(tmp_path, capsys):
    bad = tmp_path / "nolabel.parquet"
    pq.write_table(synthetic_flows(3, seed=1).drop_columns(["label"]), bad)
    assert main(["train", str(bad), "-o", str(tmp_path / "m.skops")]) == 2
    err = capsys.readouterr().err
    assert "label" in err and "Traceback" not in err
    assert main(["train", str(tmp_path / "missing.parquet"), "-o", str(tmp_path / "m.skops")]) == 2
    assert main(["evaluate", str(tmp_path / "absent.skops"), str(bad)]) == 1
    assert "no such model file" in capsys.readouterr().err


def test_snaplen_option_is_checked_and_needs_captures(tmp_path, capsys):
    table = tmp_path / "flows.parquet"
    pq.write_table(synthetic_flows(3, seed=1), table)
    for bad in ("20", "64,x", ""):
        with pytest.raises(SystemExit) as exit_:
            main(["train", str(table), "--snaplen", bad, "-o", str(tmp_path / "m.skops")])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "--snaplen" in err and "Traceback" not in err
    with pytest.raises(UsageError, match="snapshot length"):
        load_labeled([str(table)], snaplens=(64,))


def test_snaplen_training_cuts_every_copy_and_says_so_in_the_card(tmp_path):
    """Each capture and copy is cut to a snapshot length drawn from the list; the augmentation draws do not move."""
    from classifier.model.workflow import train_model

    pcaps = Path(__file__).resolve().parents[1] / "pcaps"
    caps = [str(pcaps / n) for n in ("openvpn-udp.pcap", "wireguard.pcap", "dns.pcap", "https.pcap")]
    whole = load_labeled(caps, augment=2, seed=3)
    cut = load_labeled(caps, augment=2, seed=3, snaplens=(64, 96))
    assert [r["snaplen"] for r in cut.inputs] and {r["snaplen"] for r in cut.inputs} <= {64, 96}
    assert "snaplen" not in whole.inputs[0]
    copies = [v for v in cut.variant if v != "original"]
    assert copies and all(" snaplen=64" in v or " snaplen=96" in v for v in copies)
    assert [v.split(" snaplen=")[0] for v in cut.variant] == list(whole.variant)  # the same augmentation draws
    assert (cut.table.column("truncated_packets").to_numpy() > 0).any()
    assert not (whole.table.column("truncated_packets").to_numpy() > 0).any()
    out = tmp_path / "h.skops"
    _, card = train_model(caps, out, FAST, augment=1, snaplens=(64,))
    assert "64 bytes per frame" in card["training_data"]["snaplen"]
    assert "Headers-only" in (tmp_path / "h.card.md").read_text()


def test_shipped_models_by_name(tmp_path, monkeypatch):
    from classifier.model.model import model_path, shipped_model_path

    assert model_path(None) == shipped_model_path("default")
    assert model_path("headers-only") == shipped_model_path("headers-only")
    assert shipped_model_path("headers-only").name == "vpnid-headers-only.skops"
    assert model_path("host-capture") == shipped_model_path("host-capture")
    assert shipped_model_path("host-capture").name == "vpnid-host-capture.skops"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").write_bytes(b"")  # a file of that name is the user's, not the shipped model
    assert model_path("default") == Path("default")
    assert model_path("mine.skops") == Path("mine.skops")


def test_captures_need_a_manifest(tmp_path):
    cap = tmp_path / "x.pcap"
    cap.write_bytes(b"\xd4\xc3\xb2\xa1" + b"\0" * 20)
    with pytest.raises(UsageError, match="manifest"):
        load_labeled([str(cap)])


@pytest.mark.parametrize("method", ["isotonic", "sigmoid"])
def test_calibration_keeps_order_and_matches_rates(method):
    from classifier.model.train import apply_calibration, fit_calibration

    rng = np.random.default_rng(0)
    s = np.concatenate([rng.normal(-2, 1, 2000), rng.normal(2, 1, 2000)])
    y = np.concatenate([np.zeros(2000), np.ones(2000)]).astype(int)
    cal = fit_calibration(s, y, method)
    grid = np.linspace(-6, 6, 200)
    p = apply_calibration(cal, grid)
    assert ((p >= 0) & (p <= 1)).all()
    assert (np.diff(p) > 0).all()  # strictly increasing: ties are broken by the raw score
    mid = apply_calibration(cal, np.array([0.0]))[0]
    assert 0.3 < mid < 0.7  # equal classes meet at 0
    assert apply_calibration(cal, np.array([4.0]))[0] > 0.95


def test_pipeline_uses_model_verdicts(trained):
    """classifier.pipeline calls model.predict(table) and compares with model.threshold."""
    from classifier.flows.batch import FlowBatch, PayloadHeads
    from classifier.pipeline import LabelOptions, label_batch

    model = load_model(trained[0])
    table = synthetic_flows(9, seed=8)
    flows = table.drop_columns(["label", "protocol"])
    out = label_batch(FlowBatch(flows, PayloadHeads.empty(flows.num_rows)),
                      LabelOptions(signatures=False, model=model))
    pred = model.predict(flows)
    assert out.column("detection").to_pylist() == ["model"] * flows.num_rows
    np.testing.assert_array_equal(out.column("is_vpn").to_numpy(zero_copy_only=False),
                                  pred.proba >= model.threshold)
    assert out.column("evidence").to_pylist() == list(pred.evidence)
    vpn = pred.proba >= model.threshold
    assert out.column("vpn_protocol").to_pylist() == [p if v else None for p, v in
                                                       zip(pred.protocol, vpn, strict=True)]


def test_short_tunnel_flows_left_out_of_training_only():
    """min_tunnel_packets drops short VPN flows from fitting; non-VPN flows of any length stay."""
    table = synthetic_flows(18, seed=5)
    data = _labeled(table)
    X = feature_matrix(data.table)
    packets = data.table.column("packets").to_numpy()
    cut = int(np.median(packets[data.label == 1]))
    config = TrainConfig(candidates=("hgb",), folds=3, min_tunnel_packets=cut)
    said: list[str] = []
    res = train(X, data.label, data.group, data.protocol, config, explain=False, packets=packets, log=said.append)
    dropped = int(((data.label == 1) & (packets < cut)).sum())
    assert dropped > 0
    assert res.metrics["flows"] == len(data) - dropped
    assert res.metrics["non_vpn_flows"] == int((data.label == 0).sum())
    assert any(f"left out {dropped} VPN flows" in m for m in said)


def test_short_one_way_tunnel_flows_left_out_of_training_only():
    """min_one_way_tunnel_packets drops VPN flows that went one way and are short; two-way and non-VPN ones stay."""
    table = synthetic_flows(18, seed=5)
    rng = np.random.default_rng(3)
    one_way = rng.random(table.num_rows) < 0.3  # VPN and non-VPN rows alike lose their responder's packets
    packets = table.column("packets").to_numpy()
    up = np.where(one_way, packets, table.column("src2dst_packets").to_numpy())
    table = table.set_column(table.schema.get_field_index("src2dst_packets"), "src2dst_packets", pa.array(up))
    data = _labeled(table)
    X = feature_matrix(data.table)
    packets = data.table.column("packets").to_numpy()
    cut = int(np.median(packets))
    said: list[str] = []
    res = train(X, data.label, data.group, data.protocol,
                TrainConfig(candidates=("hgb",), folds=3, min_one_way_tunnel_packets=cut), explain=False,
                packets=packets, log=said.append)
    one_way = data.table.column("src2dst_packets").to_numpy() == packets
    dropped = int(((data.label == 1) & one_way & (packets < cut)).sum())
    assert dropped > 0 and int(((data.label == 1) & ~one_way & (packets < cut)).sum()) > 0  # those stay
    assert res.metrics["flows"] == len(data) - dropped
    assert res.metrics["non_vpn_flows"] == int((data.label == 0).sum())
    assert any(f"left out {dropped} VPN flows" in m for m in said)


def test_cleartext_tunnel_flows_left_out_of_training_only():
    """skip_cleartext_tunnels drops VPN flows with readable inner headers; non-VPN ones with them stay."""
    table = synthetic_flows(18, seed=5)
    y = table.column("label").to_numpy()
    rng = np.random.default_rng(2)
    clear = rng.random(len(y)) < 0.3  # both VPN and non-VPN rows get readable inner headers
    col = table.schema.get_field_index("src2dst_inner_header_frac")
    table = table.set_column(col, "src2dst_inner_header_frac", pa.array(np.where(clear, 1.0, 0.0)))
    data = _labeled(table)
    X = feature_matrix(data.table)
    said: list[str] = []
    res = train(X, data.label, data.group, data.protocol,
                TrainConfig(candidates=("hgb",), folds=3, skip_cleartext_tunnels=True), explain=False,
                log=said.append)
    dropped = int((clear & (y == 1)).sum())
    assert dropped > 0 and (clear & (y == 0)).any()
    assert res.metrics["flows"] == len(y) - dropped
    assert res.metrics["non_vpn_flows"] == int((y == 0).sum())
    assert any(f"left out {dropped} VPN flows with readable inner headers" in m for m in said)
    kept = train(X, data.label, data.group, data.protocol, TrainConfig(candidates=("hgb",), folds=3),
                 explain=False)
    assert kept.metrics["flows"] == len(y)


def test_inputs_hash_ignores_directory_but_not_content():
    from classifier.model.data import inputs_hash

    a = [{"path": "/tmp/x/a.pcap", "sha256": "1" * 64}, {"path": "/tmp/x/b.pcap", "sha256": "2" * 64}]
    moved = [{"path": "/data/b.pcap", "sha256": "2" * 64}, {"path": "/data/a.pcap", "sha256": "1" * 64}]
    changed = [{"path": "/tmp/x/a.pcap", "sha256": "3" * 64}, {"path": "/tmp/x/b.pcap", "sha256": "2" * 64}]
    assert inputs_hash(a) == inputs_hash(moved) != inputs_hash(changed)


def test_one_way_augmentation_keeps_one_direction_of_every_flow():
    """The one-way copies (a tap on one leg of an asymmetric route) are the two halves of the original."""
    from classifier.errors import ErrorLog
    from classifier.model.data import Augmentation, _count_packets, _PacketTransform, meter_capture

    cap = str(Path(__file__).resolve().parents[1] / "pcaps" / "openvpn-udp.pcap")
    log = ErrorLog()
    full = meter_capture(cap, log)

    def one_way(direction: int) -> pa.Table:
        aug = Augmentation(loss=0.0, jitter=0.0, slowdown=1.0, start=0.0, stop=1.0, one_way=direction)
        return meter_capture(cap, log, _PacketTransform(aug, _count_packets(cap, log), np.random.default_rng(0)))

    halves = [one_way(1), one_way(2)]
    for half in halves:
        assert len(half) > 0
        up, down = half.column("src2dst_packets").to_numpy(), half.column("dst2src_packets").to_numpy()
        assert ((up == 0) | (down == 0)).all()
    assert sum(int(pa.compute.sum(h.column("packets")).as_py()) for h in halves) \
        == int(pa.compute.sum(full.column("packets")).as_py())
    assert "one-way=" in Augmentation(0, 0, 1, 0, 1, one_way=2).describe()
    assert "one-way" not in Augmentation(0, 0, 1, 0, 1).describe()


def test_coarse_clock_augmentation_rounds_every_timestamp():
    """A copy with a 10 ms clock: every packet kept, every timestamp a multiple of 10 ms, gaps of 0 appear."""
    from classifier.errors import ErrorLog
    from classifier.model.data import Augmentation, _count_packets, _PacketTransform, meter_capture

    cap = str(Path(__file__).resolve().parents[1] / "pcaps" / "openvpn-udp.pcap")
    log = ErrorLog()
    full = meter_capture(cap, log)
    aug = Augmentation(loss=0.0, jitter=0.0, slowdown=1.0, start=0.0, stop=1.0, tick_ns=10_000_000)
    coarse = meter_capture(cap, log, _PacketTransform(aug, _count_packets(cap, log), np.random.default_rng(0)))
    assert int(pa.compute.sum(coarse.column("packets")).as_py()) == int(pa.compute.sum(full.column("packets")).as_py())
    for name in ("first_seen", "last_seen"):
        ns = coarse.column(name).cast(pa.int64()).to_numpy()
        assert (ns % 10_000_000 == 0).all()
    gaps = pa.compute.list_flatten(coarse.column("first_iats_ms")).to_numpy()
    exact = pa.compute.list_flatten(full.column("first_iats_ms")).to_numpy()
    assert ((gaps == 0).sum() > (exact == 0).sum()) and np.allclose(gaps % 10, 0)
    assert "tick=10ms" in aug.describe() and "tick" not in Augmentation(0, 0, 1, 0, 1).describe()


@pytest.mark.parametrize("name", ["openvpn-tcp443.pcap", "wireguard.pcap", "https.pcap"])
@pytest.mark.parametrize("snaplen", [64, 96])
def test_snaplen_augmentation_is_the_capture_cut_to_that_snaplen(tmp_path, name, snaplen):
    """A copy with a snapshot length has the flows and features of the same capture really cut to it."""
    from classifier.errors import ErrorLog
    from classifier.model.data import Augmentation, _count_packets, _PacketTransform, meter_capture
    from classifier.model.features import feature_matrix

    cap = Path(__file__).resolve().parents[1] / "pcaps" / name
    cut = tmp_path / name
    cut_pcap(cap, cut, snaplen)
    log = ErrorLog()
    aug = Augmentation(loss=0.0, jitter=0.0, slowdown=1.0, start=0.0, stop=1.0, snaplen=snaplen)
    copy = meter_capture(str(cap), log, _PacketTransform(aug, _count_packets(str(cap), log), np.random.default_rng(0)))
    real = meter_capture(str(cut), log)
    assert not log.problems
    assert copy.drop(["capture"]).equals(real.drop(["capture"]))
    full = feature_matrix(meter_capture(str(cap), log))
    cut_features = feature_matrix(copy)
    np.testing.assert_array_equal(cut_features, feature_matrix(real))
    assert (copy.column("truncated_packets").to_numpy() > 0).any()
    assert not np.array_equal(cut_features, full, equal_nan=True)  # the payload statistics did change
    assert f"snaplen={snaplen}" in aug.describe() and "snaplen" not in Augmentation(0, 0, 1, 0, 1).describe()


def test_concat_keeps_the_input_records_of_empty_parts():
    """A capture's record rides on its last part; an augmented copy that kept no packet must not lose it."""
    from classifier.flows.schema import FLOW_SCHEMA

    full = _labeled(synthetic_flows(4, seed=1))
    full.inputs.append({"path": "a.pcap", "sha256": "1" * 64})
    empty = LabeledFlows(FLOW_SCHEMA.empty_table(), np.zeros(0, np.int8), np.zeros(0, object),
                         np.zeros(0, object), np.zeros(0, object), [{"path": "b.pcap", "sha256": "2" * 64}])
    both = LabeledFlows.concat([full, empty])
    assert len(both) == len(full)
    assert [i["path"] for i in both.inputs] == ["a.pcap", "b.pcap"]


def _labels_manifest(path: Path, rows: list[dict], columns: list[str]) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def test_a_labels_manifest_labels_captures_like_the_lab_manifest(tmp_path):
    """file + vpn (+ server_port, protocol), columns in any order, gives the lab manifest's labels."""
    from classifier.lab.manifest import read_manifest_rows

    lab_rows = read_manifest_rows(ROOT / "pcaps" / "MANIFEST.csv")
    rows = [{"notes": "ignored", "is_vpn": "yes" if r.vpn else "no", "file": str(ROOT / "pcaps" / r.file),
             "server_port": r.server_port if r.server_port is not None else "", "protocol": r.protocol}
            for r in lab_rows]
    labels = _labels_manifest(tmp_path / "labels.csv", rows, ["notes", "server_port", "file", "is_vpn", "protocol"])
    want = load_labeled([str(ROOT / "pcaps" / "MANIFEST.csv")])
    got = load_labeled([str(labels)])
    key = lambda d: sorted(zip(d.table.column("capture").to_pylist(), d.table.column("flow_id").to_pylist(),  # noqa: E731
                               d.label.tolist(), strict=True))
    assert key(got) == key(want) and got.label.sum() > 0 and (got.label == 0).sum() > 0
    assert [p for p in got.protocol if p] == [p for p in want.protocol if p]


def test_a_labels_manifest_without_server_port_takes_every_flow_but_incidental_services(tmp_path):
    """A VPN file with no server port: every flow but DNS/DHCP-like services and ICMP is VPN; a no file none."""
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "https.pcap").symlink_to(ROOT / "pcaps" / "https.pcap")
    rows = [{"file": str(ROOT / "pcaps" / "wireguard.pcap"), "label": "vpn", "group": "office"},
            {"file": str(ROOT / "pcaps" / "dns.pcap"), "label": "0", "group": "office"},
            {"file": "web", "label": "no"},  # a directory: every capture under it
            {"file": str(ROOT / "pcaps" / "ipsec-ikev2.pcap"), "label": "partial"}]
    data = load_labeled([str(_labels_manifest(tmp_path / "m.csv", rows, ["file", "label", "group"]))])
    caps = np.asarray(data.table.column("capture").to_pylist(), object)
    wg = np.array([c.endswith("wireguard.pcap") for c in caps])
    ports = np.stack([data.table.column(c).fill_null(0).to_numpy() for c in ("src_port", "dst_port")])
    incidental = np.isin(ports, [53, 67, 68, 123]).any(axis=0) | np.isin(
        data.table.column("ip_proto").to_numpy(), [1, 58])
    assert wg.any() and (data.label[wg] == (~incidental[wg]).astype(np.int8)).all() and data.label[wg].any()
    assert (data.label[~wg] == 0).all() and not any(c.endswith("ipsec-ikev2.pcap") for c in caps)
    # a group keeps its captures together in grouped evaluation; a file without one is its own group
    https = np.array([c.endswith("https.pcap") for c in caps])
    assert https.any() and set(data.group[~https]) == {"group:office"}
    assert set(data.group[https]) == {str(ROOT / "pcaps" / "https.pcap")}


def test_a_labels_manifest_from_a_spreadsheet_reads_alike(tmp_path):
    """A byte-order mark, ';' between columns, Windows line ends, capitalised headers and empty rows change nothing."""
    plain = _labels_manifest(tmp_path / "plain.csv", [{"file": str(ROOT / "pcaps" / "dns.pcap"), "vpn": "no"},
                                                      {"file": str(ROOT / "pcaps" / "wireguard.pcap"), "vpn": "yes"}],
                             ["file", "vpn"])
    sheet = tmp_path / "sheet.csv"
    sheet.write_bytes("\ufeffFile;VPN\r\n".encode() + "".join(
        f"{line.replace(',', ';')}\r\n" for line in plain.read_text().splitlines()[1:]).encode() + b";\r\n;\r\n")
    want, got = load_labeled([str(plain)]), load_labeled([str(sheet)])
    assert got.label.tolist() == want.label.tolist() and got.label.sum() > 0


@pytest.mark.parametrize(("text", "message"), [
    ("path,kind\nx.pcap,vpn\n", "m.csv:1: a manifest needs a file column and a label column"),
    ("file,vpn\nx.pcap,maybe\n", "m.csv:2: vpn must be yes/no"),
    ("file,vpn,server_port\nx.pcap,yes,70000\n", "m.csv:2: server_port must be a port number"),
    ("file,vpn\n,yes\n", "m.csv:2: file must not be empty"),
])
def test_a_bad_labels_manifest_names_its_line(tmp_path, capsys, text, message):
    (tmp_path / "m.csv").write_text(text)
    assert main(["evaluate", "default", str(tmp_path / "m.csv"), "--no-cv", "--no-lopo", "-q"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
