"""Reading and validating a registered-IP list (CSV or Parquet).

Why row-by-row validation here when matching is vectorized: a registry is edited by
hand or exported from a spreadsheet, and the one thing its owner needs from a bad row
is the line number and what is wrong with it. Lists are small next to flow tables
(100,000 entries load in about a second and a half), so clarity wins over speed here.

Format (docs/registry.md): header ``ip,organization,registration_id,category,
valid_from,valid_until``. ``ip`` is one address or a CIDR block; the dates may be empty.
Lines whose first field starts with ``#`` are comments; blank lines are ignored.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
import io
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classifier.errors import VpnidError

REQUIRED_COLUMNS = ("ip", "organization", "registration_id", "category")
OPTIONAL_COLUMNS = ("valid_from", "valid_until")
COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
#: Fields that must not be empty in a row (category may be left empty).
REQUIRED_VALUES = ("ip", "organization", "registration_id")

#: Sentinels for "no bound" on validity, in ns since the epoch.
NO_START = -(2**63)
NO_END = 2**63 - 1

_NS = 1_000_000_000


class RegistryError(VpnidError):
    """The registry file cannot be used (missing columns, or bad rows under --strict)."""


@dataclass(slots=True)
class Entry:
    """One valid registry row, with its address block as integers (treat as read-only)."""

    line: int
    ip: str
    family: int  # 4 or 6
    start: int  # first address of the block
    end: int  # last address of the block (inclusive)
    prefix: int  # prefix length (32/128 for a single address)
    organization: str
    registration_id: str
    category: str | None
    valid_from_ns: int  # inclusive
    valid_until_ns: int  # exclusive
    valid_from: str | None
    valid_until: str | None


@dataclass(frozen=True)
class RowProblem:
    """A rejected row: where, and one sentence saying what is wrong."""

    path: str
    line: int
    message: str
    unit: str = "line"

    def __str__(self) -> str:
        return f"{self.path}: {self.unit} {self.line}: {self.message}"


def parse_block(text: str) -> tuple[int, int, int, int]:
    """``'10.1.0.0/16'`` -> (family, start, end, prefix); ``ValueError`` with a reason."""
    addr, slash, plen_text = text.partition("/")
    addr = addr.strip()
    if ":" in addr:
        family, bits, af = 6, 128, socket.AF_INET6
    else:
        family, bits, af = 4, 32, socket.AF_INET
    try:
        packed = socket.inet_pton(af, addr)
    except (OSError, ValueError):
        raise ValueError(f"bad address {text!r}: not an IPv{family} address or CIDR block") from None
    value = int.from_bytes(packed, "big")
    if slash:
        plen_text = plen_text.strip()
        if not plen_text.isdigit() or not 0 <= int(plen_text) <= bits:
            raise ValueError(f"bad address {text!r}: prefix length must be 0..{bits}")
        prefix = int(plen_text)
    else:
        prefix = bits
    host_mask = (1 << (bits - prefix)) - 1
    if value & host_mask:
        network = value & ~host_mask
        net_text = socket.inet_ntop(af, network.to_bytes(bits // 8, "big"))
        raise ValueError(f"bad address {text!r}: host bits set after /{prefix} (the block is {net_text}/{prefix})")
    return family, value, value | host_mask, prefix


@functools.lru_cache(maxsize=4096)  # lists repeat the same few dates on thousands of rows
def _parse_time(value: Any, column: str, *, end: bool) -> tuple[int, str | None]:
    """A validity bound -> ns since the epoch (UTC) and its canonical text.

    A plain date means the whole UTC day: ``valid_from`` starts at 00:00 and
    ``valid_until`` includes the day (the bound is the next midnight, exclusive). A
    timestamp is exact (``valid_until`` inclusive); without a UTC offset it is UTC.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return (NO_END if end else NO_START), None
    if isinstance(value, dt.datetime):
        stamp: dt.datetime | None = value
        day = None
    elif isinstance(value, dt.date):
        stamp, day = None, value
    else:
        text = str(value).strip()
        stamp, day = None, None
        try:
            day = dt.date.fromisoformat(text) if len(text) <= 10 else None
        except ValueError:
            day = None
        if day is None:
            try:
                stamp = dt.datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(
                    f"bad date in {column}: {text!r} (use YYYY-MM-DD or an ISO 8601 timestamp)"
                ) from None
    if day is not None:
        midnight = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        if end:
            midnight += dt.timedelta(days=1)
        return _to_ns(midnight), day.isoformat()
    assert stamp is not None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    ns = _to_ns(stamp)
    return (ns + 1 if end else ns), stamp.isoformat()


