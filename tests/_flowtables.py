"""Classified flow tables built directly from the schema, for registry and report tests."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa

from classifier.flows.schema import CLASSIFY_SCHEMA

T0 = dt.datetime(2024, 3, 1, 9, 0, tzinfo=dt.UTC)


def _default(field: pa.Field) -> Any:
    t = field.type
    if pa.types.is_list(t):
        return []
    if pa.types.is_timestamp(t):
        return T0
    if pa.types.is_string(t):
        return None if field.nullable else ""
    if pa.types.is_boolean(t):
        return False
    if pa.types.is_floating(t):
        return None if field.nullable else 0.0
    return None if field.nullable else 0


def classified(rows: list[dict[str, Any]]) -> pa.Table:
    """A CLASSIFY_SCHEMA table; each row gives the columns it cares about.

    Convenience keys: ``t`` (seconds after T0) sets first_seen, ``dur`` the duration
    (seconds, default 10); ``proto`` sets vpn_protocol and is_vpn.
    """
    full = []
    for i, row in enumerate(rows):
        r = {f.name: _default(f) for f in CLASSIFY_SCHEMA}
        r.update(flow_id=i, capture="lab.pcap", src_ip="192.0.2.1", dst_ip="198.51.100.1", ip_proto=17,
                 ip_version=4, end_reason="eof", packets=10, bytes=1000)
        row = dict(row)
        start = T0 + dt.timedelta(seconds=row.pop("t", 0))
        dur = row.pop("dur", 10)
        r["first_seen"], r["last_seen"], r["duration_ms"] = start, start + dt.timedelta(seconds=dur), dur * 1000.0
        proto = row.pop("proto", None)
        if proto is not None:
            r.update(is_vpn=True, vpn_protocol=proto, detection="signature", confidence=0.99,
                     evidence=f"{proto} handshake seen")
        r.update(row)
        if ":" in r["src_ip"]:
            r["ip_version"] = 6
        full.append(r)
    return pa.Table.from_pylist(full, schema=CLASSIFY_SCHEMA)
