"""Model scoring benchmark: flows per second through the shipped model, against scikit-learn's own scoring.

    .venv/bin/python bench/bench_model.py [--flows N] [--model FILE] [--repeat R]

The flows are the engine's rows for synthetic captures (``classifier.model.synthetic``:
tunnels and ordinary traffic, with the NaNs real flow tables have), tiled to N rows. The
feature matrix is built once; what is timed is the estimator's raw score for every row,
which is what ``classify``, ``batch`` and ``live`` pay per model-scored flow, and then the
whole ``proba_from_features`` (calibration included). The reference is the same trees scored
by scikit-learn (``decision_function`` of each boosting model: one tree at a time over all
rows), in the same process; the scores must be equal to the bit, or the run fails.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _members(clf) -> list:
    return list(getattr(clf, "estimators_", [clf]))


def main() -> None:
    from threadpoolctl import threadpool_limits

    from classifier.model import load_model
    from classifier.model.features import feature_matrix
    from classifier.model.synthetic import synthetic_flows
    from classifier.model.tree_kernel import decision_functions

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=50_000)
    ap.add_argument("--model", default=None, help="model file (default: the shipped one)")
    ap.add_argument("--repeat", type=int, default=3, help="best of R runs (default 3)")
    args = ap.parse_args()

    model = load_model(args.model)
    base = feature_matrix(synthetic_flows(200, seed=7))
    X = np.ascontiguousarray(np.resize(base, (args.flows, base.shape[1])))
    members = _members(model.bundle["classifier"])
    trees = sum(len(getattr(m, "_predictors", [])) for m in members)
    print(f"model {model.name}: {len(members)} boosting model(s), {trees} trees; {len(X):,} flows "
          f"({np.isnan(X).mean():.0%} of the features missing)")
    decision_functions(members, X[:10])  # load the compiled kernel before timing

    def best(fn) -> tuple[float, np.ndarray]:
        times, out = [], None
        for _ in range(args.repeat):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        return min(times), out

    with threadpool_limits(limits=1):
        t_ref, ref = best(lambda: np.array([m.decision_function(X) for m in members]))
        t_fast, fast = best(lambda: decision_functions(members, X))
        t_all, _ = best(lambda: model.proba_from_features(X))
    if not np.array_equal(ref, fast):
        raise SystemExit("the kernel's scores differ from scikit-learn's")
    print("one thread; best of", args.repeat)
    print(f"scikit-learn, tree after tree  {t_ref:7.3f} s  {len(X) / t_ref:>12,.0f} flows/s  (reference)")
    print(f"tree kernel, row by row        {t_fast:7.3f} s  {len(X) / t_fast:>12,.0f} flows/s  "
          f"{t_ref / t_fast:5.2f}x the reference")
    print(f"proba_from_features (all)      {t_all:7.3f} s  {len(X) / t_all:>12,.0f} flows/s")


if __name__ == "__main__":
    main()
