"""The ground-truth manifest: one CSV row per capture, saying what is in it.

Why a separate module: the model trainer, the tests and ``vpnid lab`` all read the same
``MANIFEST.csv`` (captures plus a manifest is the training-data format), so the columns,
their types and the validation live in one place. Reading is strict: a malformed row is
reported with the file and line number, never a traceback.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pyarrow as pa

from classifier.errors import VpnidError
from classifier.output import write_text_atomic

#: Header of MANIFEST.csv, in this order.
MANIFEST_COLUMNS = ("file", "scenario", "vpn", "protocol", "transport", "server_port", "midflow",
                    "notes", "packets", "bytes")

MANIFEST_SCHEMA = pa.schema([
    pa.field("file", pa.string(), nullable=False),
    pa.field("scenario", pa.string(), nullable=False),
    pa.field("vpn", pa.bool_(), nullable=False),
    pa.field("protocol", pa.string(), nullable=False),
    pa.field("transport", pa.string(), nullable=False),
    pa.field("server_port", pa.uint16()),
    pa.field("midflow", pa.bool_(), nullable=False),
    pa.field("notes", pa.string()),
    pa.field("packets", pa.int64(), nullable=False),
    pa.field("bytes", pa.int64(), nullable=False),
])

TRANSPORTS = ("udp", "tcp", "esp", "gre", "icmp", "ipip", "6in4")


class ManifestError(VpnidError):
    """A manifest file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class ManifestRow:
    """Ground truth for one capture.

    ``file`` is relative to the manifest's directory; ``packets`` and ``bytes`` are the
    number of records in the capture and the sum of their captured lengths (link layer
    included), as a pcap reader sees them.
    """

    file: str
    scenario: str
    vpn: bool
    protocol: str
    transport: str
    server_port: int | None
    midflow: bool
    notes: str
    packets: int
    bytes: int

    def to_csv(self) -> dict[str, str]:
        d = asdict(self)
        d["vpn"] = "yes" if self.vpn else "no"
        d["midflow"] = "yes" if self.midflow else "no"
        d["server_port"] = "" if self.server_port is None else str(self.server_port)
        return {k: str(v) for k, v in d.items()}


def _yes_no(value: str, column: str, where: str) -> bool:
    v = value.strip().lower()
    if v in ("yes", "true", "1"):
        return True
    if v in ("no", "false", "0"):
        return False
    raise ManifestError(f"{where}: column {column} must be yes or no, not {value!r}")


def _int(value: str, column: str, where: str, lo: int = 0, hi: int | None = None) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ManifestError(f"{where}: column {column} must be an integer, not {value!r}") from None
    if n < lo or (hi is not None and n > hi):
        raise ManifestError(f"{where}: column {column} out of range: {n}")
    return n


def read_manifest_rows(path: str | os.PathLike) -> list[ManifestRow]:
    """Read and validate a MANIFEST.csv into rows (file names stay relative)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"{p}: cannot read manifest: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{p} at byte {exc.start}: not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text))
    header = tuple(reader.fieldnames or ())
    if header != MANIFEST_COLUMNS:
        raise ManifestError(f"{p}:1: header must be {','.join(MANIFEST_COLUMNS)}, found {','.join(header)}")
    rows: list[ManifestRow] = []
    for rec in reader:
        where = f"{p}:{reader.line_num}"
        if None in rec or any(v is None for v in rec.values()):
            raise ManifestError(f"{where}: expected {len(MANIFEST_COLUMNS)} columns")
        transport = rec["transport"].strip().lower()
        if transport not in TRANSPORTS:
            raise ManifestError(f"{where}: transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
        if not rec["file"].strip() or not rec["protocol"].strip():
            raise ManifestError(f"{where}: file and protocol must not be empty")
        port = rec["server_port"].strip()
        rows.append(ManifestRow(
            file=rec["file"].strip(),
            scenario=rec["scenario"].strip(),
            vpn=_yes_no(rec["vpn"], "vpn", where),
            protocol=rec["protocol"].strip().lower(),
            transport=transport,
            server_port=_int(port, "server_port", where, 0, 65535) if port else None,
            midflow=_yes_no(rec["midflow"], "midflow", where),
            notes=rec["notes"].strip(),
            packets=_int(rec["packets"], "packets", where),
            bytes=_int(rec["bytes"], "bytes", where),
        ))
    return rows


def read_manifest(path: str | os.PathLike, resolve: bool = False) -> pa.Table:
    """Read a MANIFEST.csv into an Arrow table (``MANIFEST_SCHEMA``).

    With ``resolve`` the ``file`` column holds paths joined to the manifest's directory,
    ready to hand to the flow engine.
    """
    rows = read_manifest_rows(path)
    base = Path(path).parent
    cols: dict[str, list] = {f.name: [] for f in fields(ManifestRow)}
    for row in rows:
        for name in cols:
            cols[name].append(getattr(row, name))
    if resolve:
        cols["file"] = [str(base / f) for f in cols["file"]]
    return pa.table(cols, schema=MANIFEST_SCHEMA)


def write_manifest(path: str | os.PathLike, rows: list[ManifestRow]) -> None:
    """Write rows (sorted by file) atomically with the fixed header."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r.file):
        writer.writerow(row.to_csv())
    write_text_atomic(path, buf.getvalue())


def update_manifest(path: str | os.PathLike, new_rows: list[ManifestRow]) -> list[ManifestRow]:
    """Merge ``new_rows`` into the manifest at ``path`` (a row for the same file is replaced)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    # Several captures may write into one directory at once: the read-merge-write is done
    # under an exclusive lock so no run loses another's rows; readers never need the lock
    # because the file itself is replaced atomically. The lock is on the directory, so no
    # lock file is left next to the captures.
    fd = os.open(p.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        existing = read_manifest_rows(p) if p.exists() else []
        by_file = {r.file: r for r in existing}
        for r in new_rows:
            by_file[r.file] = r
        rows = list(by_file.values())
        write_manifest(p, rows)
    finally:
        os.close(fd)  # releases the lock
    return rows
