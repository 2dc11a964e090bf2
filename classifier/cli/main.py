"""``vpnid`` entry point.

Each subcommand lives in its own module ``classifier/cli/<name>.py`` exposing
``register(subparsers)``; that function adds a parser and sets ``func`` to a
``run(args) -> int`` callable. Modules import heavy libraries inside ``run`` so that
``vpnid --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from classifier._version import __version__
from classifier.errors import VpnidError

SUBCOMMANDS = ("flows", "classify", "report", "train", "evaluate", "batch", "live", "lab")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpnid",
        description="Find VPN tunnels in captured or mirrored traffic.",
    )
    parser.add_argument("--version", action="version", version=f"vpnid {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"classifier.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"classifier.cli.{name}":
                continue  # subcommand not part of this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except VpnidError as exc:
        print(f"vpnid: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vpnid: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        if args.debug or os.environ.get("VPNID_DEBUG"):
            raise
        print(f"vpnid: internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
