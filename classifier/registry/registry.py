"""The registered-IP list and the check that answers "is this VPN use registered?".

Semantics (docs/registry.md):

- a VPN flow is *registered* when its source or its destination address lies in an
  entry that is valid at the flow's ``first_seen`` (the moment the tunnel was seen to
  start: a registration that lapses while a long flow is open does not retroactively
  make its start unregistered, and one that begins mid-flow does not cover its start);
- when both endpoints match, the source (initiator, normally the registered client)
  is reported; when several entries cover an address, the most specific block (longest
  prefix) wins, then the earlier line of the file;
- non-VPN flows are not checked: ``registered`` and the other columns are null.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from classifier.flows.schema import REGISTRY_FIELDS
from classifier.registry.addresses import V6_DTYPE, parse_distinct, v6_key
from classifier.registry.index import FamilyIndex
from classifier.registry.loader import (
    Entry,
    RegistryError,
    RowProblem,
    read_registry_file,
    validate_row,
)

REGISTRY_COLUMNS = [f.name for f in REGISTRY_FIELDS]
_MAX_LISTED = 20


@dataclass
class Registry:
    """Valid entries of a registered-IP list, indexed per address family for matching."""

    entries: list[Entry]
    path: str | None = None
    sha256: str | None = None
    problems: list[RowProblem] = field(default_factory=list)

    def __post_init__(self) -> None:
        e = self.entries
        self._reg_id = pa.array([x.registration_id for x in e], pa.string())
        self._org = pa.array([x.organization for x in e], pa.string())
        self._from = np.array([x.valid_from_ns for x in e], np.int64)
        self._until = np.array([x.valid_until_ns for x in e], np.int64)
        self._v4 = self._build(4)
        self._v6 = self._build(6)

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, strict: bool = False, log: Any = None) -> Registry:
        """Read and validate a registry file (CSV or Parquet).

        Bad rows are skipped with one warning each (through ``log.warn`` when an
        :class:`~classifier.errors.ErrorLog` is given, else on stderr); with
        ``strict`` any bad row makes the load fail with all problems listed.
        """
        entries, problems, digest = read_registry_file(path)
        if problems and strict:
            listed = "\n  ".join(f"{p.unit} {p.line}: {p.message}" for p in problems[:_MAX_LISTED])
            more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
            raise RegistryError(
                f"{path}: {len(problems)} invalid row{'s' if len(problems) > 1 else ''} (--strict):\n  {listed}{more}"
            )
        if log is None:
            from classifier.errors import ErrorLog

            log = ErrorLog()
        for p in problems[:_MAX_LISTED]:
            log.warn(str(path), f"{p.unit} {p.line}: {p.message}; row skipped")
        if len(problems) > _MAX_LISTED:
            log.warn(str(path), f"{len(problems) - _MAX_LISTED} more invalid rows skipped")
        if not entries:
            log.warn(str(path), "no valid entries: every VPN flow will be reported as unregistered")
        return cls(entries, path=str(path), sha256=digest, problems=problems)

    @classmethod
    def from_records(cls, rows: Iterable[Mapping[str, Any]]) -> Registry:
        """Build from dicts with the registry columns (tests, notebooks); bad rows raise."""
        entries = []
        for i, row in enumerate(rows, 1):
            try:
                entries.append(validate_row(dict(row), i))
            except ValueError as exc:
                raise RegistryError(f"row {i}: {exc}") from None
        return cls(entries)

    def _build(self, family: int) -> FamilyIndex:
        ids = np.array([i for i, x in enumerate(self.entries) if x.family == family], np.int64)
        sel = [self.entries[i] for i in ids]
        # rank: longest prefix first, then file order
        plen = np.array([x.prefix for x in sel], np.int64)
        rank = np.lexsort((ids, -plen)).argsort() if len(sel) else np.zeros(0, np.int64)
        if family == 4:
            starts = np.array([x.start for x in sel], np.uint64)
            ends_excl = np.array([x.end + 1 for x in sel], np.uint64)
            open_end = np.zeros(len(sel), bool)
        else:
            top = (1 << 128) - 1
            starts = np.array([v6_key(x.start) for x in sel], V6_DTYPE)
            ends_excl = np.array([v6_key(x.end + 1 if x.end < top else 0) for x in sel], V6_DTYPE)
            open_end = np.array([x.end == top for x in sel], bool)
        return FamilyIndex.build(starts, ends_excl, open_end, rank, ids)

    # -- matching -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.entries)

    def match(self, src: pa.Array | pa.ChunkedArray, dst: pa.Array | pa.ChunkedArray,
              times_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For flows given by endpoint columns and start times -> (entry number or -1,
        matched endpoint code: 0 none, 1 src, 2 dst)."""
        times_ns = np.asarray(times_ns, np.int64)
        n = len(times_ns)
        if n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int8)
        both = pa.chunked_array([*_chunks(src), *_chunks(dst)], pa.string())
        uniq, idx = parse_distinct(both)  # each distinct address parsed and looked up once
        if len(uniq.family) == 0:  # every address null
            return np.full(n, -1, np.int64), np.zeros(n, np.int8)
        lo = np.zeros(len(uniq.family), np.int64)
        count = np.zeros(len(uniq.family), np.int64)
        for fam, index, keys in ((4, self._v4, uniq.v4), (6, self._v6, uniq.v6)):
            sel = np.flatnonzero(uniq.family == fam)
            if len(sel) and len(index.bounds):
                lo[sel], count[sel] = index.candidates_of(keys[sel])
        valid = idx >= 0
        safe = np.where(valid, idx, 0)
        row_lo, row_count, fam_rows = lo[safe], np.where(valid, count[safe], 0), uniq.family[safe]
        # candidate positions are per family index, so each family resolves its own rows
        hit = np.full(2 * n, -1, np.int64)
        times2 = np.concatenate([times_ns, times_ns])
        for fam, index in ((4, self._v4), (6, self._v6)):
            rows = np.flatnonzero((fam_rows == fam) & (row_count > 0))
            if len(rows):
                hit[rows] = index.resolve(row_lo[rows], row_count[rows], times2[rows], self._from, self._until)
        src_hit, dst_hit = hit[:n], hit[n:]
        entry = np.where(src_hit >= 0, src_hit, dst_hit)
        which = np.where(src_hit >= 0, 1, np.where(dst_hit >= 0, 2, 0)).astype(np.int8)
        return entry, which

    def annotate(self, table: pa.Table) -> pa.Table:
        """Add (or replace) ``REGISTRY_FIELDS`` on a classified flow table."""
        n = table.num_rows
        is_vpn = pc.fill_null(table.column("is_vpn"), False).to_numpy(zero_copy_only=False).astype(bool) \
            if n else np.zeros(0, bool)
        rows = np.flatnonzero(is_vpn)
        entry = np.full(n, -1, np.int64)
        which = np.zeros(n, np.int8)
        if len(rows) and len(self.entries):
            take = pa.array(rows)
            times = pc.cast(table.column("first_seen").take(take), pa.int64()).to_numpy()
            e, w = self.match(table.column("src_ip").take(take), table.column("dst_ip").take(take), times)
            entry[rows], which[rows] = e, w
        hit = entry >= 0
        idx = pa.array(np.where(hit, entry, 0), pa.int64(), mask=~hit)
        cols = {
            "registered": pa.array(hit, pa.bool_(), mask=~is_vpn),
            "registration_id": self._reg_id.take(idx) if len(self.entries) else pa.nulls(n, pa.string()),
            "organization": self._org.take(idx) if len(self.entries) else pa.nulls(n, pa.string()),
            "matched_endpoint": pa.array(np.array([None, "src", "dst"], object)[which], pa.string()),
        }
        for f in REGISTRY_FIELDS:
            pos = table.schema.get_field_index(f.name)
            if pos >= 0:
                table = table.set_column(pos, f, cols[f.name])
            else:
                table = table.append_column(f, cols[f.name])
        return table

    def describe(self) -> dict[str, Any]:
        """What a report records about the list it used."""
        return {
            "path": self.path,
            "sha256": self.sha256,
            "entries": len(self.entries),
            "ipv4_entries": sum(1 for e in self.entries if e.family == 4),
            "ipv6_entries": sum(1 for e in self.entries if e.family == 6),
            "skipped_rows": len(self.problems),
        }


def _chunks(arr: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    if isinstance(arr, pa.ChunkedArray):
        return [c.cast(pa.string()) if c.type != pa.string() else c for c in arr.chunks]
    return [arr.cast(pa.string()) if arr.type != pa.string() else arr]
