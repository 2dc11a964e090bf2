"""Raw flow state rows -> the documented flow table (FLOW_SCHEMA) and payload heads.

Everything here is vectorized over all rows at once: statistics from the Welford
accumulators, addresses formatted by Arrow kernels, list columns built from offsets.
"""

from __future__ import annotations

import socket

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from classifier.flows import state as S
from classifier.flows.batch import FlowBatch, PayloadHeads
from classifier.flows.head_stats import head_statistics, payload_bursts
from classifier.flows.schema import FIRST_PACKETS, FLOW_SCHEMA

_BIG = np.int64(1) << np.int64(62)
_V4_PREFIX = np.uint64(0xFFFF) << np.uint64(32)


def format_ips(hi: np.ndarray, lo: np.ndarray) -> pa.Array:
    """128-bit addresses (IPv4 as ::ffff:a.b.c.d) -> strings, dotted quads for IPv4."""
    n = len(hi)
    is_v4 = (hi == 0) & ((lo & ~np.uint64(0xFFFFFFFF)) == _V4_PREFIX)
    out = np.empty(n, dtype=object)
    if is_v4.any():
        v = (lo[is_v4] & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        octets = [pa.array((v >> np.uint32(s)) & np.uint32(0xFF)).cast(pa.string()) for s in (24, 16, 8, 0)]
        out[is_v4] = pc.binary_join_element_wise(*octets, ".").to_numpy(zero_copy_only=False)
    if (~is_v4).any():
        idx = np.flatnonzero(~is_v4)
        packed = np.empty((len(idx), 2), ">u8")
        packed[:, 0] = hi[idx]
        packed[:, 1] = lo[idx]
        raw = packed.tobytes()
        out[idx] = [socket.inet_ntop(socket.AF_INET6, raw[k:k + 16]) for k in range(0, len(raw), 16)]
    return pa.array(out, pa.string())


def _masked(values: np.ndarray, valid: np.ndarray, type_: pa.DataType) -> pa.Array:
    return pa.array(values, type_, mask=~valid)


def _list_column(values: np.ndarray, counts: np.ndarray, type_: pa.DataType) -> pa.Array:
    mask = np.arange(values.shape[1])[None, :] < counts[:, None]
    offsets = np.zeros(len(counts) + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[mask], type_))


