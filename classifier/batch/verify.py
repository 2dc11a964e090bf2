"""Checking a batch result against the same capture read as one file.

The documented guarantee (docs/scale.md) is that stitching rotated files gives the
flows of the unsplit capture: identical counts, bytes, sizes, timestamps, first
packets, TCP flags and labels; means and standard deviations equal up to
floating-point rounding (the parts are combined with Chan's formula instead of one
Welford pass); and the end reason equal except for a flow whose idle or active
deadline falls within the last sweep interval before the end of input (whether the
meter's once-a-second sweep caught it depends on where sweeps fell in the stream).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from classifier.flows.config import FlowConfig

FLOAT_RTOL = 1e-9
FLOAT_ATOL = 1e-6  # ms or bytes: far below one nanosecond / one byte


def _num(col: pa.ChunkedArray) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in col.to_pylist()], dtype=float)


def compare_tables(got: pa.Table, want: pa.Table, config: FlowConfig | None = None,
                   ignore: tuple[str, ...] = ("capture",)) -> list[str]:
    """Differences between two flow tables of the same flows, both ordered by ``flow_id``.

    Returns human-readable problems (empty when the tables agree within the guarantee).
    """
    config = config or FlowConfig()
    problems: list[str] = []
    if got.num_rows != want.num_rows:
        return [f"{got.num_rows} flows, expected {want.num_rows}"]
    got = got.sort_by("flow_id")
    want = want.sort_by("flow_id")
    if got.column_names != want.column_names:
        problems.append(f"columns differ: {got.column_names} vs {want.column_names}")
    end_ns = pc.max(want.column("last_seen")).cast(pa.int64()).as_py() if want.num_rows else 0
    for name in want.column_names:
        if name in ignore or name not in got.column_names:
            continue
        a, b = got.column(name), want.column(name)
        type_ = want.schema.field(name).type
        if name == "end_reason":
            bad = np.flatnonzero(np.array(a.to_pylist(), object) != np.array(b.to_pylist(), object))
            if len(bad):
                last = want.column("last_seen").cast(pa.int64()).to_numpy()[bad]
                first = want.column("first_seen").cast(pa.int64()).to_numpy()[bad]
                idle, active, _, every = config.ns
                deadline = np.minimum(last + idle, first + active)
                edge = (end_ns - deadline >= -every) & (end_ns - deadline <= every)
                if not edge.all():
                    problems.append(f"end_reason differs on {int((~edge).sum())} flow(s), e.g. row {bad[~edge][0]}: "
                                    f"{a[int(bad[~edge][0])]} vs {b[int(bad[~edge][0])]}")
            continue
        if pa.types.is_floating(type_):
            x, y = _num(a), _num(b)
            if not np.allclose(x, y, rtol=FLOAT_RTOL, atol=FLOAT_ATOL, equal_nan=True):
                i = int(np.flatnonzero(~np.isclose(x, y, rtol=FLOAT_RTOL, atol=FLOAT_ATOL, equal_nan=True))[0])
                problems.append(f"{name} differs, e.g. row {i}: {x[i]!r} vs {y[i]!r}")
            continue
        if pa.types.is_list(type_) and pa.types.is_floating(type_.value_type):
            xs, ys = a.to_pylist(), b.to_pylist()
            for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
                if len(x) != len(y) or not np.allclose(x, y, rtol=FLOAT_RTOL, atol=FLOAT_ATOL):
                    problems.append(f"{name} differs, e.g. row {i}: {x} vs {y}")
                    break
            continue
        if not a.equals(b):
            xs, ys = a.to_pylist(), b.to_pylist()
            i = next(i for i, (x, y) in enumerate(zip(xs, ys, strict=True)) if x != y)
            problems.append(f"{name} differs, e.g. row {i}: {xs[i]!r} vs {ys[i]!r}")
    return problems
