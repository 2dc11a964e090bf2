"""The classify pipeline: flows -> signatures -> model -> (registry).

Every front end (``vpnid classify``, ``report``, ``batch``, ``live``) calls
:func:`label_batch` so a flow gets the same verdict offline, in batch and live.

Decision rule (docs/detection.md, docs/model.md): a signature verdict wins; a flow no
signature claims goes to the model, which calls it VPN only above its operating
threshold (chosen for a very low false-positive rate); without a model such a flow is
not VPN. Then, where a whole result exists (``classify``, ``report``, ``evaluate``), the
model's flows of one endpoint are judged together (``classifier.model.endpoint_context``;
``batch`` before it commits, ``live`` as flows end).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from classifier.flows.batch import FlowBatch
from classifier.flows.schema import CLASSIFY_FIELDS

if TYPE_CHECKING:  # pragma: no cover
    from classifier.errors import ErrorLog
    from classifier.flows.config import FlowConfig


@dataclass
class LabelOptions:
    """What labels a flow: signatures on or off, a model (or None), a registry (or None).

    ``endpoint_context``: judge the model's flows of one endpoint together after every
    flow is labelled (``with_endpoint_context``; live: ``RunningEndpoints``, on the flows
    ended so far; batch: over the staged dataset before it commits).
    """

    signatures: bool = True
    model: Any = None  # classifier.model.VpnModel
    registry: Any = None  # classifier.registry.Registry
    endpoint_context: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def judges_endpoints(self) -> bool:
        """Endpoint context asked for and possible: only the model's flows are judged together."""
        return self.endpoint_context and self.model is not None


def _signature_table(batch: FlowBatch) -> pa.Table:
    from classifier.signatures import detect

    return detect(batch)


def signature_split(named: np.ndarray, sig_vpn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(claimed, explained) per flow from the signature stage's protocol (None: no match) and is_vpn.

    The decision rule both ``classify`` and ``vpnid evaluate --signatures`` apply: a
    signature's VPN verdict is final (``claimed``); a signature that recognised a protocol
    that is no VPN (plain encapsulation such as GRE, IP-in-IP or Teredo; Telegram's
    obfuscated transport) has explained the flow, which then does not go to the model
    (``explained``); every other flow is the model's.
    """
    hit = np.array([p is not None for p in named], bool)
    vpn = np.asarray(sig_vpn).astype(bool)
    return hit & vpn, hit & ~vpn


def label_batch(batch: FlowBatch, options: LabelOptions) -> pa.Table:
    """Return the batch's flow table plus the columns of ``CLASSIFY_FIELDS`` (and registry ones)."""
    n = len(batch)
    is_vpn = np.zeros(n, bool)
    protocol = np.full(n, None, object)
    confidence = np.full(n, np.nan)
    detection = np.full(n, None, object)
    evidence = np.full(n, None, object)
    midflow = np.zeros(n, bool)
    tunnel = np.full(n, None, object)

    if options.signatures and n:
        sig = _signature_table(batch)
        sig_proto = sig.column("vpn_protocol").to_numpy(zero_copy_only=False)
        claimed, tunnel_hit = signature_split(sig_proto, sig.column("is_vpn").to_numpy(zero_copy_only=False))
        hit = claimed | tunnel_hit
        is_vpn[claimed] = True
        protocol[claimed] = sig_proto[claimed]
        confidence[claimed] = sig.column("confidence").to_numpy(zero_copy_only=False)[claimed]
        detection[claimed] = "signature"
        evidence[hit] = sig.column("evidence").to_numpy(zero_copy_only=False)[hit]
        midflow = sig.column("midflow").to_numpy(zero_copy_only=False).astype(bool)
        tunnel[tunnel_hit] = sig_proto[tunnel_hit]
    else:
        claimed = tunnel_hit = np.zeros(n, bool)

    if options.model is not None and n:
        rest = np.flatnonzero(~claimed & ~tunnel_hit)
        if len(rest):
            pred = options.model.predict(batch.table.take(pa.array(rest)))
            yes = pred.proba >= options.model.threshold
            is_vpn[rest[yes]] = True
            protocol[rest[yes]] = pred.protocol[yes]
            confidence[rest] = np.where(yes, pred.proba, 1.0 - pred.proba)
            detection[rest] = "model"
            evidence[rest] = pred.evidence

    table = batch.table
    cols = {
        "is_vpn": pa.array(is_vpn),
        "vpn_protocol": pa.array(protocol, pa.string()),
        "confidence": pa.array(confidence, pa.float64(), from_pandas=True),
        "detection": pa.array(detection, pa.string()),
        "evidence": pa.array(evidence, pa.string()),
        "midflow": pa.array(midflow),
        "tunnel": pa.array(tunnel, pa.string()),
    }
    for f in CLASSIFY_FIELDS:
        table = table.append_column(f, cols[f.name])
    if options.registry is not None:
        table = options.registry.annotate(table)
    return table


def iter_labeled(
    inputs: Iterable[str], options: LabelOptions, config: FlowConfig | None = None, log: ErrorLog | None = None
) -> Iterator[pa.Table]:
    """Read captures, label their flows batch by batch (bounded memory), then the endpoint context."""
    from classifier.flows.api import iter_flow_batches

    labelled = (label_batch(batch, options) for batch in iter_flow_batches(inputs, config=config, log=log))
    yield from endpoint_stage(labelled, options)


def endpoint_stage(tables: Iterable[pa.Table], options: LabelOptions) -> Iterator[pa.Table]:
    """``tables`` with the endpoint context applied when ``options`` ask for it and a model scored flows.

    With it, nothing comes out before every table went in (two passes over a spool).
    """
    if not options.judges_endpoints:
        yield from tables
        return
    from classifier.model.endpoint_context import with_endpoint_context

    yield from with_endpoint_context(tables, options.registry, encrypted=options.signatures)
