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


class SeedBag(ClassifierMixin, BaseEstimator):
    """The mean of ``n`` estimators of one kind that differ only in their random seed.

    Why: gradient boosting that draws a fifth of the features at every split
    (``make_estimator("hgb-sub")``) ranks kinds of traffic it has never seen more steadily
    than boosting over all features, which leans on the few features that separate the
    lab's traffic best; but one such model's top scores move a lot with its seed, and the
    operating threshold sits on the top non-VPN scores. The mean of several
    keeps the gain and drops most of the seed's say (docs/model.md, Recipe). The decision
    function is the mean of the members' log-odds, so calibration sees one score, as it
    does for a single model; each member is fitted with the same sample weights.
    """

    def __init__(self, kind: str = "hgb-sub", n: int = 5, seed: int = 0) -> None:
        self.kind = kind
        self.n = n
        self.seed = seed

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> SeedBag:
        from classifier.model.train import fit_weighted, make_estimator

        self.estimators_ = [fit_weighted(make_estimator(self.kind, self.seed + k), X, y, sample_weight)
                            for k in range(self.n)]
        self.classes_ = self.estimators_[0].classes_
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        # row by row over every member's trees: the same scores as scikit-learn's, several times faster
        from classifier.model.tree_kernel import decision_functions

        return np.mean(decision_functions(self.estimators_, X), axis=0)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        from scipy.special import expit

        p = expit(self.decision_function(X))
        return np.column_stack([1.0 - p, p])

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[(self.decision_function(X) > 0).astype(int)]
