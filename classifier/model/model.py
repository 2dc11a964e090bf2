"""VpnModel: a loaded model bundle that turns a flow table into probabilities, guesses and evidence.

Why evidence is computed from class medians and global importance instead of a full
attribution method: it has to run on every flow a live sensor sees. For each feature
the bundle stores the median over VPN and over non-VPN training flows of each transport
(TCP, UDP, other: a TCP flow is compared with TCP flows), a spread, and its permutation
importance; a flow's feature "leans VPN" by ``importance * (distance
to the non-VPN median - distance to the VPN median) / spread``. The features with the
largest lean toward the verdict are named. This is one matrix expression per batch,
and an analyst can check each named value against the card.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from classifier.model.features import FEATURE_NAMES, FEATURE_VERSION, feature_matrix, transport_kind
from classifier.model.io import ModelError, load_bundle, load_card
from classifier.model.train import apply_calibration, raw_scores

#: Features named in each evidence string.
EVIDENCE_FEATURES = 3


@dataclass
class Prediction:
    """Row-aligned model output for a flow table."""

    proba: np.ndarray  # float64, calibrated P(VPN)
    protocol: np.ndarray  # object, protocol guess or "unknown"
    evidence: np.ndarray  # object, one sentence per flow

    def __len__(self) -> int:
        return len(self.proba)


class VpnModel:
    """A VPN / non-VPN model with its operating threshold; see docs/model.md."""

    def __init__(self, bundle: dict[str, Any], path: str | Path | None = None,
                 card: dict[str, Any] | None = None) -> None:
        names = list(bundle.get("feature_names", []))
        where = f"{path}: " if path else ""
        if bundle.get("feature_version") != FEATURE_VERSION or names != list(FEATURE_NAMES):
            raise ModelError(f"{where}model was trained on feature set version {bundle.get('feature_version')} "
                             f"({len(names)} features); this vpnid computes version {FEATURE_VERSION} "
                             f"({len(FEATURE_NAMES)} features): retrain it with `vpnid train`")
        self.bundle = bundle
        self.path = str(path) if path else None
        self.card = card
        self.name: str = str(bundle["name"])
        self.version: str = str(bundle["version"])
        self.threshold: float = float(bundle["threshold"])
        self.estimator: str = str(bundle.get("estimator"))
        ex = bundle["explain"]
        self._imp = np.asarray(ex["importance"], float)
        self._neg = np.asarray(ex["neg_median"], float)
        self._pos = np.asarray(ex["pos_median"], float)
        self._scale = np.asarray(ex["scale"], float)

    def __repr__(self) -> str:
        return f"VpnModel(name={self.name!r}, version={self.version!r}, threshold={self.threshold:.4f})"

    @property
    def label(self) -> str:
        """``name version`` for report metadata."""
        return f"{self.name} {self.version}"

    def proba_from_features(self, X: np.ndarray) -> np.ndarray:
        """Calibrated P(VPN) for a feature matrix."""
        if len(X) == 0:
            return np.zeros(0)
        with _one_thread():
            return apply_calibration(self.bundle["calibration"], raw_scores(self.bundle["classifier"], X))

    def protocol_from_features(self, X: np.ndarray) -> np.ndarray:
        """Protocol guess per row, ``"unknown"`` when the guesser is unsure or absent."""
        out = np.full(len(X), "unknown", object)
        clf = self.bundle.get("protocol_classifier")
        classes = self.bundle.get("protocol_classes") or []
        if len(X) == 0:
            return out
        if clf is None:
            if len(classes) == 1:  # a model trained on one protocol can only guess that one
                out[:] = classes[0]
            return out
        with _one_thread():
            p = clf.predict_proba(X)
        best = p.argmax(1)
        sure = p[np.arange(len(X)), best] >= float(self.bundle.get("protocol_min_proba", 0.6))
        out[sure] = np.asarray(clf.classes_, object)[best[sure]]
        return out

    def lean(self, X: np.ndarray) -> np.ndarray:
        """Per-flow, per-feature lean toward VPN (> 0) or non-VPN (< 0); NaN features lean 0."""
        kind = transport_kind(X)  # medians per transport: compare each flow with flows of its own transport
        neg, pos = self._neg[kind], self._pos[kind]
        d_neg = np.abs(X - neg) / self._scale
        d_pos = np.abs(X - pos) / self._scale
        lean = self._imp * np.clip(d_neg - d_pos, -5.0, 5.0)
        return np.nan_to_num(lean)

    def evidence_from_features(self, X: np.ndarray, proba: np.ndarray) -> np.ndarray:
        """One sentence per flow naming the features that pushed most toward its verdict (vectorized)."""
        n = len(X)
        if n == 0:
            return np.zeros(0, object)
        yes = proba >= self.threshold
        toward = np.where(yes[:, None], 1.0, -1.0) * self.lean(X)
        k = min(EVIDENCE_FEATURES, X.shape[1])
        rows = np.arange(n)[:, None]
        top = np.argpartition(-toward, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(top, np.argsort(-toward[rows, top], axis=1), axis=1)
        vals = X[rows, top].astype(np.float64)
        strong = toward[rows, top] > 0
        names = np.asarray(FEATURE_NAMES, dtype=str)
        shown = np.where(np.isfinite(vals), np.char.mod("%.4g", np.nan_to_num(vals)), "n/a")
        joined = np.full(n, "", dtype=str)
        for j in range(k):
            part = np.where(strong[:, j], np.char.add(np.char.add(names[top[:, j]], "="), shown[:, j]), "")
            glue = np.where((joined != "") & (part != ""), ", ", "")
            joined = np.char.add(np.char.add(joined, glue), part)
        # P and the threshold, three decimals each; when both print alike (plateaus of the
        # calibration sit next to the threshold) the words say on which side P fell
        p_txt, t_txt = np.char.mod("%.3f", proba), f"{self.threshold:.3f}"
        rel = np.where(p_txt != t_txt, " vs threshold ", np.where(yes, ", just over threshold ",
                                                                   ", just under threshold "))
        head = np.char.add(np.char.add(np.char.add(f"model {self.name}: P(VPN)=", p_txt), rel), f"{t_txt} -> ")
        head = np.char.add(head, np.where(yes, "VPN", "not VPN"))
        side = np.where(joined == "", "", np.where(yes, "; VPN-like ", "; non-VPN-like "))
        return np.char.add(np.char.add(head, side), joined).astype(object)

    def predict(self, table: pa.Table) -> Prediction:
        """Score every flow of a flow table (FLOW_SCHEMA columns; extra columns are ignored)."""
        try:
            X = feature_matrix(table)
        except ValueError as exc:
            raise ModelError(str(exc)) from None
        proba = self.proba_from_features(X)
        return Prediction(proba=proba, protocol=self.protocol_from_features(X),
                          evidence=self.evidence_from_features(X, proba))


def _one_thread():
    """OpenMP threads that spin on shared cores slow scoring down; callers parallelise across batches."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


#: Models shipped in ``models/``, by the short name ``--model`` accepts: ``vpnid-NAME.skops``.
SHIPPED_MODELS = ("default", "headers-only", "host-capture")


def default_model_path() -> Path:
    """``models/vpnid-default.skops`` of the source tree (the shipped model)."""
    return shipped_model_path("default")


def shipped_model_path(name: str) -> Path:
    """``models/vpnid-NAME.skops`` of the source tree: a name of ``SHIPPED_MODELS`` (docs/model.md)."""
    return Path(__file__).resolve().parents[2] / "models" / f"vpnid-{name}.skops"


def model_path(path: str | Path | None) -> Path:
    """A model file from ``--model``: a path, or a shipped model's short name when no such file exists."""
    if path is None:
        return default_model_path()
    p = Path(path)
    if str(path) in SHIPPED_MODELS and not p.exists():
        return shipped_model_path(str(path))
    return p


def load_model(path: str | Path | None = None) -> VpnModel:
    """Load a model file or shipped model by name (default: the shipped default); refuses untrusted or
    incompatible files."""
    p = model_path(path)
    bundle = load_bundle(p)
    return VpnModel(bundle, p, load_card(p))
