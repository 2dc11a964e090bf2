"""Training recipe: compare candidate estimators, calibrate, pick the operating threshold.

Why every step is grouped by capture: flows of one capture share hosts, clocks, paths
and the same daemon's quirks; a random flow split lets the model recognise the capture
instead of the traffic and reports accuracy nobody will see on new captures. Candidate
comparison, calibration and the threshold all use out-of-fold scores from
``GroupKFold`` over source captures (augmented copies stay with their source).

Why the threshold comes from out-of-fold non-VPN scores: a compliance report cannot
tolerate false alarms, so the threshold is the lowest probability at which at most
``fpr_target`` of non-VPN flows of *unseen* captures would be called VPN (never below
``min_threshold``).
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from classifier.model.ensemble import MeanProbability, SeedBag
from classifier.model.features import (
    FEATURE_DOCS,
    FEATURE_NAMES,
    FEATURE_VERSION,
    TRANSPORT_KINDS,
    transport_kind,
)
from classifier.model.io import BUNDLE_FORMAT
from classifier.model.tree_kernel import decision_functions

#: Estimators ``vpnid train`` knows; the first is the default choice when scores tie.
CANDIDATES = ("rf", "hgb", "logreg", "hgb+rf", "hgb-sub", "hgb-bag")

#: What each candidate is, in a phrase, for the model card's Decision section.
ESTIMATOR_DESCRIPTIONS = {
    "rf": "random forest, 60 trees",
    "hgb": "gradient boosting, 120 trees of 15 leaves",
    "logreg": "logistic regression on standardised features",
    "hgb+rf": "gradient boosting and a random forest, each calibrated, probabilities averaged",
    "hgb-sub": "gradient boosting that draws a fifth of the features at every split",
    "hgb-bag": "mean log-odds of five gradient-boosting models, seeds 0-4, each drawing a fifth of "
               "the features at every split",
}


@dataclass
class TrainConfig:
    """Knobs of the recipe; stored in the bundle so ``vpnid evaluate`` can retrain the same way."""

    candidates: tuple[str, ...] = ("rf", "hgb")
    folds: int = 5
    fpr_target: float = 0.001
    min_threshold: float = 0.5
    calibration: str = "isotonic"
    seed: int = 0
    protocol_min_proba: float = 0.6
    #: VPN flows with fewer packets are left out of training (not of evaluation): a handshake-only
    #: IKE exchange or a tunnel's short control connection carries no tunnel rhythm, and as
    #: positives they teach the model that any short encrypted flow is VPN.
    min_tunnel_packets: int = 0
    #: VPN flows that went one way only are left out of training below this many packets: a lone
    #: unanswered IKE initiation or keepalive left by a cut capture or a one-legged tap shows
    #: nothing of a tunnel, and is byte for byte what a scanner sends (nmap's UDP probe of 500
    #: and 4500, a non-VPN flow of the lab's port scans); as positives they taught the model to
    #: score that probe above every other non-VPN flow, and the threshold followed it.
    min_one_way_tunnel_packets: int = 0
    #: VPN flows whose inner IP headers are readable (``inner_header_frac`` >= 0.5 either way:
    #: L2TP data without IPsec) are left out of training (not of evaluation). Without
    #: ``inner_ppp_frac`` (feature version 7) they look like 6in4, Teredo or VXLAN, which are
    #: no VPNs, and as positives taught the model to call every cleartext wrapper a VPN; with
    #: it the PPP framing tells them apart and the shipped recipe keeps them.
    skip_cleartext_tunnels: bool = False
    name: str = "vpnid-model"
    version: str = "1"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "candidates" in known:
            known["candidates"] = tuple(known["candidates"])
        return cls(**known)


def make_estimator(kind: str, seed: int = 0):
    """A fresh, unfitted estimator of ``kind`` (balancing comes from :func:`sample_weights`)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if kind in ("hgb", "hgb-sub"):
        # hgb-sub draws a fifth of the features at every split: no single feature can carry
        # the model, which matters for traffic unlike the lab's (see SeedBag)
        return HistGradientBoostingClassifier(
            max_iter=120, learning_rate=0.1, max_leaf_nodes=15, min_samples_leaf=20, max_bins=64,
            l2_regularization=1.0, early_stopping=False, random_state=seed,
            max_features=0.2 if kind == "hgb-sub" else 1.0)
    if kind == "rf":
        return Pipeline([
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("forest", RandomForestClassifier(
                n_estimators=60, max_depth=10, min_samples_leaf=10, max_features="sqrt",
                random_state=seed, n_jobs=1)),
        ])
    if kind == "logreg":
        return Pipeline([
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("logreg", LogisticRegression(max_iter=2000, C=0.5)),
        ])
    if kind == "hgb+rf":
        return MeanProbability(("hgb", "rf"), seed)
    if kind == "hgb-bag":
        return SeedBag("hgb-sub", 5, seed)
    raise ValueError(f"unknown estimator {kind!r}; choose from {', '.join(CANDIDATES)}")


