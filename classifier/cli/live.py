"""``vpnid live --interface IFACE -o DIR``: classify mirrored traffic as it passes.

Alerts (JSON lines) go to standard output or ``--alerts FILE``; ended flows go to
rotating Parquet files in DIR; SIGINT/SIGTERM end every open flow, write it and close
the files (exit status 0). See docs/live.md.
"""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from classifier.errors import ErrorLog
    from classifier.model import VpnModel

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``300``, ``300s``, ``5m``, ``1h``, ``1d`` -> seconds (for ``--rotate``, ``--duration``)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration such as 30s, 5m or 1h")
    return float(m.group(1)) * _UNITS[m.group(2)]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "live", help="classify traffic from a network interface (a mirror port) as it passes",
        description="Capture from an interface with AF_PACKET, build flows with the offline engine and "
                    "timeouts, alert on VPN flows as soon as a signature or the model is confident, and "
                    "write ended flows to rotating Parquet files. SIGINT/SIGTERM flush and exit 0.")
    p.add_argument("-i", "--interface", required=True, metavar="IFACE", help="interface to capture from")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="directory of the Parquet files")
    p.add_argument("--alerts", metavar="FILE", help="append alert JSON lines to FILE (default: standard output)")
    p.add_argument("--registry", metavar="FILE", help="registered-IP list (CSV or Parquet): alerts and flows "
                                                      "say whether a VPN endpoint is registered")
    p.add_argument("--bpf", metavar="FILTER", help="capture filter in tcpdump syntax, run in the kernel")
    p.add_argument("--rotate", type=parse_duration, default=300.0, metavar="DURATION",
                   help="start a new Parquet file this often: 30s, 5m, 1h (default 5m)")
    p.add_argument("--idle-timeout", type=float, default=120.0, metavar="S",
                   help="end a flow after this many seconds without packets (default 120, as offline)")
    p.add_argument("--active-timeout", type=float, default=1800.0, metavar="S",
                   help="end a flow this many seconds after its first packet (default 1800, as offline)")
    models = p.add_mutually_exclusive_group()
    models.add_argument("--model", metavar="FILE", help="model file (default: the shipped model, when present)")
    models.add_argument("--no-model", action="store_true", help="signatures only")
    p.add_argument("--no-endpoint-context", action="store_true",
                   help="judge every ended flow on its own, not with the earlier flows of its client to the same "
                        "server port (docs/model.md, Endpoint context)")
    tuning = p.add_argument_group("capture tuning")
    tuning.add_argument("--snaplen", type=int, default=262144, metavar="BYTES",
                        help="bytes kept per frame (default 262144: all; 128 is enough for flows and "
                             "signatures but counts packets as truncated)")
    tuning.add_argument("--capture", choices=("auto", "ring", "socket"), default="auto",
                        help="TPACKET_V3 ring (auto falls back to a plain socket when the kernel refuses one)")
    tuning.add_argument("--buffer-mb", type=int, default=64, metavar="MB",
                        help="kernel ring / socket buffer size (default 64)")
    tuning.add_argument("--batch-ms", type=int, default=20, metavar="MS",
                        help="hand a partly filled ring block over after this long (default 20)")
    tuning.add_argument("--no-promisc", action="store_true", help="do not put the interface in promiscuous mode")
    tuning.add_argument("--no-early", action="store_true",
                        help="label flows only when they end (no alerts for flows still running)")
    tuning.add_argument("--stats-interval", type=parse_duration, default=60.0, metavar="DURATION",
                        help="log a progress line this often (default 1m)")
    tuning.add_argument("--duration", type=parse_duration, metavar="DURATION",
                        help="stop by itself after this long (default: run until SIGINT/SIGTERM)")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    p.set_defaults(func=run)


def _warn_short_snaplen(snaplen: int, model: VpnModel | None, notes: ErrorLog) -> None:
    """``--snaplen`` too short for the payload statistics, with a model trained on whole frames: say so.

    A live capture does not go through the file reader's count of cut payloads, so the
    sensor judges the snapshot length it was given: an IPv4 TCP segment with timestamps
    (14 + 20 + 32 bytes of headers) must keep CUT_HEAD_BYTES of payload.
    """
    from classifier.packets.capture import CUT_HEAD_BYTES

    ethernet_ipv4_tcp_timestamps = 14 + 20 + 32
    short = snaplen < ethernet_ipv4_tcp_timestamps + CUT_HEAD_BYTES
    whole_frames = model is not None and not ((model.card or {}).get("training_data") or {}).get("snaplen")
    if short and whole_frames:
        notes.warn(f"--snaplen {snaplen}", f"TCP segments keep fewer than {CUT_HEAD_BYTES} payload bytes: payload "
                                           "statistics are partial, signatures and this model find fewer tunnels; "
                                           "use --model headers-only (docs/model.md, Headers-only captures)")


def run(args: argparse.Namespace) -> int:
    import signal
    from pathlib import Path

    from classifier.cli.common import flow_config, load_model_option
    from classifier.errors import ErrorLog, UsageError
    from classifier.live.capture import CaptureOptions
    from classifier.live.sensor import LiveOptions, Sensor
    from classifier.pipeline import LabelOptions

    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"-o {out_dir}: exists and is not a directory")
    if not 64 <= args.snaplen <= 262144:
        raise UsageError("--snaplen must be between 64 and 262144")
    if args.buffer_mb < 1 or args.batch_ms < 1:
        raise UsageError("--buffer-mb and --batch-ms must be positive")
    config = flow_config(args)
    notes = ErrorLog(quiet=args.quiet)
    registry = None
    if args.registry:
        from classifier.registry import Registry

        registry = Registry.load(args.registry, log=notes)
    model = load_model_option(args.model, args.no_model, notes.warn)
    _warn_short_snaplen(args.snaplen, model, notes)
    label = LabelOptions(signatures=True, model=model, registry=registry,
                         endpoint_context=not args.no_endpoint_context)
    capture = CaptureOptions(interface=args.interface, bpf=args.bpf, snaplen=args.snaplen,
                             promisc=not args.no_promisc, method=args.capture, buffer_mb=args.buffer_mb,
                             batch_ms=args.batch_ms)
    extra = {"model": getattr(model, "name", None), "model_version": getattr(model, "version", None),
             "registry": args.registry}
    opts = LiveOptions(capture=capture, out_dir=out_dir, alerts=args.alerts, rotate_s=args.rotate,
                       config=config, label=label, early=not args.no_early, stats_s=args.stats_interval,
                       duration_s=args.duration, quiet=args.quiet, extra_metadata=extra)
    sensor = Sensor(opts)
    previous = {sig: signal.signal(sig, sensor.stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        totals = sensor.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if totals.error else 0
