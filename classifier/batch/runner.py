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
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TextIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from classifier._version import __version__
from classifier.batch.assemble import Assembler
from classifier.batch.executor import make_executor
from classifier.batch.manifest import Manifest, file_stat, settings_key
from classifier.batch.work import FileResult, LabelSpec, label_rows, process_file
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
    write_seconds: float = 0.0  # client busy: caching results, stitching, writing partitions
    startup_seconds: float = 0.0  # until every local worker process was running

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
            "signatures": spec.signatures, "model": model,
            "endpoint_context": spec.judges_endpoints}


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

    for e in manifest.inputs.values():  # problems of cached inputs count toward the exit status too
        if e.path not in todo:
            for path, offset, message in e.problems:
                log.add(path, offset, message)

    job = _Job(opts, manifest, paths, todo, skey, summary, log, out)
    try:
        job.run()
    finally:
        job.close()
    summary.problems = len(log.problems) - summary.failed
    manifest.prune()
    if opts.clean_work and not summary.failed:
        shutil.rmtree(manifest.files_dir, ignore_errors=True)
        for e in manifest.inputs.values():
            e.result, e.status = None, "pending"
        manifest.save()
    summary.seconds = time.perf_counter() - t0
    if summary.processed or summary.written:  # timings of the last run, for operators and benchmarks
        manifest.output["last_run"] = {"seconds": round(summary.seconds, 3),
                                       "client_busy_s": round(summary.write_seconds, 3),
                                       "worker_startup_s": round(summary.startup_seconds, 3)}
        manifest.save()
    _say(out, opts.quiet, f"{summary.flows:,} flows ({summary.merges:,} merged across files) in "
                          f"{summary.partitions} partition(s) -> {root}; {summary.processed} processed, "
                          f"{summary.cached} unchanged, {summary.failed} failed, {summary.seconds:.1f} s")
    return summary


def _record(manifest: Manifest, entry, res: FileResult, skey: str) -> None:
    entry.result = manifest.store_result(res, skey)
    entry.digest = res.digest
    entry.status, entry.error = "done", None
    entry.first_ts, entry.last_ts = res.first_ts, res.last_ts
    entry.packets, entry.flows, entry.seconds = res.packets, res.flows, round(res.seconds, 3)
    entry.problems = [list(p) for p in res.problems]


