"""The one obvious entry point: captures in, flows out.

    >>> import classifier
    >>> table = classifier.read_flows("pcaps/")          # pyarrow.Table, FLOW_SCHEMA

``iter_flow_batches`` is the streaming form every front end uses: each input gets its
own flow table (flows never cross inputs here; ``vpnid batch`` merges flows across
rotated files), batches come out in a deterministic order, and problems are recorded in
the ErrorLog while reading goes on.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pyarrow as pa

from classifier.errors import ErrorLog
from classifier.flows.batch import FlowBatch
from classifier.flows.config import FlowConfig
from classifier.flows.meter import FlowMeter
from classifier.flows.schema import FLOW_SCHEMA
from classifier.packets.capture import CHUNK_BYTES, InputStats, iter_packet_batches

CAPTURE_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d",
                  b"\x0a\x0d\x0d\x0a")
BATCH_ROWS = 65536


def _looks_like_capture(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head in CAPTURE_MAGICS or head[:2] == b"\x1f\x8b"


def expand_inputs(inputs: Iterable[str | os.PathLike], log: ErrorLog | None = None) -> list[str]:
    """Files as given; directories walked (sorted) for files that are captures; globs expanded."""
    log = log if log is not None else ErrorLog()
    out: list[str] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and _looks_like_capture(p))
            if not found:
                log.add(text, None, "directory holds no pcap or pcapng capture")
            out.extend(found)
        elif path.exists() or text == "-":
            out.append(text)
        elif any(ch in text for ch in "*?["):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                log.add(text, None, "pattern matches no file")
            out.extend(m for m in matches if Path(m).is_file())
        else:
            log.add(text, None, "no such file or directory")
    return out


def iter_flow_batches(
    inputs: Iterable[str | os.PathLike],
    config: FlowConfig | None = None,
    log: ErrorLog | None = None,
    stats: list[InputStats] | None = None,
    on_progress: Callable[[int], None] | None = None,
    batch_rows: int = BATCH_ROWS,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[FlowBatch]:
    """Stream finished flows of every input, ``batch_rows`` at a time (per input).

    ``stats`` (a list) receives one InputStats per input; ``on_progress(n)`` is called
    with raw bytes read, for progress bars.
    """
    log = log if log is not None else ErrorLog()
    config = config or FlowConfig()
    for path in expand_inputs(inputs, log):
        st = InputStats(path)
        if stats is not None:
            stats.append(st)
        meter = FlowMeter(config, capture=path)
        pending: list[FlowBatch] = []
        rows = 0
        for packets in iter_packet_batches(path, log, st, chunk_bytes=chunk_bytes, on_progress=on_progress):
            done = meter.add(packets)
            if done is not None and len(done):
                pending.append(done)
                rows += len(done)
                if rows >= batch_rows:
                    yield FlowBatch.concat(pending)
                    pending, rows = [], 0
        done = meter.flush()
        if done is not None and len(done):
            pending.append(done)
        if pending:
            yield FlowBatch.concat(pending)


def read_flows(*inputs: str | os.PathLike, config: FlowConfig | None = None,
               log: ErrorLog | None = None) -> pa.Table:
    """Read captures (files, directories, globs) into one flow table (FLOW_SCHEMA)."""
    tables = [b.table for b in iter_flow_batches(inputs, config=config, log=log)]
    return pa.concat_tables(tables) if tables else FLOW_SCHEMA.empty_table()
