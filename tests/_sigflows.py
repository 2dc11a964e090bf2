"""Build FlowBatch objects from lists of payloads, for signature tests.

A flow is given as its transport and ports plus ``(direction, payload)`` pairs in
arrival order; the helper fills a full FLOW_SCHEMA row and the PayloadHeads exactly
as the engine documents them (first 8 payload packets per direction, 64 bytes each,
wire length kept, TCP sequence numbers advancing by the payload length).
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from classifier.flows.batch import HEAD_BYTES, HEAD_PACKETS_PER_DIR, FlowBatch, PayloadHeads
from classifier.flows.schema import FLOW_SCHEMA

T0 = dt.datetime(2024, 3, 1, 9, 0, tzinfo=dt.UTC)
T0_NS = int(T0.timestamp() * 1e9)


@dataclass
class F:
    """One synthetic flow."""

    packets: list[tuple[int, bytes]]
    proto: int = 17
    sport: int | None = 40000
    dport: int | None = 51820
    src_ip: str = "192.0.2.10"
    dst_ip: str = "198.51.100.20"
    syn: bool = True  # TCP: the handshake was captured
    extra: dict[str, Any] = field(default_factory=dict)


def _default(f: pa.Field) -> Any:
    t = f.type
    if pa.types.is_list(t):
        return []
    if pa.types.is_timestamp(t):
        return T0
    if pa.types.is_string(t):
        return None if f.nullable else ""
    if pa.types.is_floating(t):
        return None if f.nullable else 0.0
    return None if f.nullable else 0


def batch(*flows: F) -> FlowBatch:
    rows = []
    heads = PayloadHeads.empty(len(flows))
    for i, fl in enumerate(flows):
        r = {f.name: _default(f) for f in FLOW_SCHEMA}
        n = [sum(1 for d, _ in fl.packets if d == k) for k in (0, 1)]
        r.update(flow_id=i, capture="test.pcap", src_ip=fl.src_ip, dst_ip=fl.dst_ip,
                 ip_proto=fl.proto, ip_version=6 if ":" in fl.src_ip else 4, end_reason="eof",
                 packets=len(fl.packets), bytes=sum(len(p) + 28 for _, p in fl.packets),
                 src2dst_packets=n[0], dst2src_packets=n[1], duration_ms=float(len(fl.packets)))
        if fl.proto in (6, 17):
            r.update(src_port=fl.sport, dst_port=fl.dport)
        if fl.proto == 6:
            r["first_tcp_flags"] = 0x02 if fl.syn else 0x18
        r.update(fl.extra)
        rows.append(r)
        seq = [1000, 5000]
        j = 0
        per_dir = [0, 0]
        for k, (d, payload) in enumerate(fl.packets):
            if not payload or per_dir[d] >= HEAD_PACKETS_PER_DIR:
                seq[d] += len(payload)
                continue
            per_dir[d] += 1
            stored = payload[:HEAD_BYTES]
            heads.dirs[i, j] = d
            heads.lens[i, j] = len(payload)
            heads.caps[i, j] = len(stored)
            heads.ts[i, j] = T0_NS + k * 1_000_000
            heads.seq[i, j] = seq[d] if fl.proto == 6 else 0
            heads.data[i, j, : len(stored)] = np.frombuffer(stored, np.uint8)
            seq[d] += len(payload)
            j += 1
        heads.count[i] = j
    return FlowBatch(pa.Table.from_pylist(rows, schema=FLOW_SCHEMA), heads)


def tcp_framed(*records: bytes) -> bytes:
    """OpenVPN-over-TCP style framing: each record prefixed with its 2-byte length."""
    return b"".join(struct.pack("!H", len(r)) + r for r in records)


def rand(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
