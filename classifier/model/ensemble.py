"""MeanProbability: a gradient-boosted model and a random forest that vote together.

Why: the two err on different flows. Boosting ranks the lab's known tunnels sharply but
gives a few unseen kinds of traffic (a BitTorrent download, a call) a near-certain score;
the forest spreads its scores and stumbles on others (pings, a QUIC fetch). A flow must
look like a tunnel to both. The training recipe calibrates each member on its own
out-of-fold scores and averages the calibrated probabilities (``train.raw_scores`` gives
one column per member); ``predict_proba`` here is the plain mean of the members'
probabilities, for use outside that recipe. Each member is the ``make_estimator``
estimator of its kind, fitted with the same sample weights. Measured against gradient
boosting alone in docs/model.md (Recipe): more lab tunnels found, more public false alarms.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class MeanProbability(ClassifierMixin, BaseEstimator):
    """Soft vote of estimators named by kind (``train.make_estimator``); predict_proba is their mean."""

    def __init__(self, kinds: tuple[str, ...] = ("hgb", "rf"), seed: int = 0) -> None:
        self.kinds = kinds
        self.seed = seed

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> MeanProbability:
        from classifier.model.train import fit_weighted, make_estimator

        self.estimators_ = [fit_weighted(make_estimator(k, self.seed), X, y, sample_weight) for k in self.kinds]
        self.classes_ = self.estimators_[0].classes_
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.mean([est.predict_proba(X) for est in self.estimators_], axis=0)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
