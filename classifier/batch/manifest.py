"""The dataset's manifest and work area: what makes ``vpnid batch`` restartable.

Layout of a dataset directory::

    DATASET/part-00000.parquet ...   the flows (what pyarrow.dataset reads)
    DATASET/_manifest.json           inputs (size, mtime, hash, status), settings, output state
    DATASET/_work/files/             per-input results: labelled flows (Arrow IPC) + raw boundary rows
    DATASET/_work/stage/             partitions being written, moved into place on commit

Names starting with ``_`` are skipped by ``pyarrow.dataset``. Every file is written
atomically (``classifier.output``), so a crash leaves either the old or the new
version of each file, never a half-written one. The per-input results are the
expensive part (reading and metering the capture); merging flows across files and
writing the partitions is redone from them on every run that changes anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from classifier.batch.work import FileResult
from classifier.flows import state as S
from classifier.output import atomic_path, write_text_atomic

FORMAT = "vpnid-batch/2"
MANIFEST = "_manifest.json"
WORK = "_work"


@dataclass
class InputEntry:
    """One input as last seen and processed."""

    path: str
    size: int
    mtime_ns: int
    digest: str = ""
    status: str = "pending"  # pending | done | failed
    error: str | None = None
    result: str | None = None  # stem of the cached result files
    first_ts: int | None = None  # first packet, ns; None when the file had no usable packet
    last_ts: int = 0
    packets: int = 0
    flows: int = 0
    seconds: float = 0.0
    problems: list[list[Any]] = field(default_factory=list)


@dataclass
class Manifest:
    """Contents of ``_manifest.json``."""

    root: Path
    settings: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, InputEntry] = field(default_factory=dict)
    output: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.root / MANIFEST

    @property
    def files_dir(self) -> Path:
        return self.root / WORK / "files"

    @property
    def stage_dir(self) -> Path:
        return self.root / WORK / "stage"

    @classmethod
    def load(cls, root: str | os.PathLike) -> Manifest:
        """Read the manifest of ``root`` (an empty one if there is none or it is unreadable)."""
        m = cls(Path(root))
        try:
            data = json.loads(m.path.read_text())
        except (OSError, ValueError):
            return m
        if data.get("format") != FORMAT:
            return m
        m.settings = data.get("settings", {})
        m.output = data.get("output", {})
        for key, entry in data.get("inputs", {}).items():
            with contextlib.suppress(TypeError):
                m.inputs[key] = InputEntry(**entry)
        return m

    def save(self) -> None:
        data = {"format": FORMAT, "settings": self.settings, "output": self.output,
                "inputs": {k: asdict(v) for k, v in sorted(self.inputs.items())}}
        write_text_atomic(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")

    # --- per-input results -------------------------------------------------------------------

    def result_paths(self, stem: str) -> tuple[Path, Path]:
        return result_paths(self.files_dir, stem)

    def has_result(self, entry: InputEntry) -> bool:
        return entry.result is not None and all(p.exists() for p in self.result_paths(entry.result))

    def store_result(self, res: FileResult, settings_key: str) -> str:
        """Write a worker result into the work area (unless the worker did); returns its stem."""
        if res.stored is not None:
            return res.stored
        return write_result(self.files_dir, result_stem(res.digest, settings_key), res.table,
                            res.edges, res.is_head, res.is_tail)

    def load_table(self, stem: str) -> pa.Table:
        with pa.memory_map(str(self.result_paths(stem)[0])) as src:
            return pa.ipc.open_file(src).read_all()

    def load_edges(self, stem: str) -> tuple[S.FlowState, np.ndarray, np.ndarray]:
        with np.load(self.result_paths(stem)[1], allow_pickle=False) as z:
            st = S.FlowState(*(z[name] for name in S.ROW_ARRAYS))
            return st, z["is_head"], z["is_tail"]

    def prune(self) -> None:
        """Remove cached results no input refers to any more."""
        keep = {e.result for e in self.inputs.values() if e.result}
        if not self.files_dir.exists():
            return
        for p in self.files_dir.iterdir():
            stem = p.name.split(".", 1)[0]
            if stem not in keep:
                with contextlib.suppress(OSError):
                    p.unlink()


def result_stem(digest: str, settings_key: str) -> str:
    return f"{digest}-{settings_key[:16]}"


def result_paths(files_dir: Path, stem: str) -> tuple[Path, Path]:
    return files_dir / f"{stem}.flows.arrow", files_dir / f"{stem}.edges.npz"


def write_result(files_dir: str | os.PathLike, stem: str, table: pa.Table, edges: S.FlowState,
                 is_head: np.ndarray, is_tail: np.ndarray) -> str:
    """Write one input's result (labelled flows, raw boundary rows) atomically; returns ``stem``.

    Called by a local worker itself (it sees the work area: no copy through the client)
    or by the client for results that came over the network.
    """
    files_dir = Path(files_dir)
    flows, edge_path = result_paths(files_dir, stem)
    files_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(files_dir.parent, 0o700)  # boundary rows hold payload heads: owner only
    # Arrow IPC, uncompressed: cheap to write and to map back; the work area is transient.
    with atomic_path(flows) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    arrays = {name: getattr(edges, name) for name in S.ROW_ARRAYS}
    with atomic_path(edge_path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, is_head=is_head, is_tail=is_tail, **arrays)
    return stem


def settings_key(settings: dict[str, Any]) -> str:
    """Stable hash of what per-input results depend on (engine, timeouts, labelling)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def file_stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns
