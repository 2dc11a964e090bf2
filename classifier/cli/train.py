"""``vpnid train``: labeled flows or captures -> a calibrated model file (skops) with its card."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from classifier.cli.common import add_host_capture_option, add_snaplen_option
    from classifier.model.train import CANDIDATES

    p = sub.add_parser(
        "train", help="train the VPN / non-VPN model on labeled flows or captures",
        description="Train a class-balanced, probability-calibrated model on labeled input: flow Parquet "
                    "files with a 'label' column (1/0 or vpn/non-vpn; optional 'protocol'), or captures "
                    "plus a manifest (MANIFEST.csv beside them, or --manifest). Writes the model with "
                    "skops and a model card (NAME.card.json, NAME.card.md) beside it. See docs/model.md.")
    p.add_argument("inputs", nargs="+", metavar="LABELED",
                   help="flow Parquet files, capture files or directories, or manifest CSV files (all the captures "
                        "they list)")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.skops", help="model file to write")
    p.add_argument("--manifest", metavar="CSV", help="manifest labelling the captures: the lab's MANIFEST.csv, or "
                                                     "a CSV of file,vpn[,protocol,server_port,group] (default: "
                                                     "MANIFEST.csv beside them)")
    p.add_argument("--augment", type=int, default=0, metavar="N",
                   help="augmented copies per capture: packet loss, jitter, flows cut mid-way (default 0)")
    add_snaplen_option(p, "meter every capture and copy as if captured with a snapshot length drawn from these, "
                          "to train a model for headers-only captures")
    add_host_capture_option(p, "meter every capture and copy as if made on one of its hosts, to train a model for "
                               "such captures")
    p.add_argument("--candidates", default="rf,hgb", metavar="LIST",
                   help=f"estimators to compare, best kept, ties to the first (from {','.join(CANDIDATES)}; "
                        "default rf,hgb)")
    p.add_argument("--fpr-target", type=float, default=0.001, metavar="F",
                   help="false-positive rate the threshold is chosen for (default 0.001)")
    p.add_argument("--calibration", choices=("sigmoid", "isotonic"), default="isotonic",
                   help="probability calibration on out-of-fold scores (default isotonic)")
    p.add_argument("--min-tunnel-packets", type=int, default=0, metavar="N",
                   help="leave VPN flows of fewer than N packets out of training (handshake-only and "
                        "control flows; evaluation still counts them; default 0)")
    p.add_argument("--min-one-way-packets", type=int, default=0, metavar="N",
                   help="leave VPN flows that went one way only and have fewer than N packets out of training "
                        "(a lone unanswered initiation looks like a scanner's probe; evaluation still counts "
                        "them; default 0)")
    p.add_argument("--skip-cleartext-tunnels", action="store_true",
                   help="leave VPN flows whose inner IP headers are readable (L2TP data without IPsec) out "
                        "of training, for training sets whose features cannot tell them from 6in4, Teredo or "
                        "VXLAN, which are not VPNs (evaluation still counts them; the PPP-framing feature "
                        "tells them apart, so the shipped recipe keeps them)")
    p.add_argument("--folds", type=int, default=5,
                   help="capture-grouped folds (default 5); 0: one fold per scenario or capture "
                        "(leave one group out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="fit N cross-validation folds at once, one process each (default 1; the model is "
                        "the same)")
    p.add_argument("--name", help="model name (default: the output file's stem)")
    p.add_argument("--model-version", default="1", help="model version string for the card (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from classifier.cli.common import host_capture_ns
    from classifier.errors import ErrorLog, UsageError
    from classifier.model.train import CANDIDATES, TrainConfig
    from classifier.model.workflow import train_model

    cands = tuple(c.strip() for c in args.candidates.split(",") if c.strip())
    bad = [c for c in cands if c not in CANDIDATES]
    if bad or not cands:
        raise UsageError(f"--candidates: unknown estimator(s) {', '.join(bad) or '(none)'}; "
                         f"choose from {', '.join(CANDIDATES)}")
    if not 0 <= args.fpr_target < 1:
        raise UsageError("--fpr-target must be in [0, 1)")
    if args.min_tunnel_packets < 0 or args.min_one_way_packets < 0:
        raise UsageError("--min-tunnel-packets and --min-one-way-packets must be >= 0")
    if args.jobs < 1:
        raise UsageError("--jobs must be >= 1")
    if args.augment < 0 or args.folds < 0 or args.folds == 1:
        raise UsageError("--augment must be >= 0 and --folds 0 (leave one group out) or >= 2")
    out = Path(args.output)
    config = TrainConfig(candidates=cands, folds=args.folds, fpr_target=args.fpr_target,
                         calibration=args.calibration, seed=args.seed,
                         min_tunnel_packets=args.min_tunnel_packets,
                         min_one_way_tunnel_packets=args.min_one_way_packets,
                         skip_cleartext_tunnels=args.skip_cleartext_tunnels,
                         name=args.name or out.name.split(".")[0], version=args.model_version)
    log = ErrorLog(quiet=False)
    say = (lambda m: None) if args.quiet else (lambda m: print(f"vpnid train: {m}", file=sys.stderr))
    train_model(args.inputs, out, config, manifest=args.manifest, augment=args.augment, log=log, say=say,
                jobs=args.jobs, snaplens=args.snaplen, coalesce_ns=host_capture_ns(args))
    return log.exit_status
