"""Protocol signatures: the precise half of detection.

``detect(batch)`` returns one row per flow with ``vpn_protocol``, ``is_vpn``,
``confidence``, ``evidence`` and ``midflow`` (docs/architecture.md). How it stays
fast: each protocol module screens the whole batch with numpy over the payload heads
(``candidates``), and only surviving rows reach its per-flow logic (``check``).
The first module to claim a flow wins, in the order of ``MODULES``; ports never
decide a verdict, at most which reading of an ambiguous header is tried first.
What each module checks, and what it cannot see, is in docs/detection.md.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pyarrow as pa

from classifier.flows.batch import FlowBatch
from classifier.signatures import (
    bittorrent,
    dns2tcp,
    dnscrypt,
    esp,
    fortinet,
    icmp_tunnel,
    ike,
    iodine,
    kcp,
    l2tp,
    mtproto,
    openconnect,
    openvpn,
    pptp,
    quicktun,
    softether,
    sstp,
    tailscale,
    tinc,
    tunnels,
    wireguard,
)
from classifier.signatures._base import TCP, UDP, BatchView, Flow, Verdict

#: Checked in this order; earlier modules have the more specific signatures.
MODULES: tuple[ModuleType, ...] = (
    wireguard, tailscale, openvpn, ike, esp, l2tp, pptp, softether, tinc, quicktun, iodine, dns2tcp, icmp_tunnel,
    openconnect, sstp, fortinet,
    tunnels, mtproto, dnscrypt, bittorrent, kcp,
)

SIGNATURE_FIELDS = [
    pa.field("vpn_protocol", pa.string()),
    pa.field("is_vpn", pa.bool_(), nullable=False),
    pa.field("confidence", pa.float64()),
    pa.field("evidence", pa.string()),
    pa.field("midflow", pa.bool_(), nullable=False),
]
SIGNATURE_SCHEMA = pa.schema(SIGNATURE_FIELDS)

__all__ = ["MODULES", "SIGNATURE_SCHEMA", "Verdict", "detect", "detect_verdicts"]


def detect_verdicts(batch: FlowBatch, modules: tuple[ModuleType, ...] = MODULES) -> list[Verdict | None]:
    """Per-row verdicts (None where no signature matched)."""
    n = len(batch)
    verdicts: list[Verdict | None] = [None] * n
    if n == 0:
        return verdicts
    view = BatchView(batch)
    claimed = np.zeros(n, bool)
    for module in modules:
        rows = np.flatnonzero(module.candidates(view) & ~claimed)
        for row in rows:
            v = module.check(Flow(view, int(row)))
            if v is not None:
                verdicts[row] = v
                claimed[row] = True
    _associate(batch, view, verdicts)
    return verdicts


def detect(batch: FlowBatch) -> pa.Table:
    """Signature verdicts for every flow of ``batch``, row-aligned with ``batch.table``."""
    verdicts = detect_verdicts(batch)
    return pa.table(
        {
            "vpn_protocol": pa.array([v.protocol if v else None for v in verdicts], pa.string()),
            "is_vpn": pa.array([bool(v and v.is_vpn) for v in verdicts], pa.bool_()),
            "confidence": pa.array([v.confidence if v else None for v in verdicts], pa.float64()),
            "evidence": pa.array([v.evidence if v else None for v in verdicts], pa.string()),
            "midflow": pa.array([bool(v and v.midflow) for v in verdicts], pa.bool_()),
        },
        schema=SIGNATURE_SCHEMA,
    )


def _associate(batch: FlowBatch, view: BatchView, verdicts: list[Verdict | None]) -> None:
    """Label encrypted companion flows of a detected control connection (same batch only).

    tinc sends its data over UDP between the peers of its TCP meta connection, using
    the connection's port; AnyConnect runs CSTP over TLS to the same server address
    and port as its DTLS channel. Their payload is encrypted from the first byte, so
    the link to the detected flow is the only evidence, and the evidence says so.
    """
    anchors = [(i, v) for i, v in enumerate(verdicts) if v and v.protocol in ("tinc", "openconnect")]
    if not anchors:
        return
    t = batch.table
    src = t.column("src_ip").to_pylist()
    dst = t.column("dst_ip").to_pylist()
    fid = t.column("flow_id").to_pylist()
    sport, dport, proto = view.sport, view.dport, view.proto
    # Unclaimed TCP/UDP rows by address pair, built once (no pass over the batch per anchor).
    by_pair: dict[frozenset, list[int]] = {}
    for j in np.flatnonzero(np.isin(proto, (TCP, UDP))):
        if verdicts[j] is None:
            by_pair.setdefault(frozenset((src[j], dst[j])), []).append(int(j))
    for i, v in anchors:
        want = UDP if v.protocol == "tinc" else TCP
        port = int(dport[i])
        for j in by_pair.get(frozenset((src[i], dst[i])), ()):
            if verdicts[j] is not None or proto[j] != want:
                continue
            if v.protocol == "tinc" and port in (int(sport[j]), int(dport[j])):
                verdicts[j] = Verdict("tinc", 0.8, f"tinc udp: same peers and port {port} as "
                                      f"tinc meta connection (flow id {fid[i]}); payload encrypted", midflow=False)
            elif v.protocol == "openconnect" and int(dport[j]) == port and dst[j] == dst[i] and \
                    view.data[j, 0, 0] == 0x16:
                verdicts[j] = Verdict("openconnect", 0.8, f"openconnect/anyconnect cstp: TLS to the same server "
                                      f"{dst[i]} port {port} as the AnyConnect DTLS flow (flow id {fid[i]})",
                                      midflow=not (view.first_flags[j] & 0x02))
