"""The per-file task: one capture in, labelled flows plus raw boundary rows out.

Runs on a pool process or a Dask worker, independent of every other file, so files
can be processed in any order and on any machine. What travels back to the client is
small: the labelled flow table (no payload) and raw state only for the rows that may
cross a file boundary (see ``classifier.batch.stitch``): tails still open at the end
of the file, and per key the first flow starting within the idle timeout of the
file's first packet. Every flow that ended inside the file is finished and labelled
here, where the payload heads are. Tails are not labelled here: almost every tail is
either continued by the next file or ends with another reason once the next file is
known, so the client stitches them first and sends them back as ``label_rows`` tasks.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from classifier.batch.merge import key_view
from classifier.errors import ErrorLog
from classifier.flows import state as S
from classifier.flows.config import FlowConfig

HASH_CHUNK = 8 << 20


@dataclass(frozen=True)
class LabelSpec:
    """How to label flows, in a form that pickles cheaply (workers load the model once)."""

    signatures: bool = True
    model_path: str | None = None
    endpoint_context: bool = True  # applied by the client over the whole dataset before it commits

    @property
    def judges_endpoints(self) -> bool:
        """``LabelOptions.judges_endpoints`` from the path alone: the client never loads the model."""
        return self.endpoint_context and bool(self.model_path)

    def options(self) -> Any:
        from classifier.pipeline import LabelOptions

        # Workers call label_batch (per flow); endpoint_context matters to iter_labeled callers.
        return LabelOptions(signatures=self.signatures, model=_model(self.model_path),
                            endpoint_context=self.endpoint_context)


_MODELS: dict[str, Any] = {}


def _model(path: str | None) -> Any:
    """Load each model file once per process (workers run many files)."""
    if path is None:
        return None
    if path not in _MODELS:
        from classifier.model import load_model

        _MODELS[path] = load_model(path)
    return _MODELS[path]


@dataclass
class FileResult:
    """What one worker returns for one capture."""

    path: str
    table: pa.Table  # labelled flows that ended in the file (CLASSIFY_SCHEMA), local flow ids
    edges: S.FlowState  # raw rows that may cross a boundary
    is_head: np.ndarray
    is_tail: np.ndarray
    first_ts: int | None = None  # first packet, ns; None when the file had no usable packet
    last_ts: int = 0
    packets: int = 0
    size: int = 0
    digest: str = ""
    seconds: float = 0.0
    problems: list[tuple[str, int | None, str]] = field(default_factory=list)
    flows: int = 0  # rows of ``table``
    open_at_end: int = 0  # flows still open at the file's end (stitched, then labelled, later)
    stored: str | None = None  # stem in the work area when the worker wrote the result itself


def file_digest(path: str) -> str:
    """SHA-256 of the file's bytes (first 128 bits): recorded in the manifest to notice changed inputs.

    SHA-256 rather than BLAKE2: with the CPU's SHA extensions it is the faster of the two here.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()[:32]


def _first_per_key(st: S.FlowState) -> np.ndarray:
    """Indices of the lowest-flow-id row of each key."""
    if len(st) == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(st.si[:, S.FLOW_ID], kind="stable")
    _, first = np.unique(key_view(st.keys[order]), return_index=True)
    return np.sort(order[first])


