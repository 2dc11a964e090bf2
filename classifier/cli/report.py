"""``vpnid report INPUT... --registry FILE -o DIR``: which VPN use is not registered?

Captures go through the same pipeline as ``vpnid classify`` (signatures, then the model
for flows no signature claims, then the registered-IP check), batch by batch; the report
directory gets flows.parquet, vpn_use.parquet, unregistered.parquet, for_review.parquet,
summary.json and report.html (classifier.report), and the terminal a short summary.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from classifier.cli.common import add_endpoint_option, add_input_options, add_model_options
    from classifier.report.review import DEFAULT_FLOOR

    p = sub.add_parser(
        "report", help="find unregistered VPN use: Parquet, JSON, HTML and a terminal summary",
        description="Classify the flows of the captures, check VPN flows against the registered-IP list "
                    "and write a report directory: flows.parquet, vpn_use.parquet, unregistered.parquet, "
                    "for_review.parquet, summary.json and report.html (see docs/registry.md).")
    add_input_options(p)
    p.add_argument("--registry", required=True, metavar="FILE",
                   help="registered-IP list, CSV or Parquet (columns: ip,organization,registration_id,category,"
                        "valid_from,valid_until)")
    p.add_argument("--strict", action="store_true",
                   help="stop on any invalid registry row (default: skip it with a warning)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="report directory (created if needed)")
    add_model_options(p)
    add_endpoint_option(p)
    p.add_argument("--review-floor", type=float, default=DEFAULT_FLOOR, metavar="P",
                   help="list flows the model scored at P(VPN) >= P but under its threshold in for_review.parquet "
                        f"and the page's review section, apart from the findings (default {DEFAULT_FLOOR:g}; "
                        "1 lists none)")
    p.add_argument("--partition-by", choices=("date",),
                   help="write flows as a dataset DIR/flows/date=YYYY-MM-DD/ instead of DIR/flows.parquet")
    p.add_argument("--anonymize", metavar="KEY",
                   help="pseudonymize IP addresses in every output (Crypto-PAn, prefix-preserving); KEY is a "
                        "passphrase, hex:<64 hex digits>, or @FILE")
    p.add_argument("--top", type=int, default=20, metavar="N",
                   help="clients, servers and findings listed in the summary and the page (default 20)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from classifier.cli.common import apply_threshold, flow_config, load_model_option
    from classifier.errors import ErrorLog, UsageError, VpnidError
    from classifier.flows.api import expand_inputs, iter_flow_batches
    from classifier.pipeline import LabelOptions, endpoint_stage, label_batch
    from classifier.registry import Registry
    from classifier.report import ReportBuilder, ReportContext
    from classifier.report.progress import ByteProgress

    if args.top < 1:
        raise UsageError("--top must be at least 1")
    if not 0.0 < args.review_floor <= 1.0:
        raise UsageError(f"--review-floor must be above 0 and at most 1, not {args.review_floor:g}")
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"-o {out_dir}: exists and is not a directory")
    config = flow_config(args)
    log = ErrorLog()
    notes = ErrorLog(quiet=args.quiet)  # warnings (skipped registry rows, model fallback): not errors

    anonymizer = None
    if args.anonymize is not None:
        from classifier.anonymize import Anonymizer

        anonymizer = Anonymizer.from_spec(args.anonymize)
    registry = Registry.load(args.registry, strict=args.strict, log=notes)
    model = apply_threshold(load_model_option(args.model, args.no_model, notes.warn), args.threshold)
    options = LabelOptions(signatures=True, model=model, registry=registry,
                           endpoint_context=not args.no_endpoint_context)

    files = expand_inputs(args.inputs, log)
    if not files:
        raise VpnidError("no capture to read (see the errors above)")
    context = ReportContext(
        inputs=[str(x) for x in args.inputs], registry=registry.describe(),
        model=getattr(model, "label", None) if model is not None else None,
        model_version=getattr(model, "version", None) if model is not None else None,
        anonymized=anonymizer is not None, top=args.top, review_floor=args.review_floor,
    )
    try:
        builder = ReportBuilder(out_dir, context, partition_by=args.partition_by, anonymizer=anonymizer)
    except OSError as exc:
        raise UsageError(f"-o {out_dir}: cannot write the report ({exc.strerror or exc})") from None
    try:
        with ByteProgress(files, enabled=not args.quiet) as bar:
            labelled = (label_batch(batch, options)
                        for batch in iter_flow_batches(files, config=config, log=log, on_progress=bar.advance))
            for table in endpoint_stage(labelled, options):
                builder.add(table)
    except BaseException:
        builder.abort()
        raise
    context.errors = [str(p) for p in log.problems]
    result = builder.finish()
    if not args.quiet:
        from classifier.report.terminal import print_summary

        print_summary(result.summary, top=min(args.top, 10))
    return log.exit_status