def _output_key(done: list, manifest: Manifest, registry_digest: str | None) -> str:
    parts = [(e.path, e.digest, e.result) for e in done]
    blob = json.dumps({"inputs": parts, "settings": manifest.settings, "registry": registry_digest},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _time_key(e) -> tuple:
    """Files in capture-time order (empty files last), ties by path."""
    return (e.first_ts is None, e.first_ts or 0, e.path)


def _time_order(done: list) -> list:
    return sorted(done, key=_time_key)


class _Job:
    """One run: per-file tasks, stitching as results arrive, label tasks, partitions.

    The pipeline overlaps everything the client can start early: files are stitched
    in input order while later files are still being processed (the order of rotated
    files; if their first timestamps turn out not to follow it, everything is stitched
    again in time order at the end), label tasks for stitched flows go to the workers
    as soon as their flows can no longer grow, and each partition is written as soon
    as it is complete. At most ``workers + 1`` per-file tasks are queued, so label
    tasks never wait behind the whole input list.
    """

    def __init__(self, opts: BatchOptions, manifest: Manifest, paths: list[str], todo: list[str], skey: str,
                 summary: BatchSummary, log: ErrorLog, out: TextIO) -> None:
        self.opts, self.manifest, self.paths, self.todo, self.skey = opts, manifest, paths, todo, skey
        self.summary, self.log, self.out = summary, log, out
        self.executor = None
        self.results: dict[str, FileResult] = {}  # processed this run, until stitched and written
        self.registry = None
        self.reg_digest = hashlib.sha256(Path(opts.registry).read_bytes()).hexdigest() if opts.registry else None

    def close(self) -> None:
        if self.executor is not None:
            self.executor.close()
            self.executor = None

    def _executor(self):
        if self.executor is None:
            self.executor = make_executor(self.opts.scheduler, self.opts.workers, self.opts.spec.model_path)
        return self.executor

    def run(self) -> None:
        manifest, opts = self.manifest, self.opts
        if not self.todo:
            done = self._done()
            key = _output_key(_time_order(done), manifest, self.reg_digest)
            if self._up_to_date(key):
                return
        if self.todo:
            ex = self._executor()
            ex.start()
            _say(self.out, opts.quiet, f"{len(self.paths)} input(s): {len(self.todo)} to process, "
                                       f"{self.summary.cached} unchanged; running on {ex.description}")
            if ex.dashboard_link:
                _say(self.out, opts.quiet, f"Dask dashboard: {ex.dashboard_link}")
        self._begin_output()
        self.asm = Assembler(opts.config)
        self.fed: list = []  # manifest entries fed to the assembler, in order
        self.speculative = True
        self.t_client = 0.0
        queue = list(self.todo)
        self.n_done = 0
        in_flight = 0
        slots = (self.executor.workers + 1) if self.executor is not None else 1
        while queue and in_flight < slots:
            self._submit_file(queue.pop(0))
            in_flight += 1
        self._advance()
        if self.executor is not None:
            for key, res, exc in self.executor.results():
                kind, name = key
                if kind == "file":
                    in_flight -= 1
                    if queue:
                        self._submit_file(queue.pop(0))
                        in_flight += 1
                    self._file_done(name, res, exc)
                    self._advance()
                else:
                    self._label_done(name, res, exc)
        if self.pending_labels:
            raise RuntimeError("label tasks left unfinished")  # pragma: no cover - executor contract
        done = self._done()
        if not self.speculative or [e.path for e in self.fed] != [e.path for e in _time_order(done)
                                                                   if e.first_ts is not None]:
            self._restart_in_time_order(done)
        self._commit(done)

    # --- per-file tasks ------------------------------------------------------------------------

    def _submit_file(self, path: str) -> None:
        args = (path, self.opts.config, self.opts.spec)
        if getattr(self.executor, "shares_disk", False):  # a local pool writes its results itself
            args += ((str(self.manifest.files_dir), self.skey),)
        self.executor.submit(("file", path), process_file, *args)

    def _file_done(self, path: str, res: FileResult | None, exc: BaseException | None) -> None:
        t = time.perf_counter()
        entry = self.manifest.inputs[path]
        self.n_done += 1
        if exc is not None:
            entry.status, entry.error = "failed", f"{type(exc).__name__}: {exc}"
            self.summary.failed += 1
            self.log.add(path, None, f"failed: {entry.error}")
        else:
            _record(self.manifest, entry, res, self.skey)
            for ppath, offset, message in res.problems:
                self.log.add(ppath, offset, message)
            self.summary.processed += 1
            self.summary.packets += res.packets
            self.results[path] = res
            _say(self.out, self.opts.quiet, f"[{self.n_done}/{len(self.todo)}] {path}: {res.packets:,} packets, "
                                            f"{res.flows:,} flows ended in it, {res.open_at_end:,} open at its "
                                            f"end, {res.seconds:.2f} s")
        self.manifest.save()
        self.t_client += time.perf_counter() - t

    def _done(self) -> list:
        m = self.manifest.inputs
        return [m[p] for p in self.paths if p in m and m[p].status == "done"]

    # --- stitching, labelling, writing -----------------------------------------------------------

    def _advance(self) -> None:
        """Feed the assembler the files whose turn has come (input order, while it is time order)."""
        if not self.speculative or self.asm_closed:
            return
        t = time.perf_counter()
        m = self.manifest.inputs
        known = []  # non-empty done inputs after the fed prefix, in input order, up to the first unknown one
        complete = True
        for p in self.paths[self.cursor:]:
            e = m.get(p)
            if e is None or e.status == "failed":
                continue
            if e.status != "done":
                complete = False
                break
            if e.first_ts is not None:
                known.append(e)
        # Each file needs the next one's first timestamp, unless no later file can exist.
        ready = known if complete else known[:-1]
        for i, e in enumerate(ready):
            if self.fed and _time_key(e) <= _time_key(self.fed[-1]):
                self.speculative = False  # not in time order: stitched again at the end
                self.t_client += time.perf_counter() - t
                return
            self._feed(e, known[i + 1].first_ts if i + 1 < len(known) else None)
            self.cursor = self.paths.index(e.path) + 1
        if complete:
            self.asm_closed = True
            self._submit_labels(self.asm.close())
        self._write_ready()
        self.t_client += time.perf_counter() - t

    def _feed(self, e, next_first_ts: int | None) -> None:
        res = self.results.get(e.path)
        if res is not None and res.stored is None and res.edges is not None:
            edges = (res.edges, res.is_head, res.is_tail)
            res.edges = None  # stitched: the raw rows are not needed any more
        else:
            edges = self.manifest.load_edges(e.result)
        index = len(self.fed)
        self.fed.append(e)
        self._submit_labels(self.asm.add(index, e.path, e.first_ts, e.last_ts, edges,
                                         partial(self._table, e), next_first_ts))

    def _table(self, e) -> pa.Table:
        """A file's labelled table: from this run's result (once), else from the work area."""
        res = self.results.pop(e.path, None)
        return res.table if res is not None and res.stored is None else self.manifest.load_table(e.result)

    def _submit_labels(self, jobs: list) -> None:
        for j in jobs:
            self.pending_labels.add(j.index)
            self._executor().submit(("label", j.index), label_rows, j.rows, j.capture_of_rows(), self.opts.spec)

    def _label_done(self, index: int, table, exc: BaseException | None) -> None:
        if exc is not None:
            raise exc
        t = time.perf_counter()
        self.pending_labels.discard(index)
        self.asm.labelled(index, table)
        self._write_ready()
        self.t_client += time.perf_counter() - t

    def _begin_output(self) -> None:
        self.pending_labels: set[int] = set()
        self.asm_closed = False
        self.cursor = 0
        if self.opts.registry:
            from classifier.registry import Registry

            self.registry = Registry.load(self.opts.registry)
        self.schema = CLASSIFY_SCHEMA if self.registry is None else pa.schema(list(CLASSIFY_SCHEMA) + REGISTRY_FIELDS)
        self.names: list[str] = []
        self.rows = 0
        stage = self.manifest.stage_dir
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)

    def _write_ready(self) -> None:
        from classifier.output import base_metadata

        for k, table in self.asm.partitions():
            if self.registry is not None:
                table = self.registry.annotate(table)
            name = f"{PART_PREFIX}{k:05d}.parquet"
            # Footer metadata names every input given (sorted, so the order of the arguments
            # does not matter): partitions are written before the run knows which inputs fail.
            meta = base_metadata(inputs=sorted(self.paths), idle_timeout_s=self.opts.config.idle_timeout_s,
                                 active_timeout_s=self.opts.config.active_timeout_s,
                                 signatures=self.opts.spec.signatures, model=self.manifest.settings.get("model"),
                                 registry=self.reg_digest,
                                 endpoint_context=bool(self.manifest.settings.get("endpoint_context")))
            _write_partition(self.manifest.stage_dir / name, self.schema, meta, table)
            self.names.append(name)
            self.rows += table.num_rows

    def _endpoint_pass(self, names: list[str]) -> None:
        """Judge each endpoint's model-scored flows over the whole staged dataset (docs/model.md).

        A run is one capture (its files are stitched as one), so endpoints span files; the
        tally reads only the columns it needs, and only partitions with a lifted flow are
        read whole and rewritten (same metadata, same row groups).
        """
        from classifier.model.endpoint_context import RUN_KEY_COLUMNS, EndpointTally

        stage = self.manifest.stage_dir
        tally = EndpointTally(keys=RUN_KEY_COLUMNS, encrypted=self.opts.spec.signatures)
        needed = tally.columns
        candidates: dict[str, np.ndarray] = {}  # per partition: endpoints of its flows the rule could lift
        for name in names:
            parts = [tally.add(pa.Table.from_batches([batch]))
                     for batch in pq.ParquetFile(stage / name).iter_batches(columns=needed)]
            candidates[name] = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        lifted = tally.finish().lifted
        for name in names:
            if not lifted[candidates[name]].any():
                continue
            path = stage / name
            table = pq.read_table(path)
            out = tally.apply(table, self.registry)
            if out is not table:
                meta = {k.decode(): v.decode() for k, v in (pq.read_schema(path).metadata or {}).items()
                        if k.startswith(b"vpnid.")}
                _write_partition(path, self.schema, meta, out)

    def _restart_in_time_order(self, done: list) -> None:
        """Inputs were not in time order (or some failed late): stitch everything again in time order."""
        self._begin_output()
        self.asm = Assembler(self.opts.config)
        self.fed = []
        self.asm_closed = True
        files = [e for e in _time_order(done) if e.first_ts is not None]
        for i, e in enumerate(files):
            self._feed(e, files[i + 1].first_ts if i + 1 < len(files) else None)
        self._submit_labels(self.asm.close())
        self._write_ready()
        if self.pending_labels:
            for (_, index), res, exc in self._executor().results():
                self._label_done(index, res, exc)

    def _up_to_date(self, key: str) -> bool:
        prev = self.manifest.output
        root = self.manifest.root
        if prev.get("state") == "committed" and prev.get("key") == key and \
                all((root / name).exists() for name in prev.get("partitions", [])):
            self.summary.flows = int(prev.get("flows", 0))
            self.summary.merges = int(prev.get("merges", 0))
            self.summary.partitions = len(prev.get("partitions", []))
            _say(self.out, self.opts.quiet, "dataset already up to date")
            return True
        return False

    def _commit(self, done: list) -> None:
        t = time.perf_counter()
        manifest, root = self.manifest, self.manifest.root
        stage = manifest.stage_dir
        key = _output_key(_time_order(done), manifest, self.reg_digest)
        if self._up_to_date(key):
            shutil.rmtree(stage, ignore_errors=True)
            return
        names = list(self.names)
        if not names:  # no flows at all: one empty partition keeps the dataset's schema readable
            from classifier.output import TableSink, base_metadata

            name = f"{PART_PREFIX}00000.parquet"
            meta = base_metadata(inputs=sorted(self.paths), idle_timeout_s=self.opts.config.idle_timeout_s,
                                 active_timeout_s=self.opts.config.active_timeout_s,
                                 signatures=self.opts.spec.signatures, model=manifest.settings.get("model"),
                                 registry=self.reg_digest)
            with TableSink(str(stage / name), self.schema, "parquet", meta):
                pass
            names.append(name)
        if self.manifest.settings.get("endpoint_context") and self.names:
            self._endpoint_pass(self.names)
        summary = self.summary
        summary.merges = self.asm.merges
        summary.flows = self.rows
        summary.partitions = len(names)

        # Commit: record the intent, move partitions into place, drop stale ones, record success.
        manifest.output = {"state": "committing", "key": key, "partitions": names, "flows": self.rows,
                           "merges": self.asm.merges}
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
        self.t_client += time.perf_counter() - t
        summary.write_seconds = self.t_client
        summary.startup_seconds = getattr(self.executor, "startup_s", 0.0)


