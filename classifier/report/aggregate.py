"""From VPN flows to the answers a report gives: who uses which VPN, registered or not.

Why one row per client, server and protocol: an analyst acts on "host A runs WireGuard
to B", not on the hundreds of flows (rekeys, reconnects) that make it up. Every
aggregate is an Arrow ``group_by``; nothing here loops over flows in Python.

"Client" is the flow's initiator (``src_ip``) and "server" its responder, as in the
flow table.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_TS = pa.timestamp("ns", tz="UTC")

#: Columns kept in memory for every VPN flow (no lists, no payload).
VPN_COLUMNS = (
    "flow_id", "capture", "src_ip", "dst_ip", "src_port", "dst_port", "ip_proto", "first_seen", "last_seen",
    "packets", "bytes", "vpn_protocol", "confidence", "detection", "evidence", "midflow",
    "registered", "registration_id", "organization", "matched_endpoint",
)


def _f(name: str, type_: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, type_, metadata={"doc": doc})


VPN_USE_SCHEMA = pa.schema([
    _f("client_ip", pa.string(), "initiator of the flows"),
    _f("server_ip", pa.string(), "responder of the flows"),
    _f("vpn_protocol", pa.string(), "VPN protocol (\"unknown\" when the model could not name it)"),
    _f("flows", pa.int64(), "VPN flows between client and server with this protocol"),
    _f("packets", pa.int64(), "packets of those flows, both directions"),
    _f("bytes", pa.int64(), "IP bytes of those flows, both directions"),
    _f("first_seen", _TS, "first packet of the first flow, UTC"),
    _f("last_seen", _TS, "last packet of the last flow, UTC"),
    _f("registered", pa.bool_(), "every one of these flows had an endpoint on the registered-IP list"),
    _f("registered_flows", pa.int64(), "flows with a registered endpoint"),
    _f("unregistered_flows", pa.int64(), "flows with no registered endpoint"),
    _f("registration_id", pa.string(), "registration id of the registered flows (the smallest if several)"),
    _f("organization", pa.string(), "organization of that registration"),
    _f("matched_endpoint", pa.string(), "src or dst: which endpoint is registered"),
    _f("server_port", pa.uint16(), "responder port of the strongest flow (null without ports)"),
    _f("ip_proto", pa.uint8(), "IP protocol of the strongest flow"),
    _f("detection", pa.string(), "signature, model or endpoint: how the strongest flow was recognised"),
    _f("confidence", pa.float64(), "confidence of the strongest flow"),
    _f("evidence", pa.string(), "evidence sentence of the strongest flow (signature first, then confidence)"),
    _f("example_capture", pa.string(), "capture holding the strongest flow"),
    _f("example_flow_id", pa.uint64(), "flow_id of the strongest flow in flows.parquet"),
])

_KEYS = ["src_ip", "dst_ip", "vpn_protocol"]


def _prepared(vpn: pa.Table) -> pa.Table:
    """Fill the protocol, add 0/1 registration counters and a strength order."""
    proto = pc.fill_null(vpn.column("vpn_protocol"), "unknown")
    reg = pc.cast(pc.fill_null(vpn.column("registered"), False), pa.int64())
    t = vpn.set_column(vpn.schema.get_field_index("vpn_protocol"), "vpn_protocol", proto)
    t = t.append_column("reg_flow", reg).append_column("unreg_flow", pc.subtract(1, reg))
    sig_rank = pc.cast(pc.not_equal(pc.fill_null(t.column("detection"), ""), "signature"), pa.int8())
    t = t.append_column("sig_rank", sig_rank)
    t = t.append_column("conf_key", pc.fill_null(t.column("confidence"), -1.0))
    return t.sort_by([("sig_rank", "ascending"), ("conf_key", "descending"), ("first_seen", "ascending")])


def vpn_use(vpn: pa.Table) -> pa.Table:
    """One row per (client, server, protocol) of a VPN flow table (``VPN_COLUMNS``)."""
    if vpn.num_rows == 0:
        return VPN_USE_SCHEMA.empty_table()
    t = _prepared(vpn)
    g = t.group_by(_KEYS, use_threads=False).aggregate([
        ("flow_id", "count"), ("packets", "sum"), ("bytes", "sum"),
        ("first_seen", "min"), ("last_seen", "max"),
        ("reg_flow", "sum"), ("unreg_flow", "sum"),
        ("registration_id", "min"), ("organization", "min"), ("matched_endpoint", "min"),
        ("dst_port", "first"), ("ip_proto", "first"), ("detection", "first"), ("confidence", "max"),
        ("evidence", "first"), ("capture", "first"), ("flow_id", "first"),
    ])
    unreg = g.column("unreg_flow_sum")
    out = pa.table({
        "client_ip": g.column("src_ip"),
        "server_ip": g.column("dst_ip"),
        "vpn_protocol": g.column("vpn_protocol"),
        "flows": g.column("flow_id_count"),
        "packets": g.column("packets_sum"),
        "bytes": g.column("bytes_sum"),
        "first_seen": g.column("first_seen_min"),
        "last_seen": g.column("last_seen_max"),
        "registered": pc.equal(unreg, 0),
        "registered_flows": g.column("reg_flow_sum"),
        "unregistered_flows": unreg,
        "registration_id": g.column("registration_id_min"),
        "organization": g.column("organization_min"),
        "matched_endpoint": g.column("matched_endpoint_min"),
        "server_port": g.column("dst_port_first"),
        "ip_proto": g.column("ip_proto_first"),
        "detection": g.column("detection_first"),
        "confidence": g.column("confidence_max"),
        "evidence": g.column("evidence_first"),
        "example_capture": g.column("capture_first"),
        "example_flow_id": g.column("flow_id_first"),
    })
    out = out.cast(VPN_USE_SCHEMA)
    return out.sort_by([("registered", "ascending"), ("bytes", "descending"),
                        ("client_ip", "ascending"), ("server_ip", "ascending")])


def unregistered_flows(vpn: pa.Table) -> pa.Table:
    """The VPN flows with no registered endpoint."""
    if vpn.num_rows == 0:
        return vpn
    return vpn.filter(pc.invert(pc.fill_null(vpn.column("registered"), False)))


def unregistered_use(vpn: pa.Table) -> pa.Table:
    """``vpn_use`` over the unregistered flows only: every row is one unregistered finding."""
    return vpn_use(unregistered_flows(vpn))


def top_endpoints(vpn: pa.Table, role: str, n: int | None = None) -> pa.Table:
    """Unregistered VPN use per client (``role='client'``) or server: flows, bytes, peers,
    protocols, first and last seen; largest by bytes first."""
    key, peer = ("src_ip", "dst_ip") if role == "client" else ("dst_ip", "src_ip")
    un = unregistered_flows(vpn)
    if un.num_rows == 0:
        return pa.table({
            "address": pa.array([], pa.string()), "flows": pa.array([], pa.int64()),
            "bytes": pa.array([], pa.int64()), "peers": pa.array([], pa.int64()),
            "protocols": pa.array([], pa.string()),
            "first_seen": pa.array([], _TS), "last_seen": pa.array([], _TS),
        })
    un = un.set_column(un.schema.get_field_index("vpn_protocol"), "vpn_protocol",
                       pc.fill_null(un.column("vpn_protocol"), "unknown"))
    g = un.group_by([key]).aggregate([
        ("flow_id", "count"), ("bytes", "sum"), (peer, "count_distinct"), ("vpn_protocol", "distinct"),
        ("first_seen", "min"), ("last_seen", "max"),
    ])
    protos = [", ".join(sorted(p)) for p in g.column("vpn_protocol_distinct").to_pylist()]
    out = pa.table({
        "address": g.column(key),
        "flows": g.column("flow_id_count"),
        "bytes": g.column("bytes_sum"),
        "peers": pc.cast(g.column(f"{peer}_count_distinct"), pa.int64()),
        "protocols": pa.array(protos, pa.string()),
        "first_seen": g.column("first_seen_min"),
        "last_seen": g.column("last_seen_max"),
    }).sort_by([("bytes", "descending"), ("flows", "descending"), ("address", "ascending")])
    return out.slice(0, n) if n is not None else out


def protocol_mix(vpn: pa.Table) -> pa.Table:
    """Per VPN protocol: flows, bytes, registered and unregistered flows, clients."""
    if vpn.num_rows == 0:
        return pa.table({
            "vpn_protocol": pa.array([], pa.string()), "flows": pa.array([], pa.int64()),
            "bytes": pa.array([], pa.int64()), "registered_flows": pa.array([], pa.int64()),
            "unregistered_flows": pa.array([], pa.int64()), "clients": pa.array([], pa.int64()),
        })
    t = _prepared(vpn)
    g = t.group_by(["vpn_protocol"]).aggregate([
        ("flow_id", "count"), ("bytes", "sum"), ("reg_flow", "sum"), ("unreg_flow", "sum"),
        ("src_ip", "count_distinct"),
    ])
    return pa.table({
        "vpn_protocol": g.column("vpn_protocol"),
        "flows": g.column("flow_id_count"),
        "bytes": g.column("bytes_sum"),
        "registered_flows": g.column("reg_flow_sum"),
        "unregistered_flows": g.column("unreg_flow_sum"),
        "clients": pc.cast(g.column("src_ip_count_distinct"), pa.int64()),
    }).sort_by([("bytes", "descending"), ("vpn_protocol", "ascending")])


def registered_use(vpn: pa.Table) -> pa.Table:
    """Per registration: flows, bytes and clients of the registered VPN flows."""
    reg = vpn.filter(pc.fill_null(vpn.column("registered"), False)) if vpn.num_rows else vpn
    if reg.num_rows == 0:
        return pa.table({
            "registration_id": pa.array([], pa.string()), "organization": pa.array([], pa.string()),
            "flows": pa.array([], pa.int64()), "bytes": pa.array([], pa.int64()),
            "clients": pa.array([], pa.int64()),
        })
    g = reg.group_by(["registration_id", "organization"]).aggregate([
        ("flow_id", "count"), ("bytes", "sum"), ("src_ip", "count_distinct"),
    ])
    return pa.table({
        "registration_id": g.column("registration_id"),
        "organization": g.column("organization"),
        "flows": g.column("flow_id_count"),
        "bytes": g.column("bytes_sum"),
        "clients": pc.cast(g.column("src_ip_count_distinct"), pa.int64()),
    }).sort_by([("bytes", "descending"), ("registration_id", "ascending")])


def time_series(vpn: pa.Table, bins: int = 60) -> tuple[np.ndarray, list[str], np.ndarray, float]:
    """VPN bytes per time bin and protocol, each flow counted in the bin of its first_seen.

    Returns (bin edges in ns, protocols, bytes array of shape (protocols, bins), bin width
    in seconds); the bin width is rounded to a readable step.
    """
    if vpn.num_rows == 0:
        return np.zeros(0, np.int64), [], np.zeros((0, 0)), 0.0
    t0 = pc.cast(vpn.column("first_seen"), pa.int64()).to_numpy()
    nbytes = vpn.column("bytes").to_numpy().astype(float)
    enc = pc.dictionary_encode(pc.fill_null(vpn.column("vpn_protocol"), "unknown")).combine_chunks()
    span_s = max((t0.max() - t0.min()) / 1e9, 1.0)
    width = next((s for s in _STEPS if span_s / s <= bins), _STEPS[-1])
    start = (t0.min() // int(width * 1e9)) * int(width * 1e9)
    nb = int((t0.max() - start) // int(width * 1e9)) + 1
    edges = start + np.arange(nb + 1, dtype=np.int64) * int(width * 1e9)
    which = ((t0 - start) // int(width * 1e9)).astype(np.int64)
    # one bincount over (protocol, bin) cells; protocols in name order
    names = enc.dictionary.to_pylist()
    order = np.argsort(names)
    rank = np.empty(len(names), np.int64)
    rank[order] = np.arange(len(names))
    row = rank[enc.indices.to_numpy()]
    data = np.bincount(row * nb + which, weights=nbytes, minlength=len(names) * nb).reshape(len(names), nb)
    return edges, [names[i] for i in order], data, width


_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
          2 * 86400, 7 * 86400, 30 * 86400)
