"""Gradient-boosted trees scored row by row in one compiled loop.

Why: scikit-learn scores a ``HistGradientBoostingClassifier`` one tree at a time over all
rows, so every tree walks the whole feature matrix again, and a row's features have left
the cache long before its next tree. The shipped model is five such models of 120 trees
(``SeedBag``); scored that way it takes about 100 µs a flow, enough to matter when
``classify`` scores tens of thousands of flows or the live sensor relabels its open flows
every second. Here every tree of every member is walked for one row while that row is in
cache. The trees' values are added in scikit-learn's order (the baseline, then tree after
tree), so the scores are the same to the bit; ``tests/test_tree_kernel.py`` checks that.

The trees are read from scikit-learn's own predictor arrays (``_predictors``, one
``TreePredictor`` per boosting round): that is private API, so :func:`pack_trees` checks
what it relies on and :func:`decision_functions` falls back to scikit-learn's own scoring
when a model has anything it does not handle (categorical splits, several classes).
"""

from __future__ import annotations

from typing import NamedTuple

import numba as nb
import numpy as np


class PackedTrees(NamedTuple):
    """All members' trees as flat node arrays (child indices global, leaves marked)."""

    feature: np.ndarray  # int64 per node: the feature a split reads
    threshold: np.ndarray  # float64 per node: go left when x <= threshold
    missing_left: np.ndarray  # uint8 per node: where NaN goes
    left: np.ndarray  # int64 per node
    right: np.ndarray  # int64 per node
    is_leaf: np.ndarray  # uint8 per node
    value: np.ndarray  # float64 per node: a leaf's raw score
    roots: np.ndarray  # int64 per tree: its root node
    member_trees: np.ndarray  # int64, members + 1: member m owns trees member_trees[m]:member_trees[m+1]
    baselines: np.ndarray  # float64 per member: its raw score before any tree


def pack_trees(models) -> PackedTrees | None:
    """Flatten binary HistGradientBoosting models' trees; None when one has what the kernel does not handle."""
    nodes, roots, member_trees, baselines = [], [], [0], []
    offset = 0
    for model in models:
        predictors = getattr(model, "_predictors", None)
        baseline = np.asarray(getattr(model, "_baseline_prediction", np.nan), float).ravel()
        if predictors is None or baseline.size != 1 or any(len(round_) != 1 for round_ in predictors):
            return None
        for (tree,) in predictors:
            n = tree.nodes
            if n["is_categorical"].any():
                return None
            nodes.append(n)
            roots.append(offset)
            offset += len(n)
        member_trees.append(len(roots))
        baselines.append(float(baseline[0]))
    if not nodes:
        return None
    starts = np.repeat(np.asarray(roots, np.int64), [len(n) for n in nodes])
    n = np.concatenate(nodes)
    leaf = n["is_leaf"].astype(np.uint8)
    return PackedTrees(
        feature=n["feature_idx"].astype(np.int64),
        threshold=n["num_threshold"].astype(np.float64),
        missing_left=n["missing_go_to_left"].astype(np.uint8),
        left=np.where(leaf == 1, 0, n["left"].astype(np.int64) + starts),
        right=np.where(leaf == 1, 0, n["right"].astype(np.int64) + starts),
        is_leaf=leaf,
        value=n["value"].astype(np.float64),
        roots=np.asarray(roots, np.int64),
        member_trees=np.asarray(member_trees, np.int64),
        baselines=np.asarray(baselines, np.float64),
    )


@nb.njit(cache=True)
def _score(X, feature, threshold, missing_left, left, right, is_leaf, value, roots, member_trees, baselines, out):
    for i in range(X.shape[0]):
        for m in range(baselines.shape[0]):
            acc = baselines[m]
            for t in range(member_trees[m], member_trees[m + 1]):
                node = roots[t]
                while is_leaf[node] == 0:
                    x = X[i, feature[node]]
                    if x != x:
                        node = left[node] if missing_left[node] == 1 else right[node]
                    elif x <= threshold[node]:
                        node = left[node]
                    else:
                        node = right[node]
                acc += value[node]
            out[m, i] = acc


def decision_functions(models, X: np.ndarray) -> np.ndarray:
    """Each model's decision function (log-odds), shape (models, rows), as scikit-learn computes it."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    packed = pack_trees(models)
    if packed is None or any(getattr(m, "n_features_in_", X.shape[1]) != X.shape[1] for m in models):
        return np.array([m.decision_function(X) for m in models], dtype=np.float64).reshape(len(models), len(X))
    out = np.empty((len(models), X.shape[0]), np.float64)
    _score(X, *packed, out)
    return out