def _write_partition(path: Path, schema: pa.Schema, meta: dict[str, str], table: pa.Table) -> None:
    """One partition file, atomically, in fixed row groups of ``ROW_GROUP_ROWS``."""
    from classifier.output import TableSink

    with TableSink(str(path), schema, "parquet", meta) as sink:
        for lo in range(0, table.num_rows, ROW_GROUP_ROWS):
            sink.write(table.slice(lo, ROW_GROUP_ROWS))


def stitch_results(results: list[FileResult], config: FlowConfig, spec: LabelSpec) -> pa.Table:
    """In-memory form of the merge step: per-file results (any order) -> one labelled table.

    Used by tests and small jobs; ``run_batch`` does the same with the work area and
    label tasks on the workers.
    """
    ordered = [r for r in sorted(results, key=lambda r: (r.first_ts is None, r.first_ts or 0, r.path))
               if r.first_ts is not None]
    asm = Assembler(config)
    tables = []

    def label(jobs) -> None:
        for j in jobs:
            asm.labelled(j.index, label_rows(j.rows, j.capture_of_rows(), spec))
        tables.extend(t for _, t in asm.partitions())

    for i, r in enumerate(ordered):
        label(asm.add(i, r.path, r.first_ts, r.last_ts, (r.edges, r.is_head, r.is_tail), (lambda r=r: r.table),
                      ordered[i + 1].first_ts if i + 1 < len(ordered) else None))
    label(asm.close())
    return pa.concat_tables(tables) if tables else CLASSIFY_SCHEMA.empty_table()
