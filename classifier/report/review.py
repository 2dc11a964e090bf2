"""Flows for review: the model leaned toward VPN but stayed under its threshold.

Why a second list: the operating threshold is set so that a compliance finding is almost
never a false alarm, and real tunnels pay for it. Proxies and tunnels inside TLS
(Shadowsocks downloads, OpenVPN in stunnel) often score just under it (docs/model.md,
Limits). The report keeps them out of the findings. It lists them apart, ranked by the
model's P(VPN), so an analyst can look at them without a rerun at another ``--threshold``.

Which flows: the model scored them (``detection`` = ``model``), did not call them VPN, and
gave them P(VPN) at or above the review floor (default 0.5: more likely VPN than not, by
the model's calibration). For such a flow ``confidence`` is that of the "not VPN"
verdict, so P(VPN) = 1 - ``confidence``. The registry is not checked for them: only VPN
flows are findings.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from classifier.flows.schema import REPORT_SCHEMA

#: Default review floor on P(VPN) (``vpnid report --review-floor``).
DEFAULT_FLOOR = 0.5

#: Flow columns a review row keeps (no lists, no payload), then ``p_vpn``.
REVIEW_COLUMNS = (
    "flow_id", "capture", "src_ip", "dst_ip", "src_port", "dst_port", "ip_proto", "first_seen", "last_seen",
    "packets", "bytes", "evidence",
)

REVIEW_SCHEMA = pa.schema([REPORT_SCHEMA.field(c) for c in REVIEW_COLUMNS] + [
    pa.field("p_vpn", pa.float64(), metadata={"doc": "the model's P(VPN): at least the review floor, under "
                                                     "its threshold"}),
])


def review_mask(table: pa.Table, floor: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(rows on the review list, the model's P(VPN) of every row) of a labelled table."""
    if floor is None or table.num_rows == 0:
        return np.zeros(table.num_rows, bool), np.full(table.num_rows, np.nan)
    # the model's own P(VPN), read back from a labelled row as endpoint context reads it;
    # imported here: the model package loads scikit-learn, which a report without a model skips
    from classifier.model.endpoint_context import model_proba

    proba, scored, vpn = model_proba(table)
    return scored & ~vpn & (np.nan_to_num(proba, nan=-1.0) >= floor), proba


def select_for_review(table: pa.Table, floor: float | None) -> pa.Table:
    """Rows of a labelled table that go on the review list, as ``REVIEW_SCHEMA`` (unsorted)."""
    keep, proba = review_mask(table, floor)
    if not keep.any():
        return REVIEW_SCHEMA.empty_table()
    picked = table.take(pa.array(np.flatnonzero(keep)))
    return pa.Table.from_arrays([picked.column(c) for c in REVIEW_COLUMNS] + [pa.array(proba[keep], pa.float64())],
                                schema=REVIEW_SCHEMA)


def ranked(parts: list[pa.Table]) -> pa.Table:
    """The review rows of every batch, highest P(VPN) first (ties keep the captures' order)."""
    table = pa.concat_tables(parts) if parts else REVIEW_SCHEMA.empty_table()
    order = np.argsort(-table.column("p_vpn").to_numpy(), kind="stable")
    return table.take(pa.array(order, pa.int64()))