def process_file(path: str, config: FlowConfig, spec: LabelSpec,
                 store: tuple[str, str] | None = None) -> FileResult:
    """Meter one capture, label finished flows, keep boundary rows raw.

    ``store`` = (work area directory, settings key): write the result there and return
    only its summary (local workers share the client's disk, so the client neither
    receives nor writes the bulk of it). Without it, everything is returned.
    """
    from classifier.flows.api import BATCH_ROWS
    from classifier.flows.batch import FlowBatch
    from classifier.flows.finalize import finalize
    from classifier.flows.meter import FlowMeter
    from classifier.packets.capture import InputStats, iter_packet_batches
    from classifier.pipeline import label_batch

    t0 = time.perf_counter()
    log = ErrorLog(quiet=True)
    stats = InputStats(path)
    options = spec.options()
    idle = config.ns[0]
    meter = FlowMeter(config, capture=path, raw=True)
    labelled: list[pa.Table] = []
    early: list[S.FlowState] = []  # rows that started within the idle window of the file start
    first_ts: int | None = None
    size = os.path.getsize(path)
    digest = file_digest(path)

    pending: list[FlowBatch] = []
    pending_rows = 0

    def label_pending() -> None:
        # Label in batches of BATCH_ROWS, as `vpnid classify` does: some signatures
        # use the other flows of the batch as context.
        nonlocal pending, pending_rows
        if pending:
            labelled.append(label_batch(FlowBatch.concat(pending), options))
        pending, pending_rows = [], 0

    def take(rows: S.FlowState | None, label: bool = True) -> None:
        nonlocal pending_rows
        if rows is None or len(rows) == 0:
            return
        if label:
            pending.append(finalize(rows, path))
            pending_rows += len(rows)
            if pending_rows >= BATCH_ROWS:
                label_pending()
        if first_ts is not None:
            near = rows.si[:, S.FIRST] - first_ts <= idle
            if near.any():
                early.append(rows.take(np.flatnonzero(near)))

    for packets in iter_packet_batches(path, log, stats):
        if first_ts is None and packets.n:
            ok = packets.cols["status"] == 0
            if ok.any():
                first_ts = int(packets.cols["ts"][ok].min())
        take(meter.add(packets))
    tail = meter.flush()
    take(tail, label=False)  # labelled after stitching (``label_rows``)
    label_pending()

    cand = S.FlowState.concat(early)
    heads = cand.take(_first_per_key(cand))
    tails = tail if tail is not None else S.FlowState.allocate(0)
    # A tail can also be a head (a flow spanning the whole file): keep one row for it.
    tail_ids = tails.si[:, S.FLOW_ID]
    head_is_tail = np.isin(heads.si[:, S.FLOW_ID], tail_ids)
    head_only = heads.take(np.flatnonzero(~head_is_tail))
    edges = S.FlowState.concat([head_only, tails])
    is_head = np.concatenate([np.ones(len(head_only), bool),
                              np.isin(tail_ids, heads.si[:, S.FLOW_ID])])
    is_tail = np.concatenate([np.zeros(len(head_only), bool), np.ones(len(tails), bool)])

    from classifier.flows.schema import CLASSIFY_SCHEMA

    table = pa.concat_tables(labelled) if labelled else CLASSIFY_SCHEMA.empty_table()
    res = FileResult(
        path=path, table=table, edges=edges, is_head=is_head, is_tail=is_tail,
        first_ts=first_ts, last_ts=meter.now_ns, packets=stats.packets, size=size, digest=digest,
        problems=[(p.path, p.offset, p.message) for p in log.problems], flows=table.num_rows,
        open_at_end=len(tails),
    )
    if store is not None:
        from classifier.batch.manifest import result_stem, write_result

        res.stored = write_result(store[0], result_stem(digest, store[1]), table, edges, is_head, is_tail)
        res.table, res.edges = None, None  # type: ignore[assignment]
        res.is_head = res.is_tail = np.zeros(0, bool)
    res.seconds = time.perf_counter() - t0
    return res


def label_rows(rows: S.FlowState, captures: list[str], spec: LabelSpec) -> pa.Table:
    """Finalize and label stitched boundary flows (a worker task); ``captures``: per row, its file.

    Labelled in batches of ``BATCH_ROWS`` in the given order, like the flows of a file,
    so the result depends only on the rows, never on which worker ran it.
    """
    from classifier.flows.api import BATCH_ROWS
    from classifier.flows.finalize import finalize
    from classifier.flows.schema import CLASSIFY_SCHEMA
    from classifier.pipeline import label_batch

    options = spec.options()
    parts = [label_batch(finalize(rows.take(np.arange(lo, min(len(rows), lo + BATCH_ROWS))), ""), options)
             for lo in range(0, len(rows), BATCH_ROWS)]
    if not parts:
        return CLASSIFY_SCHEMA.empty_table()
    table = pa.concat_tables(parts)
    return table.set_column(table.schema.get_field_index("capture"), CLASSIFY_SCHEMA.field("capture"),
                            pa.array(captures, pa.string()))
