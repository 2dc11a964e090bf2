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
    from classifier.cli.common import flow_config
    from classifier.errors import ErrorLog, UsageError
    from classifier.flows.api import iter_flow_batches
    from classifier.flows.schema import FLOW_SCHEMA
    from classifier.output import TableSink, base_metadata, format_from_path

    config = flow_config(args)
    log = ErrorLog(quiet=False)
    fmt = format_from_path(args.output, args.format)
    meta = base_metadata(inputs=list(map(str, args.inputs)), idle_timeout_s=config.idle_timeout_s,
                         active_timeout_s=config.active_timeout_s)
    stats: list = []
    t0 = time.perf_counter()
    try:
        sink = TableSink(args.output, FLOW_SCHEMA, fmt, meta)
    except (ValueError, OSError) as exc:
        raise UsageError(f"{args.output}: {exc}") from None
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
