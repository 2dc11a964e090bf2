"""``vpnid evaluate``: a model on labeled input -> metrics JSON and plots (grouped CV, leave-one-protocol-out)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from classifier.cli.common import add_endpoint_option, add_host_capture_option, add_snaplen_option

    p = sub.add_parser(
        "evaluate", help="measure a model: held-out metrics, capture-grouped CV, leave-one-protocol-out",
        description="Score MODEL on labeled input (as for `vpnid train`) and retrain its recipe with "
                    "cross-validation grouped by capture and with each VPN protocol left out in turn. "
                    "Writes metrics.json, roc.png, confusion.png and protocol_recall.png.")
    p.add_argument("model", metavar="MODEL", help="model file (.skops), or a shipped model by name: 'default', "
                                                  "'headers-only' or 'host-capture'")
    p.add_argument("inputs", nargs="+", metavar="LABELED",
                   help="flow Parquet files, capture files or directories, or manifest CSV files (all the captures "
                        "they list)")
    p.add_argument("-o", "--output", default="out/evaluate", metavar="DIR",
                   help="directory for metrics.json and the plots (default out/evaluate)")
    p.add_argument("--manifest", metavar="CSV", help="manifest labelling the captures: the lab's MANIFEST.csv, "
                   "or a CSV of file,vpn[,protocol,server_port,group]")
    p.add_argument("--folds", type=int, default=5,
                   help="capture-grouped folds of the retrained views (default 5; 0: leave one scenario or "
                        "capture out); each retraining keeps the model's own inner folds")
    p.add_argument("--augment", type=int, default=0, metavar="N",
                   help="augmented copies per capture, as for `vpnid train` (default 0); copies stay in "
                        "their capture's fold")
    add_snaplen_option(p, "score the captures as if captured with these snapshot lengths, as headers-only "
                          "captures are")
    add_host_capture_option(p, "score the captures as if made on one of their hosts")
    p.add_argument("--no-cv", action="store_true", help="skip grouped cross-validation")
    p.add_argument("--no-lopo", action="store_true", help="skip leave-one-protocol-out")
    p.add_argument("--signatures", action="store_true",
                   help="also score the labelling `vpnid classify` gives (signatures first, then the model "
                        "for the flows they leave); needs captures, not flow tables")
    add_endpoint_option(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from classifier.cli.common import host_capture_ns
    from classifier.errors import ErrorLog, UsageError
    from classifier.model import load_model
    from classifier.model.data import load_labeled
    from classifier.model.evaluate import evaluate, write_report

    if args.folds < 0 or args.folds == 1 or args.augment < 0:
        raise UsageError("--folds must be 0 (leave one group out) or >= 2, and --augment >= 0")
    model = load_model(args.model)
    log = ErrorLog(quiet=False)
    say = (lambda m: None) if args.quiet else (lambda m: print(f"vpnid evaluate: {m}", file=sys.stderr))
    data = load_labeled(args.inputs, manifest=args.manifest, augment=args.augment, log=log, say=say,
                        signatures=args.signatures, snaplens=args.snaplen,
                        coalesce_ns=host_capture_ns(args))
    say(f"{len(data)} labeled flows ({int(data.label.sum())} VPN) "
        f"from {data.capture_count()} captures in {len(set(data.group))} groups")
    report, curves = evaluate(model, data, folds=args.folds, cv=not args.no_cv, lopo=not args.no_lopo,
                              endpoint_context=not args.no_endpoint_context, say=say)
    written = write_report(report, curves, args.output)
    for line in summary_lines(report, model.label, model.threshold):
        print(line)
    if not args.quiet:
        print(f"vpnid evaluate: wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return log.exit_status


def summary_lines(report: dict, label: str, threshold: float) -> list[str]:
    """The terminal summary of an evaluation: each view's scores, then where its errors are."""
    h = report["holdout"]
    lines = [f"model {label}: precision {h['precision']:.4f}  recall {h['recall']:.4f}  F1 {h['f1']:.4f}  "
             f"ROC-AUC {h['roc_auc']:.4f}  FPR {h['fpr']:.5f} at threshold {threshold:.4f}"]
    for key in ("pipeline", "grouped_cv", "leave_one_protocol_out"):
        v = report.get(key, {})
        if "recall" in v:
            lines.append(f"{key}: precision {v['precision']:.4f}  recall {v['recall']:.4f}  F1 {v['f1']:.4f}  "
                         f"ROC-AUC {v['roc_auc']:.4f}  FPR {v['fpr']:.5f}")
    for key in ("holdout", "pipeline"):
        v = report.get(key, {})
        ec = v.get("endpoint_context", {})
        if ec.get("applied"):
            encrypted = (f"; of them by the fully-encrypted rule {ec['found_fully_encrypted']} found, "
                         f"{ec['false_alarms_fully_encrypted']} false alarms" if ec.get("fully_encrypted_rule") else "")
            lines.append(f"{key} endpoint context: {ec['found']} VPN flows found, {ec['false_alarms']} false alarms"
                         f"{encrypted} (each flow on its own: recall {ec['recall_per_flow']:.4f}  "
                         f"FPR {ec['fpr_per_flow']:.5f})")
        split = v.get("by_training")
        if split and split["not_trained_on"]["flows"]:
            seen, other = split["trained_on"], split["not_trained_on"]
            lines.append(f"{key} protocols the model trained on: {seen['found']} of {seen['flows']} VPN flows found"
                         + (f" (recall {seen['recall']:.4f})" if seen["flows"] else "")
                         + f"; others ({', '.join(other['protocols'])}): {other['found']} of {other['flows']}")
        if v.get("per_protocol"):
            lines.append(f"{key} found per protocol: " + ", ".join(
                f"{name} {r['found']}/{r['flows']}" for name, r in v["per_protocol"].items()))
        for field, what, wrong, of in (("false_positive_captures", "false alarms", "false_positives",
                                        "non_vpn_flows"), ("missed_captures", "missed", "missed", "vpn_flows")):
            if v.get(field):
                lines.append(f"{key} {what} in: " + ", ".join(
                    f"{Path(g['capture']).name} ({g[wrong]} of {g[of]})" for g in v[field][:5]))
    for key in ("holdout", "pipeline", "grouped_cv", "leave_one_protocol_out"):
        rows = report.get(key, {}).get("tradeoff")
        if rows:
            lines.append(f"{key} trade-off: " + "  ".join(
                f"{r['threshold']:g}: recall {r['recall']:.3f} FPR {r['fpr']:.4f}" for r in rows))
    return lines