def _to_ns(stamp: dt.datetime) -> int:
    delta = stamp - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * _NS + delta.microseconds * 1000


def validate_row(fields: dict[str, Any], line: int) -> Entry:
    """Check one row; ``ValueError`` with one clear sentence when it is bad."""
    ip, org, reg_id = (_text(fields.get(c)) for c in REQUIRED_VALUES)
    for col, v in zip(REQUIRED_VALUES, (ip, org, reg_id), strict=True):
        if not v:
            raise ValueError(f"missing {col}")
    family, start, end, prefix = parse_block(ip)
    vf_ns, vf_text = _parse_time(fields.get("valid_from"), "valid_from", end=False)
    vu_ns, vu_text = _parse_time(fields.get("valid_until"), "valid_until", end=True)
    if vf_ns >= vu_ns:
        raise ValueError(f"valid_from {vf_text} is after valid_until {vu_text}")
    return Entry(line, ip, family, start, end, prefix, org, reg_id, _text(fields.get("category")) or None,
                 vf_ns, vu_ns, vf_text, vu_text)


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _missing_columns_error(path: str, header: list[str]) -> RegistryError:
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    return RegistryError(
        f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} in the header "
        f"(expected {','.join(COLUMNS)}; found {','.join(header) or 'nothing'})"
    )


def read_csv_rows(path: str, data: bytes) -> tuple[list[Entry], list[RowProblem]]:
    """Parse and validate a registry CSV given as bytes."""
    try:
        text = data.decode("utf-8-sig")  # spreadsheet exports often start with a BOM
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RegistryError(f"{path}: line {line}: not UTF-8 text (byte {exc.start}); save the list as UTF-8 CSV") \
            from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    entries: list[Entry] = []
    problems: list[RowProblem] = []
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            if header is None:
                header = [c.strip().lower() for c in row]
                if any(c not in header for c in REQUIRED_COLUMNS):
                    raise _missing_columns_error(path, header)
                continue
            if len(row) != len(header):
                problems.append(RowProblem(path, line, f"expected {len(header)} fields, found {len(row)}"))
                continue
            try:
                entries.append(validate_row(dict(zip(header, row, strict=True)), line))
            except ValueError as exc:
                problems.append(RowProblem(path, line, str(exc)))
    except csv.Error as exc:
        raise RegistryError(f"{path}: line {reader.line_num}: unreadable CSV ({exc})") from None
    if header is None:
        raise RegistryError(f"{path}: empty file; expected the header {','.join(COLUMNS)}")
    return entries, problems


def read_parquet_rows(path: str) -> tuple[list[Entry], list[RowProblem]]:
    """Parse and validate a registry Parquet file (rows are numbered from 1)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise RegistryError(f"{path}: not a readable Parquet file ({exc})") from None
    header = [n.lower() for n in table.column_names]
    if any(c not in header for c in REQUIRED_COLUMNS):
        raise _missing_columns_error(path, header)
    table = table.rename_columns(header)
    cols = {c: table.column(c).to_pylist() for c in COLUMNS if c in header}
    entries: list[Entry] = []
    problems: list[RowProblem] = []
    for i in range(table.num_rows):
        try:
            entries.append(validate_row({c: v[i] for c, v in cols.items()}, i + 1))
        except ValueError as exc:
            problems.append(RowProblem(path, i + 1, str(exc), unit="row"))
    return entries, problems


def is_parquet(path: str, head: bytes) -> bool:
    return head[:4] == b"PAR1" or Path(path).suffix.lower() in (".parquet", ".pq")


def read_registry_file(path: str | Path) -> tuple[list[Entry], list[RowProblem], str]:
    """Read a registry file -> (entries, rejected rows, sha256 of the file)."""
    path = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read the registry ({exc.strerror or exc})") from None
    digest = hashlib.sha256(data).hexdigest()
    if is_parquet(path, data[:4]):
        entries, problems = read_parquet_rows(path)
    else:
        entries, problems = read_csv_rows(path, data)
    return entries, problems, digest
