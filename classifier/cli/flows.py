"""``vpnid flows``: captures -> flow records (Parquet, CSV or JSON lines)."""

from __future__ import annotations

import argparse
import sys
import time


def register(sub: argparse._SubParsersAction) -> None:
    from classifier.cli.common import add_input_options, add_output_options

    p = sub.add_parser("flows", help="turn captures into bidirectional flow records",
                       description="Read captures and write one row per bidirectional flow "
                                   "(columns documented in docs/schema.md).")
    add_input_options(p)
    add_output_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from classifier.cli.common import flow_config, open_output
    from classifier.errors import ErrorLog
    from classifier.flows.api import iter_flow_batches
    from classifier.flows.schema import FLOW_SCHEMA
    from classifier.output import base_metadata

    config = flow_config(args)
    log = ErrorLog(quiet=False)
    meta = base_metadata(inputs=list(map(str, args.inputs)), idle_timeout_s=config.idle_timeout_s,
                         active_timeout_s=config.active_timeout_s)
    stats: list = []
    t0 = time.perf_counter()
    sink = open_output(args, FLOW_SCHEMA, meta)
    with sink:
        for batch in iter_flow_batches(args.inputs, config=config, log=log, stats=stats):
            sink.write(batch.table)
    elapsed = time.perf_counter() - t0
    if not args.quiet:
        packets = sum(s.packets for s in stats)
        rate = packets / elapsed if elapsed > 0 else 0.0
        print(f"vpnid flows: {sink.rows} flows from {packets} packets in {len(stats)} input(s), "
              f"{elapsed:.2f} s ({rate:,.0f} packets/s) -> {args.output}", file=sys.stderr)
    return log.exit_status