def finalize(st: S.FlowState, capture: str) -> FlowBatch:
    """Turn raw state rows into a FlowBatch (rows in the given order)."""
    n = len(st)
    si, sf, keys = st.si, st.sf, st.keys
    init_low = si[:, S.INIT_LOW] == 1
    lo_ip = format_ips(keys[:, 0], keys[:, 1]).to_numpy(zero_copy_only=False)
    hi_ip = format_ips(keys[:, 2], keys[:, 3]).to_numpy(zero_copy_only=False)
    port_lo = ((keys[:, 4] >> np.uint64(16)) & np.uint64(0xFFFF)).astype(np.uint16)
    port_hi = (keys[:, 4] & np.uint64(0xFFFF)).astype(np.uint16)
    has_ports = si[:, S.HAS_PORTS] == 1

    cols: dict[str, pa.Array] = {}
    cols["flow_id"] = pa.array(si[:, S.FLOW_ID].astype(np.uint64))
    cols["capture"] = pa.array(np.full(n, capture, dtype=object), pa.string())
    cols["src_ip"] = pa.array(np.where(init_low, lo_ip, hi_ip), pa.string())
    cols["dst_ip"] = pa.array(np.where(init_low, hi_ip, lo_ip), pa.string())
    cols["src_port"] = _masked(np.where(init_low, port_lo, port_hi), has_ports, pa.uint16())
    cols["dst_port"] = _masked(np.where(init_low, port_hi, port_lo), has_ports, pa.uint16())
    cols["ip_proto"] = pa.array(si[:, S.PROTO].astype(np.uint8))
    cols["ip_version"] = pa.array(si[:, S.IPVER].astype(np.uint8))
    vlan = si[:, S.VLAN]
    cols["vlan_id"] = _masked(np.maximum(vlan, 0).astype(np.uint16), vlan >= 0, pa.uint16())
    first, last = si[:, S.FIRST], si[:, S.LAST]
    cols["first_seen"] = pa.array(first, pa.timestamp("ns", tz="UTC"))
    cols["last_seen"] = pa.array(last, pa.timestamp("ns", tz="UTC"))
    cols["duration_ms"] = pa.array((last - first) / 1e6)
    cols["end_reason"] = pa.array(S.REASONS[si[:, S.END]], pa.string())

    n0, n1 = si[:, S.PK0], si[:, S.PK0 + 1]
    cols["packets"] = pa.array(n0 + n1)
    cols["bytes"] = pa.array(si[:, S.BY0] + si[:, S.BY0 + 1])
    cols["src2dst_packets"] = pa.array(n0)
    cols["src2dst_bytes"] = pa.array(si[:, S.BY0])
    cols["dst2src_packets"] = pa.array(n1)
    cols["dst2src_bytes"] = pa.array(si[:, S.BY0 + 1])
    cols["src2dst_payload_bytes"] = pa.array(si[:, S.PL0])
    cols["dst2src_payload_bytes"] = pa.array(si[:, S.PL0 + 1])
    cols["src2dst_payload_packets"] = pa.array(si[:, S.PPK0])
    cols["dst2src_payload_packets"] = pa.array(si[:, S.PPK0 + 1])
    for d, name in ((0, "src2dst"), (1, "dst2src")):
        hist = si[:, S.PHIST0 + d * S.N_HIST: S.PHIST0 + (d + 1) * S.N_HIST]
        cols[f"{name}_payload_hist"] = _list_column(hist, np.full(n, S.N_HIST, np.int32), pa.int64())
    cols["truncated_packets"] = pa.array(si[:, S.TRUNC])
    cols["fragments"] = pa.array(si[:, S.FRAGS])

    # Per-direction and combined statistics (sizes in bytes, inter-arrival in ms).
    stats: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for d, name in ((0, "src2dst"), (1, "dst2src")):
        cnt = si[:, S.PK0 + d]
        has = cnt > 0
        safe = np.maximum(cnt, 1)
        ic = cnt - 1
        has_i = ic > 0
        stats[name] = {
            "size_min": (si[:, S.SMIN0 + d], has),
            "size_max": (si[:, S.SMAX0 + d], has),
            "size_mean": (sf[:, S.F_SMEAN0 + d], has),
            "size_std": (np.sqrt(np.maximum(sf[:, S.F_SM2_0 + d], 0) / safe), has),
            "iat_min_ms": (si[:, S.IMIN0 + d] / 1e6, has_i),
            "iat_max_ms": (si[:, S.IMAX0 + d] / 1e6, has_i),
            "iat_mean_ms": (sf[:, S.F_IMEAN0 + d] / 1e6, has_i),
            "iat_std_ms": (np.sqrt(np.maximum(sf[:, S.F_IM2_0 + d], 0) / np.maximum(ic, 1)) / 1e6, has_i),
        }
    ntot = n0 + n1
    safe = np.maximum(ntot, 1)
    m0, m1 = sf[:, S.F_SMEAN0], sf[:, S.F_SMEAN0 + 1]
    mean = (n0 * m0 + n1 * m1) / safe
    m2 = sf[:, S.F_SM2_0] + sf[:, S.F_SM2_0 + 1] + (m1 - m0) ** 2 * n0 * n1 / safe
    bic = ntot - 1
    has_b = bic > 0
    stats[""] = {
        "size_min": (np.minimum(si[:, S.SMIN0], si[:, S.SMIN0 + 1]), ntot > 0),
        "size_max": (np.maximum(si[:, S.SMAX0], si[:, S.SMAX0 + 1]), ntot > 0),
        "size_mean": (mean, ntot > 0),
        "size_std": (np.sqrt(np.maximum(m2, 0) / safe), ntot > 0),
        "iat_min_ms": (si[:, S.BIMIN] / 1e6, has_b),
        "iat_max_ms": (si[:, S.BIMAX] / 1e6, has_b),
        "iat_mean_ms": (sf[:, S.F_BIMEAN] / 1e6, has_b),
        "iat_std_ms": (np.sqrt(np.maximum(sf[:, S.F_BIM2], 0) / np.maximum(bic, 1)) / 1e6, has_b),
    }
    for prefix, group in stats.items():
        for stat, (values, valid) in group.items():
            name = f"{prefix}_{stat}" if prefix else stat
            type_ = FLOW_SCHEMA.field(name).type
            if pa.types.is_integer(type_):
                values = np.where(valid, values, 0).astype(np.int32)
            cols[name] = _masked(values, valid, type_)

    for bit, flag in enumerate(("fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr")):
        cols[f"tcp_{flag}"] = pa.array(si[:, S.TCP0 + bit])
    ff = si[:, S.FIRSTFLAGS]
    cols["first_tcp_flags"] = _masked(np.maximum(ff, 0).astype(np.uint8), ff >= 0, pa.uint8())

    fn = si[:, S.FN].astype(np.int32)
    cols["first_sizes"] = _list_column(st.fsize, fn, pa.int32())
    cols["first_dirs"] = _list_column(st.fdir.astype(np.int8), fn, pa.int8())
    iat = np.zeros((n, FIRST_PACKETS))
    iat[:, 1:] = np.maximum(np.diff(st.fts, axis=1), 0) / 1e6
    cols["first_iats_ms"] = _list_column(iat, fn, pa.float64())

    heads = PayloadHeads(
        count=si[:, S.HEADN].astype(np.uint8), dirs=st.hdir, lens=st.hlen, caps=st.hcap, ts=st.hts,
        seq=st.hseq, data=st.hdata,
    )
    for name, (values, valid) in head_statistics(heads).items():
        cols[name] = _masked(values, valid, pa.float64())
    bursts, n_bursts = payload_bursts(heads, si[:, S.PPK0:S.PPK0 + 2])
    cols["payload_bursts"] = _list_column(bursts, n_bursts, pa.int32())

    table = pa.Table.from_arrays([cols[f.name] for f in FLOW_SCHEMA], schema=FLOW_SCHEMA)
    return FlowBatch(table, heads)
