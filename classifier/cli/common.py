"""Options and helpers shared by the subcommands that read captures."""

from __future__ import annotations

import argparse

from classifier.errors import UsageError
from classifier.flows.config import FlowConfig


def add_input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="pcap/pcapng files (optionally .gz), directories or glob patterns")
    p.add_argument("--idle-timeout", type=float, default=120.0, metavar="S",
                   help="end a flow after this many seconds without packets (default 120)")
    p.add_argument("--active-timeout", type=float, default=1800.0, metavar="S",
                   help="end a flow this many seconds after its first packet (default 1800)")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only")


def flow_config(args: argparse.Namespace) -> FlowConfig:
    try:
        return FlowConfig(idle_timeout_s=args.idle_timeout, active_timeout_s=args.active_timeout)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
