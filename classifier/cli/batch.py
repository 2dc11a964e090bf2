"""``vpnid batch``: many captures -> one Parquet dataset, locally or on a Dask cluster."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from classifier.cli.common import add_input_options

    p = sub.add_parser(
        "batch", help="classify many captures into one Parquet dataset (process pool or Dask cluster)",
        description="Classify many captures (e.g. rotated mirror files) into one Parquet dataset directory, "
                    "with the columns of `vpnid classify`. Flows crossing file boundaries are merged. "
                    "Reruns skip inputs that are done and unchanged. See docs/scale.md.")
    add_input_options(p)
    p.add_argument("-o", "--output", required=True, metavar="DATASET", help="dataset directory")
    p.add_argument("--registry", metavar="FILE", help="registered-IP list (CSV or Parquet) to check endpoints")
    p.add_argument("--scheduler", default="local", metavar="local|tcp://HOST:8786",
                   help="'local' (default): a process pool on this machine; or a Dask scheduler address")
    p.add_argument("--workers", type=int, metavar="N",
                   help="local: pool size (default: CPU count); cluster: wait for N workers")
    p.add_argument("--model", metavar="FILE", help="model file, or a shipped model by name: 'default', "
                                                 "'headers-only' or 'host-capture' (default: the shipped default "
                                                 "model, if present)")
    p.add_argument("--no-model", action="store_true", help="signatures only")
    p.add_argument("--no-signatures", action="store_true", help="model only")
    p.add_argument("--no-endpoint-context", action="store_true",
                   help="judge every flow on its own, not with the run's other flows of its client to the same "
                        "server port (docs/model.md, Endpoint context)")
    p.add_argument("--clean-work", action="store_true",
                   help="remove cached per-input results after a successful run (a later rerun starts over)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from classifier.batch import BatchOptions, LabelSpec, run_batch
    from classifier.cli.common import flow_config
    from classifier.errors import ErrorLog, UsageError

    sched = args.scheduler or "local"
    if sched not in ("local", "inline") and "://" not in sched:
        raise UsageError(f"--scheduler: expected 'local' or an address like tcp://HOST:8786, got {sched!r}")
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    model_path = None
    if args.model and args.no_model:
        raise UsageError("--model and --no-model exclude each other")
    if args.model:
        from classifier.model.model import model_path as resolve_model

        chosen = resolve_model(args.model)
        if not chosen.is_file():
            raise UsageError(f"--model {args.model}: no such file")
        model_path = str(chosen.resolve())
    elif not args.no_model:
        from classifier.model import default_model_path

        default = default_model_path()
        model_path = str(default) if default.is_file() else None
    if args.registry and not Path(args.registry).is_file():
        raise UsageError(f"--registry {args.registry}: no such file")
    opts = BatchOptions(
        inputs=list(args.inputs), output=args.output, config=flow_config(args),
        spec=LabelSpec(signatures=not args.no_signatures, model_path=model_path,
                       endpoint_context=not args.no_endpoint_context),
        registry=args.registry, scheduler=args.scheduler, workers=args.workers, quiet=args.quiet,
        clean_work=args.clean_work)
    log = ErrorLog(quiet=False)
    summary = run_batch(opts, log)
    return summary.exit_status
