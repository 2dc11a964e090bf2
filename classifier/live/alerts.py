"""VPN findings as JSON lines, one per flow, written the moment they are made.

The alert stream is an append-only log that other tools tail, so it is written line
by line and flushed after each line (an atomic rename would hide it until the end);
a line is only ever written whole. Alerts carry verdicts and endpoints, never payload.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa

#: Keys of every alert line, in order (``registered`` and the registry keys are null without --registry).
ALERT_KEYS = (
    "time", "interface", "flow_id", "stage", "src_ip", "dst_ip", "src_port", "dst_port", "ip_proto",
    "vpn_protocol", "confidence", "detection", "evidence", "registered", "registration_id", "organization",
    "first_seen", "packets", "bytes", "midflow",
)


def iso_ns(ns: int) -> str:
    """ISO 8601 UTC time with microseconds, e.g. 2025-01-02T03:04:05.123456Z."""
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def alert_records(table: pa.Table, rows: np.ndarray, now_ns: int, interface: str, stage: str) -> list[dict]:
    """One alert dict per selected row of a classified table.

    ``stage`` is ``open`` for a flow labelled while it is still running, ``ended`` for
    one labelled when it ended.
    """
    if len(rows) == 0:
        return []
    sub = table.take(pa.array(np.asarray(rows, np.int64)))
    names = set(sub.column_names)
    cols = {k: sub.column(k).to_pylist() for k in ALERT_KEYS if k in names}
    first_ns = sub.column("first_seen").cast(pa.int64()).to_pylist()
    now = iso_ns(now_ns)
    out = []
    for i in range(sub.num_rows):
        rec: dict[str, Any] = {}
        for k in ALERT_KEYS:
            if k == "time":
                rec[k] = now
            elif k == "interface":
                rec[k] = interface
            elif k == "stage":
                rec[k] = stage
            elif k == "first_seen":
                rec[k] = iso_ns(first_ns[i])
            elif k == "confidence":
                v = cols[k][i]
                rec[k] = None if v is None or v != v else round(float(v), 4)
            else:
                rec[k] = cols[k][i] if k in cols else None
        out.append(rec)
    return out


class AlertWriter:
    """JSON lines to standard output or appended to a file, flushed per line."""

    def __init__(self, path: str | None) -> None:
        self.path = path or "-"
        self.count = 0
        if self.path == "-":
            self._fh: IO[str] = sys.stdout
            self._own = False
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            self._own = True

    def write(self, records: list[dict]) -> None:
        for rec in records:
            self._fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
            self._fh.flush()
            self.count += 1

    def close(self) -> None:
        if self._own:
            self._fh.close()
        else:
            self._fh.flush()
