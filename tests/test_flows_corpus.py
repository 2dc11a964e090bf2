"""The public capture corpus against the independent dpkt reference (tests/reference.py).

For every capture of ../shared/pcaps/public: the reader never crashes, every problem
it reports names the file, and the flows (endpoints, ports, protocol, VLAN, first
packet time, end reason, packets and bytes per direction) equal those the reference
builds, as multisets. The total packet count equals the number of IP packets the
reference decodes.

Coverage of the comparison: dpkt decodes every link type found in the corpus except
NFLOG (one file), whose TLV wrapper the reference walks by hand before handing the IP
packet to dpkt; everything from the IP header on is dpkt's decoding in all files.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import reference
from conftest import PUBLIC_PCAPS, public_capture_files

from classifier.errors import ErrorLog
from classifier.flows.api import iter_flow_batches
from classifier.packets import InputStats

FILES = public_capture_files()
COLS = ["src_ip", "dst_ip", "src_port", "dst_port", "ip_proto", "vlan_id", "first_seen",
        "src2dst_packets", "src2dst_bytes", "dst2src_packets", "dst2src_bytes", "end_reason"]


def _engine(path: Path) -> tuple[Counter, list[InputStats], ErrorLog]:
    log = ErrorLog(quiet=True)
    stats: list[InputStats] = []
    rows: Counter = Counter()
    for batch in iter_flow_batches([path], log=log, stats=stats):
        t = batch.table.select(COLS)
        t = t.set_column(COLS.index("first_seen"), "first_seen", t.column("first_seen").cast("int64"))
        d = t.to_pydict()
        rows.update(zip(*(d[c] for c in COLS), strict=True))
    return rows, stats, log


def _params():
    if not FILES:
        return [pytest.param(None, marks=pytest.mark.skip(
            reason=f"public capture corpus not present at {PUBLIC_PCAPS} (it lives beside the repository)"))]
    return [pytest.param(p, id=str(p.relative_to(PUBLIC_PCAPS))) for p in FILES]


@pytest.mark.parametrize("path", _params())
def test_corpus_capture_matches_reference(path: Path):
    engine, stats, log = _engine(path)
    assert len(stats) == 1
    for problem in log.problems:
        assert problem.path == str(path)
    ref_flows = reference.reference_flows(path)
    ref = Counter((*f.summary(), f.end_reason) for f in ref_flows)
    missing, extra = ref - engine, engine - ref
    assert not missing and not extra, (
        f"{path.name}: {sum(missing.values())} reference flows missing, {sum(extra.values())} unexpected; "
        f"first missing {list(missing)[:2]}, first unexpected {list(extra)[:2]}")
    assert sum((k[7] + k[9]) * n for k, n in engine.items()) == sum(len(f.packets) for f in ref_flows)


def test_corpus_covers_the_link_types(public_pcaps):
    """The corpus exercises the link types the comparison above claims to cover."""
    stats: list[InputStats] = []
    for _ in iter_flow_batches([public_pcaps], log=ErrorLog(quiet=True), stats=stats):
        pass
    seen = set().union(*(s.linktypes for s in stats))
    assert {1, 113, 276, 101, 0, 9, 239} <= seen
    assert sum(s.packets for s in stats) > 10_000
