"""``run_batch``: many captures -> one Parquet dataset, on a process pool or a Dask cluster.

The steps, and where they run (docs/scale.md):

1. per input, on a worker: read, meter, label the flows that finished in the file,
   keep raw state of the boundary flows (``classifier.batch.work``);
2. on the client, as results arrive: cache them in the work area, update the manifest;
3. on the client, in file time order: stitch boundary flows across files
   (``classifier.batch.stitch``), finalize and label the merged ones;
4. on the client: write one partition per input (flows that began in it), sorted by
   first packet, into a staging area, then move them into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TextIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from classifier._version import __version__
from classifier.batch.executor import make_executor
from classifier.batch.manifest import Manifest, file_stat, settings_key
from classifier.batch.stitch import FileEdges, Stitcher
from classifier.batch.work import FileResult, LabelSpec, process_file
from classifier.errors import ErrorLog, UsageError
from classifier.flows.config import FlowConfig
from classifier.flows.schema import CLASSIFY_SCHEMA, REGISTRY_FIELDS

#: Rows per Parquet row group: fixed, so the same flows always give the same bytes.
ROW_GROUP_ROWS = 65536
PART_PREFIX = "part-"


@dataclass
class BatchOptions:
    """Everything ``vpnid batch`` was asked to do."""

    inputs: list[str]
    output: str
    config: FlowConfig = field(default_factory=FlowConfig)
    spec: LabelSpec = field(default_factory=LabelSpec)
    registry: str | None = None
    scheduler: str | None = None
    workers: int | None = None
    quiet: bool = False
    clean_work: bool = False


@dataclass
class BatchSummary:
    """What a run did, for the terminal and the tests."""

    inputs: int = 0
    processed: int = 0
    cached: int = 0
    failed: int = 0
    flows: int = 0
    packets: int = 0
    merges: int = 0
    partitions: int = 0
    written: bool = False
    seconds: float = 0.0
    problems: int = 0
    write_seconds: float = 0.0  # client: stitching across files and writing the partitions

    @property
    def exit_status(self) -> int:
        return 1 if (self.failed or self.problems) else 0


def _settings(opts: BatchOptions) -> dict:
    spec = opts.spec
    model = None
    if spec.model_path:
        p = Path(spec.model_path)
        model = {"path": str(p.resolve()), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    c = opts.config
    return {"vpnid": __version__, "idle_timeout_s": c.idle_timeout_s, "active_timeout_s": c.active_timeout_s,
            "close_linger_s": c.close_linger_s, "sweep_interval_s": c.sweep_interval_s,
            "signatures": spec.signatures, "model": model}


def _say(out: TextIO, quiet: bool, text: str) -> None:
    if not quiet:
        print(f"vpnid batch: {text}", file=out, flush=True)


def run_batch(opts: BatchOptions, log: ErrorLog | None = None, out: TextIO | None = None) -> BatchSummary:
    """Bring the dataset ``opts.output`` up to date with ``opts.inputs``."""
    out = out if out is not None else sys.stderr
    from classifier.flows.api import expand_inputs

    t0 = time.perf_counter()
    log = log if log is not None else ErrorLog()
    summary = BatchSummary()
    root = Path(opts.output)
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root}: exists and is not a directory (the dataset is a directory)")
    paths = []
    for p in expand_inputs(opts.inputs, log):
        ap = os.path.abspath(p)
        if ap not in paths:
            paths.append(ap)
    if not paths:
        raise UsageError("no input capture found")
    summary.inputs = len(paths)
    root.mkdir(parents=True, exist_ok=True)

    manifest = Manifest.load(root)
    settings = _settings(opts)
    skey = settings_key(settings)
    if manifest.settings != settings:
        manifest.inputs.clear()  # other engine or labelling settings: every result is stale
        manifest.settings = settings
    for stale in set(manifest.inputs) - set(paths):
        del manifest.inputs[stale]

    todo: list[str] = []
    from classifier.batch.manifest import InputEntry

    for p in paths:
        try:
            size, mtime = file_stat(p)
        except OSError as exc:
            log.add(p, None, f"cannot read: {exc.strerror or exc}")
            continue
        e = manifest.inputs.get(p)
        if e is not None and e.status == "done" and e.size == size and e.mtime_ns == mtime \
                and manifest.has_result(e):
            summary.cached += 1
            continue
        manifest.inputs[p] = InputEntry(p, size, mtime)
        todo.append(p)
    manifest.save()

    executor = make_executor(opts.scheduler, opts.workers) if todo else None
    if executor is not None:
        _say(out, opts.quiet, f"{len(paths)} input(s): {len(todo)} to process, {summary.cached} unchanged; "
                              f"running on {executor.description}")
        if executor.dashboard_link:
            _say(out, opts.quiet, f"Dask dashboard: {executor.dashboard_link}")
    try:
        if executor is not None:
            tasks = [(p, (p, opts.config, opts.spec)) for p in todo]
            for n, (path, res, exc) in enumerate(executor.run(process_file, tasks), start=1):
                entry = manifest.inputs[path]
                if exc is not None:
                    entry.status, entry.error = "failed", f"{type(exc).__name__}: {exc}"
                    summary.failed += 1
                    log.add(path, None, f"failed: {entry.error}")
                else:
                    _record(manifest, entry, res, skey)
                    for ppath, offset, message in res.problems:
                        log.add(ppath, offset, message)
                    summary.processed += 1
                    summary.packets += res.packets
                    _say(out, opts.quiet, f"[{n}/{len(todo)}] {path}: {res.packets:,} packets, "
                                          f"{res.table.num_rows:,} flows, {res.seconds:.2f} s")
                manifest.save()
    finally:
        if executor is not None:
            executor.close()

    for e in manifest.inputs.values():  # problems of cached inputs count toward the exit status too
        for path, offset, message in e.problems:
            if e.path not in todo:
                log.add(path, offset, message)
    summary.problems = len(log.problems) - summary.failed
    done = [manifest.inputs[p] for p in paths if p in manifest.inputs and manifest.inputs[p].status == "done"]
    t_write = time.perf_counter()
    _write_dataset(manifest, done, opts, summary, out)
    summary.write_seconds = time.perf_counter() - t_write
    manifest.prune()
    if opts.clean_work and not summary.failed:
        shutil.rmtree(manifest.files_dir, ignore_errors=True)
        for e in manifest.inputs.values():
            e.result, e.status = None, "pending"
        manifest.save()
    summary.seconds = time.perf_counter() - t0
    _say(out, opts.quiet, f"{summary.flows:,} flows ({summary.merges:,} merged across files) in "
                          f"{summary.partitions} partition(s) -> {root}; {summary.processed} processed, "
                          f"{summary.cached} unchanged, {summary.failed} failed, {summary.seconds:.1f} s")
    return summary


def _record(manifest: Manifest, entry, res: FileResult, skey: str) -> None:
    entry.result = manifest.store_result(res, skey)
    entry.digest = res.digest
    entry.status, entry.error = "done", None
    entry.first_ts, entry.last_ts = res.first_ts, res.last_ts
    entry.packets, entry.flows, entry.seconds = res.packets, res.table.num_rows, round(res.seconds, 3)
    entry.problems = [list(p) for p in res.problems]


def _output_key(done: list, manifest: Manifest, registry_digest: str | None) -> str:
    parts = [(e.path, e.digest, e.result) for e in done]
    blob = json.dumps({"inputs": parts, "settings": manifest.settings, "registry": registry_digest},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _time_order(done: list) -> list:
    """Files in capture-time order (empty files last), ties by path."""
    return sorted(done, key=lambda e: (e.first_ts is None, e.first_ts or 0, e.path))


def _write_dataset(manifest: Manifest, done: list, opts: BatchOptions, summary: BatchSummary,
                   out: TextIO) -> None:
    root = manifest.root
    reg_digest = hashlib.sha256(Path(opts.registry).read_bytes()).hexdigest() if opts.registry else None
    files = _time_order(done)
    key = _output_key(files, manifest, reg_digest)
    prev = manifest.output
    if prev.get("state") == "committed" and prev.get("key") == key and \
            all((root / name).exists() for name in prev.get("partitions", [])):
        summary.flows = int(prev.get("flows", 0))
        summary.merges = int(prev.get("merges", 0))
        summary.partitions = len(prev.get("partitions", []))
        _say(out, opts.quiet, "dataset already up to date")
        return

    registry = None
    if opts.registry:
        from classifier.registry import Registry

        registry = Registry.load(opts.registry)

    schema = CLASSIFY_SCHEMA if registry is None else pa.schema(list(CLASSIFY_SCHEMA) + REGISTRY_FIELDS)
    from classifier.output import TableSink, base_metadata

    meta = base_metadata(inputs=[e.path for e in files], idle_timeout_s=opts.config.idle_timeout_s,
                         active_timeout_s=opts.config.active_timeout_s, signatures=opts.spec.signatures,
                         model=manifest.settings.get("model"), registry=reg_digest)
    stage = manifest.stage_dir
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    names: list[str] = []
    offset = 0
    sources = [FileSource(e.path, e.first_ts, e.last_ts, partial(manifest.load_table, e.result),
                          partial(manifest.load_edges, e.result)) for e in files]
    stitched = StitchedPartitions(sources, opts.config, opts.spec)
    for k, table in stitched:
        n = table.num_rows
        offset += n
        if registry is not None:
            table = registry.annotate(table)
        name = f"{PART_PREFIX}{k:05d}.parquet"
        with TableSink(str(stage / name), schema, "parquet", meta) as sink:
            for lo in range(0, n, ROW_GROUP_ROWS):
                sink.write(table.slice(lo, ROW_GROUP_ROWS))
        names.append(name)
    if not names:  # no flows at all: one empty partition keeps the dataset's schema readable
        name = f"{PART_PREFIX}00000.parquet"
        with TableSink(str(stage / name), schema, "parquet", meta):
            pass
        names.append(name)
    summary.merges = stitched.merges
    summary.flows = offset
    summary.partitions = len(names)

    # Commit: record the intent, move partitions into place, drop stale ones, record success.
    manifest.output = {"state": "committing", "key": key, "partitions": names, "flows": offset,
                       "merges": stitched.merges}
    manifest.save()
    for name in names:
        os.replace(stage / name, root / name)
    for p in root.glob(f"{PART_PREFIX}*.parquet"):
        if p.name not in names:
            p.unlink()
    manifest.output["state"] = "committed"
    manifest.save()
    shutil.rmtree(stage, ignore_errors=True)
    summary.written = True


@dataclass
class FileSource:
    """One processed input, its result loaded on demand (partitions are written one at a time)."""

    path: str
    first_ts: int | None
    last_ts: int
    table: Callable[[], pa.Table]
    edges: Callable[[], tuple]


class StitchedPartitions:
    """Yield ``(file index, table)`` per file in time order: the flows that began in the file.

    ``sources`` must already be in time order. Boundary flows are stitched first (only
    the raw boundary rows are held in memory), then each file's labelled table is
    loaded, its replaced rows dropped, its stitched rows added, rows sorted by first
    packet, and ``flow_id`` numbered across the whole dataset in that order.
    """

    def __init__(self, sources: list[FileSource], config: FlowConfig, spec: LabelSpec) -> None:
        self.sources, self.config, self.spec = sources, config, spec
        self.merges = 0

    def __iter__(self) -> Iterator[tuple[int, pa.Table]]:
        stitcher = Stitcher(self.config)
        src = self.sources
        for k, f in enumerate(src):
            st, is_head, is_tail = f.edges()
            nxt = src[k + 1].first_ts if k + 1 < len(src) else None
            stitcher.add(FileEdges(k, f.first_ts, f.last_ts, st, is_head, is_tail), nxt)
        result = stitcher.finish()
        self.merges = result.merges
        extra = _label_stitched(result, src, self.spec)
        offset = 0
        for k, f in enumerate(src):
            table = f.table()
            drop = result.drop_id[result.drop_file == k]
            if len(drop):
                keep = pc.invert(pc.is_in(table.column("flow_id"), value_set=pa.array(drop.astype(np.uint64))))
                table = table.filter(keep)
            if k in extra:
                table = pa.concat_tables([table.select(extra[k].column_names), extra[k]])
            if table.num_rows == 0:
                continue
            table = table.sort_by([("first_seen", "ascending"), ("flow_id", "ascending")])
            n = table.num_rows
            table = table.set_column(table.schema.get_field_index("flow_id"), CLASSIFY_SCHEMA.field("flow_id"),
                                     pa.array(np.arange(offset, offset + n, dtype=np.uint64)))
            offset += n
            yield k, table.combine_chunks()


def _label_stitched(result, files: list, spec: LabelSpec) -> dict[int, pa.Table]:
    """Finalize and label the stitched rows; group them by the file where each flow began."""
    from classifier.flows.finalize import finalize
    from classifier.pipeline import label_batch

    if len(result.rows) == 0:
        return {}
    batch = finalize(result.rows, "")
    captures = np.array([files[k].path for k in result.start_file], dtype=object)
    table = label_batch(batch, spec.options())
    table = table.set_column(table.schema.get_field_index("capture"), CLASSIFY_SCHEMA.field("capture"),
                             pa.array(captures, pa.string()))
    out = {}
    for k in np.unique(result.start_file):
        out[int(k)] = table.filter(pa.array(result.start_file == k))
    return out



def stitch_results(results: list[FileResult], config: FlowConfig, spec: LabelSpec) -> pa.Table:
    """In-memory form of the merge step: per-file results (any order) -> one labelled table.

    Used by tests and small jobs; ``run_batch`` does the same from the work area, one
    partition at a time.
    """
    ordered = sorted(results, key=lambda r: (r.first_ts is None, r.first_ts or 0, r.path))
    sources = [FileSource(r.path, r.first_ts, r.last_ts, (lambda r=r: r.table),
                          (lambda r=r: (r.edges, r.is_head, r.is_tail))) for r in ordered]
    tables = [t for _, t in StitchedPartitions(sources, config, spec)]
    return pa.concat_tables(tables) if tables else CLASSIFY_SCHEMA.empty_table()
