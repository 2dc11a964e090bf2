"""``vpnid classify``: captures -> flows with a VPN verdict per flow.

Writes the columns of ``vpnid flows`` plus ``is_vpn``, ``vpn_protocol``, ``confidence``,
``detection``, ``evidence``, ``midflow`` and ``tunnel`` (and the registry columns with
``--registry``). Signatures decide first; flows no signature claims go to the model
when one is loaded (the shipped default unless ``--no-model``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc


def register(sub: argparse._SubParsersAction) -> None:
    from classifier.cli.common import (
        add_endpoint_option,
        add_input_options,
        add_model_options,
        add_output_options,
    )

    p = sub.add_parser("classify", help="label each flow VPN or not, with protocol and evidence",
                       description="Read captures, build flows and label each one: protocol signatures "
                                   "first, then the model for flows no signature claims.")
    add_input_options(p)
    add_output_options(p)
    p.add_argument("--no-signatures", action="store_true", help="do not run the protocol signatures")
    add_model_options(p)
    add_endpoint_option(p)
    p.add_argument("--registry", metavar="FILE", help="registered-IP list (CSV or Parquet) to check VPN flows against")
    p.add_argument("--strict-registry", action="store_true", help="refuse a registry file with any bad row")
    p.set_defaults(func=run)


def _load_registry(args: argparse.Namespace, log):
    from classifier.errors import UsageError

    if not args.registry:
        if args.strict_registry:
            raise UsageError("--strict-registry needs --registry FILE")
        return None
    if not Path(args.registry).is_file():
        raise UsageError(f"{args.registry}: registry file not found")
    from classifier.registry import Registry

    return Registry.load(args.registry, strict=args.strict_registry, log=log)


def summary(total: int, protocols: Counter, tunnels: Counter, review: int = 0) -> str:
    """One line: flows, VPN flows by protocol, plain tunnels, flows near the threshold."""
    vpn = sum(protocols.values())
    line = f"{total} flows, {vpn} VPN"
    if protocols:
        line += " (" + ", ".join(f"{p} {n}" for p, n in sorted(protocols.items(), key=lambda x: (-x[1], x[0]))) + ")"
    if tunnels:
        line += ", tunnels: " + ", ".join(f"{p} {n}" for p, n in sorted(tunnels.items()))
    if review:
        from classifier.report.review import DEFAULT_FLOOR

        line += f"; {review} more at P(VPN) >= {DEFAULT_FLOOR:g} under the threshold (`vpnid report` lists them)"
    return line


def _counts(table, column: str, where, missing: str | None) -> dict[str, int]:
    """Rows per value of ``column`` among rows where ``where`` holds (nulls as ``missing``, or dropped)."""
    values = pc.filter(table.column(column), where)
    values = pc.fill_null(values, missing) if missing is not None else values.drop_null()
    return {c["values"].as_py(): c["counts"].as_py() for c in pc.value_counts(values)}


def run(args: argparse.Namespace) -> int:
    from classifier.cli.common import apply_threshold, flow_config, load_model_option, open_output
    from classifier.errors import ErrorLog
    from classifier.flows.schema import CLASSIFY_SCHEMA, REPORT_SCHEMA
    from classifier.output import base_metadata
    from classifier.pipeline import LabelOptions, iter_labeled
    from classifier.report.review import DEFAULT_FLOOR, review_mask

    config = flow_config(args)
    log = ErrorLog(quiet=False)
    model = apply_threshold(load_model_option(args.model, args.no_model, log.warn), args.threshold)
    registry = _load_registry(args, log)
    options = LabelOptions(signatures=not args.no_signatures, model=model, registry=registry,
                           endpoint_context=not args.no_endpoint_context)
    model_name = str(getattr(model, "path", "")) or None if model is not None else None
    meta = base_metadata(inputs=list(map(str, args.inputs)), model=model_name,
                         signatures=not args.no_signatures, registry=args.registry,
                         endpoint_context=options.judges_endpoints,
                         idle_timeout_s=config.idle_timeout_s, active_timeout_s=config.active_timeout_s)
    schema = REPORT_SCHEMA if registry is not None else CLASSIFY_SCHEMA
    protocols: Counter = Counter()
    tunnels: Counter = Counter()
    review = 0
    t0 = time.perf_counter()
    sink = open_output(args, schema, meta)
    with sink:
        for table in iter_labeled(args.inputs, options, config=config, log=log):
            sink.write(table)
            protocols.update(_counts(table, "vpn_protocol", table.column("is_vpn"), "unknown"))
            tunnels.update(_counts(table, "tunnel", pc.invert(table.column("is_vpn")), None))
            review += int(review_mask(table, DEFAULT_FLOOR)[0].sum())
    elapsed = time.perf_counter() - t0
    if not args.quiet:
        print(f"vpnid classify: {summary(sink.rows, protocols, tunnels, review)} in {elapsed:.2f} s -> {args.output}",
              file=sys.stderr)
    return log.exit_status
