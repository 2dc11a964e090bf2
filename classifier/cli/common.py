"""Options and helpers shared by the subcommands that read captures."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

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


def add_output_options(p: argparse.ArgumentParser) -> None:
    """``-o OUT`` and ``--format`` of the commands that write one flow table."""
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (.parquet, .csv, .jsonl; '-' for standard output with csv/jsonl)")
    p.add_argument("--format", choices=("parquet", "csv", "jsonl"), help="default: from the file name")


def open_output(args: argparse.Namespace, schema, metadata: dict[str, Any]):
    """The ``TableSink`` for ``-o``/``--format``; a bad path or format is a usage error, not a traceback."""
    from classifier.output import TableSink, format_from_path

    fmt = format_from_path(args.output, args.format)
    try:
        return TableSink(args.output, schema, fmt, metadata)
    except (ValueError, OSError) as exc:
        raise UsageError(f"{args.output}: {exc}") from None


def flow_config(args: argparse.Namespace) -> FlowConfig:
    try:
        return FlowConfig(idle_timeout_s=args.idle_timeout, active_timeout_s=args.active_timeout)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="FILE", help="model file, or a shipped model by name: 'default', "
                                                 "'headers-only' (captures cut to a short snapshot length) or "
                                                 "'host-capture' (captures made on one of the connection's "
                                                 "hosts; default: the shipped default model, when present)")
    p.add_argument("--no-model", action="store_true", help="signatures only")
    p.add_argument("--threshold", type=float, metavar="P",
                   help="call a flow VPN when the model's P(VPN) >= P (default: the model's own threshold, "
                        "chosen for a very low false-positive rate; see docs/model.md)")


def add_endpoint_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-endpoint-context", action="store_true",
                   help="judge every flow on its own: do not call the rest of an endpoint's flows VPN when the "
                        "model called most of them VPN or, with the signatures on, most of them are fully "
                        "encrypted both ways (docs/model.md, Endpoint context)")


#: Smallest snapshot length ``--snaplen`` accepts: Ethernet, IPv4 and TCP headers without options.
MIN_SNAPLEN = 54


def snaplen_list(text: str) -> tuple[int, ...]:
    """``--snaplen``: one or more comma-separated snapshot lengths, each at least MIN_SNAPLEN bytes."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not values or min(values) < MIN_SNAPLEN:
        raise argparse.ArgumentTypeError(f"each snapshot length must be at least {MIN_SNAPLEN} bytes "
                                         f"(the headers a flow needs): {text!r}")
    return values


def add_snaplen_option(p: argparse.ArgumentParser, what: str) -> None:
    """``--snaplen N[,N...]`` for ``train`` and ``evaluate``: captures read as headers-only captures."""
    p.add_argument("--snaplen", metavar="N[,N...]", type=snaplen_list, default=(),
                   help=f"{what} (bytes per frame, each at least {MIN_SNAPLEN}; one drawn per capture and copy; "
                        "docs/model.md, Headers-only captures); default: whole frames")


def add_host_capture_option(p: argparse.ArgumentParser, what: str) -> None:
    """``--host-capture`` for ``train`` and ``evaluate``: captures read as made on one of their hosts."""
    p.add_argument("--host-capture", action="store_true",
                   help=f"{what}: TCP segments merged into the super-packets of up to 64 KB that a host's "
                        "segmentation and receive offloads show (docs/model.md, Captures made on a host)")


def host_capture_ns(args: argparse.Namespace) -> int:
    """The merge window ``--host-capture`` asks for, ns (0: captures read as they are)."""
    from classifier.model.coalesce import DEFAULT_GAP_NS

    return DEFAULT_GAP_NS if args.host_capture else 0


def apply_threshold(model: Any, threshold: float | None) -> Any:
    """Override the model's operating threshold (``--threshold``), checking its range."""
    from classifier.errors import UsageError

    if threshold is None:
        return model
    if not 0.0 < threshold <= 1.0:
        raise UsageError(f"--threshold must be in (0, 1], got {threshold}")
    if model is None:
        raise UsageError("--threshold needs a model (drop --no-model)")
    model.threshold = float(threshold)
    return model


def load_model_option(path: str | None, disabled: bool, warn: Callable[[str, str], None]) -> Any:
    """The model a command uses: ``--model FILE``, else the shipped model when there is one.

    One rule for classify, report and live: an explicit ``--model`` that cannot be
    loaded is an error; a missing or unusable shipped model falls back to signatures
    only, with a warning that says so.
    """
    from classifier.errors import UsageError, VpnidError

    if disabled:
        if path:
            raise UsageError("--model and --no-model exclude each other")
        return None
    try:
        from classifier.model import default_model_path, load_model
    except ImportError:
        if path:
            raise UsageError("--model: this vpnid has no model support") from None
        return None
    if path is None and not default_model_path().exists():
        warn(str(default_model_path()), "no shipped model found; classifying with signatures only")
        return None
    try:
        return load_model(path)
    except (VpnidError, OSError, ValueError) as exc:
        if path:
            raise UsageError(f"--model {path}: {exc}") from None
        warn(str(default_model_path()), f"shipped model unusable ({exc}); classifying with signatures only")
        return None
