"""The steps behind ``vpnid train``: labeled input -> features -> recipe -> model file and card.

Kept apart from the CLI so the notebook and the tests run exactly what users run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from classifier.errors import ErrorLog
from classifier.model.data import LabeledFlows, data_hash, inputs_hash, load_labeled
from classifier.model.features import FEATURE_NAMES, FEATURE_VERSION, feature_matrix
from classifier.model.io import save_bundle
from classifier.model.train import (
    ESTIMATOR_DESCRIPTIONS,
    TrainConfig,
    TrainResult,
    left_out_of_fitting,
    library_versions,
    top_features,
    train,
    typical_values,
)


def build_card(result: TrainResult, data: LabeledFlows, X: np.ndarray, config: TrainConfig,
               augment: int, snaplens: tuple[int, ...] = (), coalesce_ns: int = 0) -> dict[str, Any]:
    """The model card: what the model is, what it saw, how well it did on captures it did not see."""
    b = result.bundle
    summary = data.summary()
    original = data.variant == "original"
    short, cleartext = left_out_of_fitting(X, data.label, data.table.column("packets").to_numpy(), config)
    return {
        "name": b["name"],
        "version": b["version"],
        "summary": ("Flags VPN tunnels from flow statistics alone (packet sizes and their ratios, first "
                    "packets, payload-size rhythm, how random the first payload bytes look, gaps relative to each other), "
                    "for flows no signature claims. Probabilities are calibrated on captures held out "
                    "from training; the threshold keeps false alarms at the target rate on held-out "
                    "non-VPN captures."),
        "estimator": b["estimator"],
        "estimator_description": ESTIMATOR_DESCRIPTIONS.get(b["estimator"], ""),
        "calibration": config.calibration,
        "threshold": b["threshold"],
        "fpr_target": config.fpr_target,
        "feature_version": FEATURE_VERSION,
        "features": list(FEATURE_NAMES),
        "excluded_inputs": ["IP addresses", "ports", "VLAN", "TTL", "timestamps", "flow ids", "capture names",
                            "IP version (read only to count an IPv6 packet's size as over IPv4)", "end reason",
                            "flow length and volume (packets, bytes, duration)",
                            "absolute timing (inter-arrival times and response delays in ms: they measure the path)"],
        "protocol_classes": b["protocol_classes"],
        "training_data": {
            **summary,
            "original_flows": int(original.sum()),
            "augmented_flows": int((~original).sum()),
            "augmentation": (f"{augment} copies per capture (packet loss 0-5%, log-normal jitter sigma 0-0.5, "
                             "all gaps slowed 1-10x, capture window starting and ending mid-way, "
                             "one direction of every flow only in about one copy in four, "
                             "timestamps rounded to 1 ms, 10 ms or 1 s in about one copy in three)")
            if augment else "none",
            **({"snaplen": f"every capture and copy cut to a snapshot length drawn from {', '.join(map(str, snaplens))} "
                           "bytes per frame: a model for headers-only captures (docs/model.md, Headers-only captures)"}
               if snaplens else {}),
            **({"host_capture": f"every capture and copy read as if made on one of its hosts: TCP segments at most "
                                f"{coalesce_ns / 1e3:g} us apart merged into super-packets of up to 64 KB, as "
                                "segmentation and receive offloads show them (docs/model.md, Captures made on a host)"}
               if coalesce_ns else {}),
            "sha256": data_hash(X, data.label),
            "inputs_sha256": inputs_hash(data.inputs),
            "vpn_flows_left_out_short": int(short.sum()),
            "vpn_flows_left_out_cleartext": int(cleartext.sum()),
            "inputs": data.inputs,
        },
        "metrics": {k: v for k, v in result.metrics.items()},
        "candidates": result.candidates,
        "top_features": top_features(result.importance),
        "typical_values": typical_values(b["explain"]),
        "train_config": b["train_config"],
        "libraries": library_versions(),
    }


def train_model(inputs: Iterable[str], output: str | Path, config: TrainConfig, *, manifest: str | None = None,
                augment: int = 0, log: ErrorLog | None = None,
                say: Callable[[str], None] | None = None, jobs: int = 1,
                snaplens: tuple[int, ...] = (), coalesce_ns: int = 0) -> tuple[TrainResult, dict[str, Any]]:
    """Load labeled input, train, write ``output`` and its card; return the result and the card."""
    say = say or (lambda _m: None)
    log = log if log is not None else ErrorLog()
    data = load_labeled(list(inputs), manifest=manifest, augment=augment, seed=config.seed, log=log, say=say,
                        snaplens=snaplens, coalesce_ns=coalesce_ns)
    return train_on(data, output, config, augment=augment, say=say, jobs=jobs, snaplens=snaplens,
                    coalesce_ns=coalesce_ns)


def train_on(data: LabeledFlows, output: str | Path, config: TrainConfig, *, augment: int = 0,
             say: Callable[[str], None] | None = None, jobs: int = 1,
             snaplens: tuple[int, ...] = (), coalesce_ns: int = 0) -> tuple[TrainResult, dict[str, Any]]:
    """Train on already-loaded labeled flows and write the model file and card."""
    say = say or (lambda _m: None)
    s = data.summary()
    say(f"{s['flows']} labeled flows ({s['vpn_flows']} VPN, {s['non_vpn_flows']} non-VPN) "
        f"from {s['captures']} captures in {s['groups']} groups; VPN protocols: {s['protocols']}")
    X = feature_matrix(data.table)
    try:
        result = train(X, data.label, data.group, data.protocol, config, log=say,
                       packets=data.table.column("packets").to_numpy(), jobs=jobs)
    except ValueError as exc:
        from classifier.errors import UsageError

        raise UsageError(f"cannot train: {exc}") from None
    card = build_card(result, data, X, config, augment, snaplens, coalesce_ns)
    save_bundle(result.bundle, output, card)
    size = Path(output).stat().st_size
    say(f"wrote {output} ({size / 1024:.0f} KiB), threshold {result.bundle['threshold']:.4f}, "
        f"out-of-fold recall {result.metrics['recall']:.4f} at FPR {result.metrics['fpr']:.5f}")
    return result, card