def group_splits(y: np.ndarray, groups: np.ndarray, folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped folds over source captures, stratified where possible so each fold holds both classes.

    ``folds=0`` (or at least as many folds as groups) holds out one group at a time: every
    out-of-fold score then comes from a model that saw all other kinds of traffic and only
    missed this one, which is what a new kind of traffic in the field looks like. With
    five folds several kinds are missing at once, and the threshold pays for it twice.
    """
    from sklearn.model_selection import GroupKFold, LeaveOneGroupOut, StratifiedGroupKFold

    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ValueError("grouped cross-validation needs flows from at least two captures")
    if folds <= 0 or folds >= n_groups:
        splits = list(LeaveOneGroupOut().split(np.zeros(len(y)), y, groups))
        return [(tr, te) for tr, te in splits if len(np.unique(y[tr])) == 2]
    k = max(2, min(folds, n_groups))
    # a group's class for stratification: does it hold any VPN flow
    try:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = list(splitter.split(np.zeros(len(y)), y, groups))
    except ValueError:
        splits = list(GroupKFold(n_splits=k).split(np.zeros(len(y)), y, groups))
    return [(tr, te) for tr, te in splits if len(np.unique(y[tr])) == 2]


def sample_weights(y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Weights that balance the classes and keep one big capture from outvoting many small ones.

    Each capture's flows share a weight of sqrt(flows) (a capture with 2,000 scan flows
    counts about 45 times one flow, not 2,000 times); then each class sums to half.
    """
    y = np.asarray(y).astype(int)
    _, inv, counts = np.unique(np.asarray(groups).astype(str), return_inverse=True, return_counts=True)
    w = 1.0 / np.sqrt(counts[inv].astype(float))
    for c in (0, 1):
        m = y == c
        if m.any():
            w[m] *= 0.5 * len(y) / w[m].sum()
    return w


def fit_estimator(kind: str, X: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0):
    """Fit a fresh estimator of ``kind`` with class- and capture-balanced sample weights."""
    return fit_weighted(make_estimator(kind, seed), X, y, sample_weights(y, groups))


def fit_weighted(est, X: np.ndarray, y: np.ndarray, w: np.ndarray | None):
    """Fit ``est`` (an estimator or a pipeline, whose last step gets the weights) with weights ``w``."""
    if (empty := np.isnan(X).all(axis=0)).any():
        # scikit-learn's binning fails on a column with no value at all (e.g. payload byte
        # statistics of flows that carried no payload); a constant carries the same nothing
        X = X.copy()
        X[:, empty] = 0.0
    if hasattr(est, "steps"):
        return est.fit(X, y, **{f"{est.steps[-1][0]}__sample_weight": w})
    return est.fit(X, y, sample_weight=w)


def raw_scores(est, X: np.ndarray) -> np.ndarray:
    """The raw score calibration maps: the decision function (log-odds) when there is one, else P(VPN).

    For a MeanProbability ensemble, one column per member: each member is calibrated on its
    own out-of-fold scores and the calibrated probabilities are averaged, so a member whose
    scores crowd near 0 and 1 (boosting) weighs no more than one that spreads them (a forest).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    if isinstance(est, MeanProbability):
        return np.column_stack([raw_scores(member, X) for member in est.estimators_])
    if isinstance(est, HistGradientBoostingClassifier):
        return decision_functions([est], X)[0]  # scikit-learn's scores, row by row (tree_kernel.py)
    if hasattr(est, "decision_function"):
        return np.asarray(est.decision_function(X), float)
    return np.asarray(est.predict_proba(X)[:, 1], float)


def fit_calibration(scores: np.ndarray, y: np.ndarray, method: str = "sigmoid") -> dict[str, Any]:
    """Map raw out-of-fold scores to probabilities: isotonic (steps) or Platt's sigmoid (two numbers).

    Isotonic is the default: with few capture groups the out-of-fold scores are far from
    a logistic shape, and a sigmoid fitted to them squeezes every probability toward the
    base rate, so no flow ever clears a 0.5 floor; isotonic keeps the top of the ranking
    where only VPN flows scored.

    Why fitted on out-of-fold scores: scores of the flows a model was trained on are
    overconfident; only scores of unseen captures say how often a score is right.

    Scores with one column per ensemble member get one calibration per member ("mean").
    """
    scores = np.asarray(scores, float)
    if scores.ndim == 2:
        if scores.shape[1] == 1:
            return fit_calibration(scores[:, 0], y, method)
        return {"method": "mean", "members": [fit_calibration(col, y, method) for col in scores.T]}
    if method == "sigmoid":
        from sklearn.linear_model import LogisticRegression

        # Platt's smoothed targets keep the sigmoid from saturating on separable data
        n1, n0 = int((y == 1).sum()), int((y == 0).sum())
        t = np.where(y == 1, (n1 + 1.0) / (n1 + 2.0), 1.0 / (n0 + 2.0))
        xs = np.concatenate([scores, scores]).reshape(-1, 1)
        ys = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
        w = np.concatenate([t, 1.0 - t])
        lr = LogisticRegression(C=1e6, max_iter=1000).fit(xs, ys, sample_weight=w)
        return {"method": "sigmoid", "coef": float(lr.coef_[0, 0]), "intercept": float(lr.intercept_[0])}
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(scores, y)
        lo, hi = np.nanpercentile(scores, [1, 99]) if len(scores) else (0.0, 1.0)
        return {"method": "isotonic", "isotonic": iso, "tie_center": float((lo + hi) / 2),
                "tie_scale": float(max(hi - lo, 1e-9))}
    raise ValueError(f"unknown calibration {method!r}; choose sigmoid or isotonic")


def apply_calibration(calibration: dict[str, Any], scores: np.ndarray) -> np.ndarray:
    """Calibrated probability of VPN for raw scores (one column per member for an ensemble)."""
    scores = np.asarray(scores, float)
    if calibration["method"] == "mean":
        return np.mean([apply_calibration(c, col) for c, col in zip(calibration["members"], scores.T, strict=True)],
                       axis=0)
    if scores.ndim == 2:
        scores = scores[:, 0]
    if calibration["method"] == "sigmoid":
        z = calibration["coef"] * scores + calibration["intercept"]
        return 1.0 / (1.0 + np.exp(-np.clip(z, -700, 700)))
    p = np.asarray(calibration["isotonic"].predict(scores), float)
    # isotonic steps put many flows on one plateau; a nudge of at most 1e-6 by the raw score
    # keeps their order (ROC curves stay informative) without changing any probability visibly
    nudge = 0.999e-6 * np.tanh((scores - calibration.get("tie_center", 0.0)) / calibration.get("tie_scale", 1.0))
    return p * (1.0 - 2e-6) + 1e-6 + nudge  # both terms rise with the score; stays inside (0, 1)


def _fold_scores(kind: str, X: np.ndarray, y: np.ndarray, groups: np.ndarray, tr: np.ndarray, te: np.ndarray,
                 seed: int) -> np.ndarray:
    """One fold's raw scores; one thread even in a joblib worker, which does not inherit ``train``'s limit."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        est = fit_estimator(kind, X[tr], y[tr], groups[tr], seed)
        return raw_scores(est, X[te]).reshape(len(te), -1)


def oof_scores(kind: str, X: np.ndarray, y: np.ndarray, groups: np.ndarray, splits, seed: int,
               jobs: int = 1) -> np.ndarray:
    """Out-of-fold raw scores (rows, members); NaN for rows no fold tested.

    ``jobs`` > 1 fits that many folds at once, each in its own process and on one thread:
    the folds are independent and each fit is deterministic, so the scores are the same.
    """
    if jobs > 1 and len(splits) > 1:
        from joblib import Parallel, delayed

        parts = Parallel(n_jobs=jobs)(delayed(_fold_scores)(kind, X, y, groups, tr, te, seed) for tr, te in splits)
    else:
        parts = [_fold_scores(kind, X, y, groups, tr, te, seed) for tr, te in splits]
    if not parts:
        return np.full((len(y), 1), np.nan)
    out = np.full((len(y), parts[0].shape[1]), np.nan)
    for (_tr, te), s in zip(splits, parts, strict=True):
        out[te] = s
    return out


def threshold_for_fpr(neg_scores: np.ndarray, fpr_target: float, floor: float, cap: float = 1.0) -> float:
    """Lowest threshold with FPR <= fpr_target on ``neg_scores`` (calls score >= threshold VPN).

    ``floor`` and ``cap`` bound it (probabilities: 0.5 and 1; raw scores: -inf and inf).
    """
    s = np.sort(np.asarray(neg_scores, float)[np.isfinite(neg_scores)])[::-1]
    if len(s) == 0:
        return floor
    allowed = int(np.floor(fpr_target * len(s)))
    t = float(np.nextafter(s[allowed], np.inf)) if allowed < len(s) else float(s[-1])
    return float(min(max(t, floor), cap))


def binary_metrics(y: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall, F1, ROC-AUC and FPR at ``threshold`` (NaN-proba rows ignored)."""
    from sklearn.metrics import roc_auc_score

    ok = np.isfinite(proba)
    y, p = np.asarray(y)[ok].astype(int), np.asarray(proba)[ok]
    pred = p >= threshold
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    tn = int((~pred & (y == 0)).sum())
    prec = tp / (tp + fp) if tp + fp else float("nan")
    rec = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * prec * rec / (prec + rec) if tp and prec + rec else (0.0 if tp + fn else float("nan"))
    both = len(np.unique(y)) == 2
    return {
        "flows": len(y), "vpn_flows": int((y == 1).sum()), "non_vpn_flows": int((y == 0).sum()),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": prec, "recall": rec, "f1": f1,
        "fpr": fp / (fp + tn) if fp + tn else float("nan"),
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pauc_1pct": float(roc_auc_score(y, p, max_fpr=0.01)) if both else float("nan"),
        "threshold": float(threshold),
    }


@dataclass
class TrainResult:
    """A trained bundle plus what the card reports about how it was chosen."""

    bundle: dict[str, Any]
    oof_proba: np.ndarray
    candidates: dict[str, dict[str, float]]
    metrics: dict[str, float]
    importance: np.ndarray


def _protocol_model(X: np.ndarray, y: np.ndarray, protocol: np.ndarray, seed: int):
    """A multiclass guesser over VPN flows with a protocol name; None when fewer than two are known.

    A small forest: every flow a sensor sees gets a guess, and a forest scores a batch in
    one pass over its trees (boosting needs one tree per class per round).
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline

    known = (y == 1) & np.array([isinstance(p, str) and p != "" for p in protocol], bool)
    names = np.unique(protocol[known].astype(str)) if known.any() else np.array([])
    if len(names) < 2:
        return None, [str(n) for n in names]
    clf = Pipeline([
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("forest", RandomForestClassifier(n_estimators=40, max_depth=10, min_samples_leaf=3,
                                          class_weight="balanced", random_state=seed, n_jobs=1)),
    ])
    clf.fit(X[known], protocol[known].astype(str))
    return clf, [str(c) for c in clf.classes_]


def _explain_stats(X: np.ndarray, y: np.ndarray, importance: np.ndarray) -> dict[str, np.ndarray]:
    """Per-feature class medians and spread, for cheap per-flow evidence at prediction time.

    The medians are taken per transport (rows of ``TRANSPORT_KINDS``): a TCP flow is then
    compared with the TCP flows of each class, so a feature that only tells transports
    apart ("is_udp=0") is never named as why a TCP flow looks like a VPN, and a TCP flow's
    packet sizes are not held against UDP tunnels' sizes. A transport with no training
    flow of a class falls back to that class's median over all flows.
    """
    import warnings

    kind = transport_kind(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        medians = {}
        for c, key in ((0, "neg_median"), (1, "pos_median")):
            mine = y == c
            overall = np.nanmedian(X[mine], axis=0) if mine.any() else np.zeros(X.shape[1])
            rows = [np.nanmedian(X[mine & (kind == k)], axis=0) if (mine & (kind == k)).any() else overall
                    for k in range(len(TRANSPORT_KINDS))]
            medians[key] = np.nan_to_num(np.vstack(rows)).astype(np.float64)
        q75, q25 = np.nanpercentile(X, [75, 25], axis=0)
        std = np.nanstd(X, axis=0)
    scale = np.where(np.isfinite(q75 - q25) & (q75 - q25 > 0), q75 - q25, std)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    imp = np.nan_to_num(np.maximum(importance, 0.0))
    imp = imp / imp.sum() if imp.sum() > 0 else np.zeros_like(imp)
    # a floor keeps every feature nameable when a model needs few of them to separate the data
    weight = 0.8 * imp + 0.2 / len(imp)
    return {"importance": weight.astype(np.float64), **medians, "scale": scale.astype(np.float64)}


def permutation_importance_auc(score, X: np.ndarray, y: np.ndarray, seed: int, max_rows: int = 1000) -> np.ndarray:
    """Drop in ROC-AUC when one feature is shuffled.

    All shuffled copies are stacked and scored in one call (one pass over the trees
    instead of one per feature); AUCs come from ranks, vectorized per copy.
    """
    from scipy.stats import rankdata

    rng = np.random.default_rng(seed)
    if len(y) > max_rows:
        idx = np.sort(rng.choice(len(y), max_rows, replace=False))
        X, y = X[idx], y[idx]
    n, d = X.shape
    if len(np.unique(y)) < 2:
        return np.zeros(d)
    stacked = np.repeat(X[None, :, :], d + 1, axis=0)  # copy 0 unshuffled, copy j+1 shuffles feature j
    perm = np.argsort(rng.random((d, n)), axis=1)
    stacked[np.arange(1, d + 1)[:, None], np.arange(n)[None, :], np.arange(d)[:, None]] = X[perm, np.arange(d)[:, None]]
    s = np.asarray(score(stacked.reshape(-1, d)), float).reshape(d + 1, n)
    ranks = rankdata(s, axis=1)
    pos = y == 1
    n1, n0 = pos.sum(), (~pos).sum()
    auc = (ranks[:, pos].sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return auc[0] - auc[1:]


#: Share of a direction's first payload packets with a readable inner IP header from which a
#: flow counts as a cleartext tunnel (``skip_cleartext_tunnels``).
CLEARTEXT_INNER_IP_FRAC = 0.5


def left_out_of_fitting(X: np.ndarray, y: np.ndarray, packets: np.ndarray | None,
                        config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(short, cleartext): the VPN rows the recipe leaves out of fitting, each row under one reason.

    ``short``: fewer than ``config.min_tunnel_packets`` packets, or one-way and fewer than
    ``config.min_one_way_tunnel_packets``; ``cleartext`` (with
    ``config.skip_cleartext_tunnels``, and not already short): readable inner IP headers in
    either direction. Used by ``train`` and by the model card, so both count the same rows.
    """
    vpn = np.asarray(y).astype(int) == 1
    short = np.zeros(len(vpn), bool)
    if packets is not None and config.min_tunnel_packets > 0:
        short = vpn & (np.asarray(packets) < config.min_tunnel_packets)
    if packets is not None and config.min_one_way_tunnel_packets > 0:
        up = X[:, FEATURE_NAMES.index("up_pkt_frac")]
        one_way = (up == 0) | (up == 1)
        short |= vpn & one_way & (np.asarray(packets) < config.min_one_way_tunnel_packets)
    cleartext = np.zeros(len(vpn), bool)
    if config.skip_cleartext_tunnels:
        cols = [FEATURE_NAMES.index(n) for n in ("up_inner_header_frac", "down_inner_header_frac")]
        readable = (np.nan_to_num(X[:, cols], nan=0.0) >= CLEARTEXT_INNER_IP_FRAC).any(axis=1)
        cleartext = vpn & readable & ~short
    return short, cleartext


def train(X: np.ndarray, y: np.ndarray, groups: np.ndarray, protocol: np.ndarray | None = None,
          config: TrainConfig | None = None, log=None, explain: bool = True,
          packets: np.ndarray | None = None, jobs: int = 1) -> TrainResult:
    """Fit the whole recipe on a feature matrix; returns the bundle to save and its card facts.

    ``packets`` (each flow's packet count) lets ``config.min_tunnel_packets`` leave short
    VPN flows out, and ``config.skip_cleartext_tunnels`` leaves out VPN flows whose inner
    headers are readable; the out-of-fold arrays of the result cover the rows actually used.

    ``explain=False`` skips what only a shipped model needs (permutation importance and
    the protocol guesser), for the many refits of grouped evaluation. ``jobs`` fits that
    many out-of-fold models at once (:func:`oof_scores`); the model is the same.

    Runs single-threaded: the training sets are small, and OpenMP threads that spin
    while the cores are shared make a fit several times slower, not faster.
    """
    from threadpoolctl import threadpool_limits

    config = config or TrainConfig()
    short, cleartext = left_out_of_fitting(X, y, packets, config)
    if log and packets is not None and (config.min_tunnel_packets > 0 or config.min_one_way_tunnel_packets > 0):
        log(f"left out {int(short.sum())} VPN flows of fewer than {config.min_tunnel_packets} packets, or one-way "
            f"and fewer than {config.min_one_way_tunnel_packets}")
    if log and config.skip_cleartext_tunnels:
        log(f"left out {int(cleartext.sum())} VPN flows with readable inner headers (cleartext tunnels)")
    keep = ~(short | cleartext)
    if not keep.all():
        X, y, groups = X[keep], np.asarray(y)[keep], np.asarray(groups)[keep]
        protocol = None if protocol is None else np.asarray(protocol, object)[keep]
    with threadpool_limits(limits=1):
        return _train(X, y, groups, protocol, config, log, explain, jobs)


def _train(X: np.ndarray, y: np.ndarray, groups: np.ndarray, protocol: np.ndarray | None,
           config: TrainConfig | None, log, explain: bool, jobs: int = 1) -> TrainResult:
    config = config or TrainConfig()
    say = log or (lambda msg: None)
    y = np.asarray(y).astype(int)
    groups = np.asarray(groups).astype(str)
    protocol = np.asarray(protocol if protocol is not None else np.full(len(y), None), object)
    if X.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"feature matrix has {X.shape[1]} columns, expected {len(FEATURE_NAMES)}")
    if len(np.unique(y)) < 2:
        raise ValueError("training needs both VPN (label 1) and non-VPN (label 0) flows")
    splits = group_splits(y, groups, config.folds, config.seed)
    if not splits:
        raise ValueError("no grouped fold has both classes in training; add captures of both kinds")

    candidates: dict[str, dict[str, float]] = {}
    calibrated: dict[str, tuple[dict[str, Any], np.ndarray]] = {}
    for kind in config.candidates:
        s = oof_scores(kind, X, y, groups, splits, config.seed, jobs)
        ok = np.isfinite(s).all(axis=1)
        # calibration is monotone in a single score, so ranking by it is ranking by the raw score
        calibration = fit_calibration(s[ok], y[ok], config.calibration)
        p = np.full(len(y), np.nan)
        p[ok] = apply_calibration(calibration, s[ok])
        neg_t = threshold_for_fpr(p[ok & (y == 0)], config.fpr_target, -np.inf, np.inf)
        m = binary_metrics(y[ok], p[ok], neg_t)
        candidates[kind] = {"pauc": m["pauc_1pct"], "roc_auc": m["roc_auc"], "recall_at_target": m["recall"]}
        calibrated[kind] = (calibration, p)
        say(f"candidate {kind}: pAUC(FPR<=1%) {m['pauc_1pct']:.4f}, ROC-AUC {m['roc_auc']:.4f}, "
            f"recall at FPR<={config.fpr_target:g} {m['recall']:.4f}")
    # ROC-AUC first: on few capture groups the partial AUC hangs on a handful of flows of one
    # unseen kind of traffic, and swings from fold to fold
    # ties (within 0.01) go to the earlier candidate
    best = max(config.candidates, key=lambda k: (round(float(np.nan_to_num(candidates[k]["roc_auc"])), 2),
                                                 -config.candidates.index(k)))
    say(f"chosen estimator: {best}")

    clf = fit_estimator(best, X, y, groups, config.seed)
    calibration, oof_proba = calibrated[best]
    ok = np.isfinite(oof_proba)
    threshold = threshold_for_fpr(oof_proba[ok & (y == 0)], config.fpr_target, config.min_threshold)
    metrics = binary_metrics(y, oof_proba, threshold)
    say(f"threshold {threshold:.4f}: out-of-fold recall {metrics['recall']:.4f}, FPR {metrics['fpr']:.5f}")

    if explain:
        importance = permutation_importance_auc(lambda A: apply_calibration(calibration, raw_scores(clf, A)), X, y,
                                                config.seed)
        proto_clf, proto_classes = _protocol_model(X, y, protocol, config.seed)
    else:
        importance, proto_clf, proto_classes = np.zeros(X.shape[1]), None, []
    bundle: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "name": config.name,
        "version": config.version,
        "feature_version": FEATURE_VERSION,
        "feature_names": list(FEATURE_NAMES),
        "threshold": float(threshold),
        "estimator": best,
        "classifier": clf,
        "calibration": calibration,
        "protocol_classifier": proto_clf,
        "protocol_classes": proto_classes,
        "protocol_min_proba": float(config.protocol_min_proba),
        "explain": _explain_stats(X, y, importance),
        "train_config": _plain(asdict(config)),
    }
    return TrainResult(bundle, oof_proba, candidates, metrics, importance)


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """Only JSON-like values (lists, not tuples) so skops stores builtins only."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, tuple):
            v = list(v)
        elif isinstance(v, dict):
            v = _plain(v)
        out[k] = v
    return out


def library_versions() -> dict[str, str]:
    import numpy
    import pyarrow
    import sklearn
    import skops

    from classifier._version import __version__

    return {"python": platform.python_version(), "numpy": numpy.__version__, "scikit-learn": sklearn.__version__,
            "skops": skops.__version__, "pyarrow": pyarrow.__version__, "vpnid": __version__}


def top_features(importance: np.ndarray, k: int = 12) -> list[dict[str, Any]]:
    order = np.argsort(-np.nan_to_num(importance))[:k]
    return [{"name": FEATURE_NAMES[j], "importance": float(importance[j]), "doc": FEATURE_DOCS[FEATURE_NAMES[j]]}
            for j in order]


def typical_values(explain: dict[str, np.ndarray]) -> dict[str, dict[str, list[float]]]:
    """The medians the evidence compares each flow with, per feature: {transport: [VPN, non-VPN]}."""
    pos, neg = explain["pos_median"], explain["neg_median"]
    return {name: {kind: [float(pos[k, j]), float(neg[k, j])] for k, kind in enumerate(TRANSPORT_KINDS)}
            for j, name in enumerate(FEATURE_NAMES)}
