"""The compiled tree kernel gives scikit-learn's gradient-boosting scores to the bit, NaNs included."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from classifier.model.tree_kernel import decision_functions, pack_trees


def _data(seed: int, rows: int = 600, cols: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, cols))
    y = (X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(scale=0.5, size=rows) > 0).astype(int)
    X[rng.random(X.shape) < 0.2] = np.nan  # missing values: payload statistics of flows without payload
    return X, y


@pytest.mark.parametrize("max_features", [1.0, 0.2])
def test_kernel_scores_equal_scikit_learn_scores(max_features):
    X, y = _data(1)
    models = [HistGradientBoostingClassifier(max_iter=40, max_leaf_nodes=15, max_features=max_features,
                                             random_state=seed).fit(X, y) for seed in range(3)]
    Xt, _ = _data(2, rows=300)
    Xt[:5] = np.nan  # a row with no value at all walks every missing-value branch
    got = decision_functions(models, Xt)
    want = np.array([m.decision_function(Xt) for m in models])
    assert got.shape == (3, 300)
    np.testing.assert_array_equal(got, want)
    if max_features < 1:  # the seeds draw different features, so the members differ
        assert not np.allclose(got[0], got[1])


def test_models_the_kernel_cannot_read_are_scored_by_scikit_learn():
    X, y = _data(3)
    X[:, 0] = np.floor(np.abs(np.nan_to_num(X[:, 0])) * 3) % 4  # a categorical column
    cat = HistGradientBoostingClassifier(max_iter=20, categorical_features=[0], random_state=0).fit(X, y)
    assert pack_trees([cat]) is None
    np.testing.assert_array_equal(decision_functions([cat], X), cat.decision_function(X)[None, :])
    with pytest.raises(ValueError):  # a matrix of the wrong width is scikit-learn's error, not a wrong score
        decision_functions([cat], X[:, :5])
