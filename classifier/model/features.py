"""Flow table -> feature matrix: the only inputs the VPN model ever sees.

Why a pure function of the flow table: the same rows come out of ``vpnid flows``
offline, ``vpnid batch`` and ``vpnid live``, so a flow gets the same features (and the
same verdict) wherever it was metered. Nothing here looks at other rows.

What is deliberately left out (shortcut learning): IP addresses, ports, VLAN, TTL,
timestamps, flow ids, capture names and the end reason. A model that
learns "port 1194" or "the lab's 10.0.0.0/8" scores well on its own captures and
fails on everybody else's; these columns identify *where* a capture was made, not
*what* the traffic is. Flow volume and length (packets, bytes, duration, rates) are
left out for the same reason: they measure how long the capture ran (lab captures
last seconds), and with them the model learned "long flow = VPN" and did worse on
captures made elsewhere (docs/model.md). Counts enter only as ratios. FIN and RST
counts are left out too: whether a flow's end was captured says when the capture
stopped (lab tunnels are still up when it does), not what the flow carried.

Absolute timing is left out (inter-arrival times, gaps between the first packets,
response delays in milliseconds): they measure the path and the machine a capture was made
on, not the protocol. Relative timing is in, as of feature version 13: the spread of each
direction's gaps against their mean, the longest gap against the mean, the two directions'
mean gaps against each other, and each of the first gaps against their median. These are
scale-free, so a path that is ten times slower gives the same values, and they describe a
tunnel's rhythm (a tunnel's gaps follow the inner traffic's, and its keepalives tick). They
became usable once most training captures crossed the lab's delay line (``vpnid lab capture
--path``, drawn delay, jitter, loss, rate and MTU). Before that the lab's links answered in
microseconds, and with timing features the model scored the public corpus (real paths) at
ROC-AUC 0.85 against 0.91 without them (docs/model.md, Features).

The transport (TCP / UDP / other) is kept as a category
because the tunnel rhythm reads differently over TCP (outer ACKs, records split
across segments) than over UDP (one datagram per inner packet); docs/model.md
discusses the risk.

Every feature is scale-free (counts enter as ratios) or a size in bytes, and missing
values stay NaN (the gradient-boosting model handles them natively): a flow that
carried no payload simply has no payload-byte statistics.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from classifier.flows.schema import BURSTS, FIRST_PACKETS, HEAD_STAT_COLUMNS, HEAD_STAT_DOCS
from classifier.flows.state import N_HIST, PAYLOAD_HIST_EDGES
from classifier.packets.batch import IPV6_EXTRA_HEADER

#: Bump when a feature's definition changes: a model trained on another version is refused.
FEATURE_VERSION = 13


#: How random the payload looks (``classifier/flows/head_stats.py``): fully encrypted
#: proxies and tunnels start with random bytes; most other protocols start with a header.
#: Flow-table byte statistic -> feature name (prefixed ``up_`` / ``down_``).
_BYTE_FEATURES = dict(zip(HEAD_STAT_COLUMNS, ("first_bits", "first_printable", "payload_bits", "tls_frac",
                                               "inner_header_frac", "inner_ppp_frac", "repeat_bytes", "counter_frac",
                                               "counter_offset", "stun_frac", "length_frac", "length_offset"),
                          strict=True))

#: Flow-table columns the features read (all others are ignored, identifiers included).
INPUT_COLUMNS: tuple[str, ...] = (
    "ip_proto", "packets", "bytes",
    "src2dst_packets", "src2dst_bytes", "dst2src_packets", "dst2src_bytes",
    "src2dst_payload_bytes", "dst2src_payload_bytes",
    *(f"{p}{s}" for p in ("", "src2dst_", "dst2src_")
      for s in ("size_min", "size_max", "size_mean", "size_std")),
    "tcp_syn", "tcp_ack", "tcp_psh", "tcp_urg", "tcp_ece", "tcp_cwr",
    "first_tcp_flags", "first_sizes", "first_dirs", "payload_bursts", "ip_version",
    "src2dst_payload_packets", "dst2src_payload_packets", "src2dst_payload_hist", "dst2src_payload_hist",
    *(f"{d}_{s}" for d in ("src2dst", "dst2src") for s in HEAD_STAT_COLUMNS),
    *(f"{d}_iat_{s}_ms" for d in ("src2dst", "dst2src") for s in ("mean", "std", "max")), "first_iats_ms",
)

#: List columns (read by :func:`_padded`, not as scalars).
_LIST_COLUMNS = frozenset({"first_sizes", "first_dirs", "payload_bursts", "src2dst_payload_hist",
                           "dst2src_payload_hist", "first_iats_ms"})

#: Columns that must never become features (checked by the tests).
FORBIDDEN_COLUMNS: frozenset[str] = frozenset({
    "flow_id", "capture", "src_ip", "dst_ip", "src_port", "dst_port", "vlan_id",
    "first_seen", "last_seen", "end_reason", "truncated_packets", "fragments",
})

#: Early packets a size looks "small" (control, ACK or keepalive) below, bytes.
SMALL_PACKET = 100
#: Early client packet size range of a (possibly nested) TLS ClientHello, bytes.
HELLO_RANGE = (220, 800)

_DIRS = (("", "all"), ("up_", "src2dst_"), ("down_", "dst2src_"))


def _names() -> list[str]:
    n = ["is_tcp", "is_udp", "is_icmp", "up_pkt_frac", "up_byte_frac", "payload_frac",
         "hdr_per_pkt", "up_payload_mean", "down_payload_mean"]
    for short, _ in _DIRS:
        n += [f"{short}size_min", f"{short}size_max", f"{short}size_mean", f"{short}size_std",
              f"{short}size_cv", f"{short}size_mean_pos", f"{short}size_bimodality"]
    n += ["syn_frac", "ack_frac", "psh_frac", "urg_ecn_frac", "starts_with_syn"]
    n += [f"first_size_{i}" for i in range(FIRST_PACKETS)]
    n += ["first_dir_switches", "first_up_frac", "first_distinct_size_frac", "first_small_frac",
          "first_up_max", "first_down_max", "first_up_min", "first_down_min",
          "first_size_shift_match", "first_hello_like", "late_hello_like"]
    n += [f"burst_{i}" for i in range(BURSTS)]
    n += RHYTHM_NAMES
    n += BYTES_NAMES
    n += TIMING_NAMES
    return n


#: Whole-flow payload rhythm (payload-carrying packet counts and payload-size histograms).
#: ``light`` is the direction with fewer payload bytes (the ACK side of a download),
#: ``heavy`` the other one: a tunnel's inner ACKs show up in the light direction whoever
#: initiated the flow.
RHYTHM_NAMES: list[str] = [
    "up_payload_pkt_frac", "down_payload_pkt_frac", "payload_pkt_balance", "light_data_mean", "heavy_data_mean",
    *(f"{d}_hist_{i}" for d in ("light", "heavy") for i in range(N_HIST)),
    "light_hist_entropy", "heavy_hist_entropy", "light_hist_top", "heavy_hist_top",
    "light_small_frac", "light_small_per_heavy", "heavy_large_frac", "hist_overlap",
]

BYTES_NAMES: list[str] = [
    *(f"{d}_{s}" for d in ("up", "down") for s in _BYTE_FEATURES.values()),
    "first_bits_dev", "fully_encrypted_start",
]
#: Gaps between the first packets that the relative timing reads (gap 0, before the first
#: packet, is always 0 and is skipped).
TIMING_GAPS = 8

#: Relative timing: every one a ratio of gaps, so it reads the same on a slow path and a fast one.
TIMING_NAMES: list[str] = [
    "up_iat_cv", "down_iat_cv", "up_iat_max_over_mean", "down_iat_max_over_mean", "iat_mean_log_ratio",
    *(f"first_gap_{i}_rel" for i in range(1, TIMING_GAPS)),
]

#: Set bits per byte of random data, and the band around it where a first payload
#: counts as random (Wu et al., USENIX Security 2023: 3.4-4.6 over whole packets; the
#: heads hold 64 bytes, whose popcount mean has a standard deviation of about 0.18).
RANDOM_BITS, RANDOM_BAND = 4.0, 0.6
#: Most printable share of a random-looking first payload (random bytes: 0.37).
RANDOM_MAX_PRINTABLE = 0.5

#: Column order of :func:`feature_matrix`.
FEATURE_NAMES: tuple[str, ...] = tuple(_names())

#: One line per feature for docs/model.md, model cards and evidence strings.
FEATURE_DOCS: dict[str, str] = {
    "is_tcp": "transport is TCP (1) or not (0)",
    "is_udp": "transport is UDP (1) or not (0)",
    "is_icmp": "ICMP or ICMPv6 (1) or not (0)",
    "up_pkt_frac": "share of packets sent by the initiator",
    "up_byte_frac": "share of bytes sent by the initiator",
    "payload_frac": "transport payload bytes / IP bytes",
    "hdr_per_pkt": "IP + transport header bytes per packet (as over IPv4: an IPv6 header counts 20 bytes)",
    "up_payload_mean": "mean transport payload per initiator packet",
    "down_payload_mean": "mean transport payload per responder packet",
    "syn_frac": "TCP SYN segments / packets", "ack_frac": "TCP ACK segments / packets",
    "psh_frac": "TCP PSH segments / packets", "urg_ecn_frac": "TCP URG, ECE or CWR segments / packets",
    "starts_with_syn": "the first packet seen is a TCP SYN (the start of the flow was seen)",
    "first_dir_switches": "direction changes among the first packets (request/response turns)",
    "first_up_frac": "share of the first packets sent by the initiator",
    "first_distinct_size_frac": "distinct sizes / count among the first packets (size modality)",
    "first_small_frac": f"share of the first packets of at most {SMALL_PACKET} bytes",
    "first_up_max": "largest of the first packets from the initiator",
    "first_down_max": "largest of the first packets from the responder",
    "first_up_min": "smallest of the first packets from the initiator",
    "first_down_min": "smallest of the first packets from the responder",
    "first_size_shift_match": "share of early responder sizes that equal an early initiator size "
                              "(a tunnel mirrors both directions of inner traffic with one overhead)",
    "first_hello_like": f"initiator packets of {HELLO_RANGE[0]}-{HELLO_RANGE[1]} bytes among the first "
                        "packets (handshake-sized)",
    "late_hello_like": "handshake-sized initiator packets after the first four packets "
                       "(a nested handshake inside the outer one)",
    "up_payload_pkt_frac": "share of the initiator's packets that carry transport payload (TCP pure ACKs do not)",
    "down_payload_pkt_frac": "share of the responder's packets that carry transport payload",
    "payload_pkt_balance": "payload-carrying packets of the lighter direction / those of the heavier one "
                           "(a tunnelled download sends encrypted inner ACKs back; plain TCP sends pure ACKs)",
    "light_data_mean": "mean payload of the light direction's payload-carrying packets, bytes",
    "heavy_data_mean": "mean payload of the heavy direction's payload-carrying packets, bytes",
    "light_hist_entropy": "entropy of the light direction's payload-size histogram / log(bins) (size modality)",
    "heavy_hist_entropy": "entropy of the heavy direction's payload-size histogram / log(bins)",
    "light_hist_top": "share of the light direction's payload packets in its most common size bin",
    "heavy_hist_top": "share of the heavy direction's payload packets in its most common size bin",
    "light_small_frac": "share of the light direction's payload packets under 128 bytes of payload "
                        "(encapsulated inner ACKs)",
    "light_small_per_heavy": "light-direction payload packets under 128 bytes per heavy-direction payload "
                             "packet (about one per one or two segments inside a tunnel)",
    "heavy_large_frac": "share of the heavy direction's payload packets of 1024 bytes or more",
    "hist_overlap": "overlap of the two directions' normalised payload-size histograms (sum of minima)",
    "first_bits_dev": "|set bits per byte - 4| of the initiator's first payload (0: looks random)",
    "up_iat_cv": "std / mean of the initiator's inter-arrival times (how regular its packets come)",
    "down_iat_cv": "std / mean of the responder's inter-arrival times",
    "up_iat_max_over_mean": "the initiator's longest gap / its mean gap (idle pauses, keepalive ticks)",
    "down_iat_max_over_mean": "the responder's longest gap / its mean gap",
    "iat_mean_log_ratio": "log(initiator's mean gap / responder's mean gap): which side sends more often",
    "fully_encrypted_start": "the initiator's first payload looks random: set bits per byte within "
                             f"{RANDOM_BITS - RANDOM_BAND:g}-{RANDOM_BITS + RANDOM_BAND:g}, at most "
                             f"{RANDOM_MAX_PRINTABLE:g} printable, no TLS/DTLS record header "
                             "(fully encrypted protocols; Wu et al. 2023); unknown for TCP without its SYN",
}
for _short, _who in (("up", "the initiator"), ("down", "the responder")):  # the flow table's own words
    FEATURE_DOCS.update({f"{_short}_{name}": HEAD_STAT_DOCS[col].format(who=_who)
                         for col, name in _BYTE_FEATURES.items()})
for _short, _who in _DIRS:
    _w = {"all": "both directions", "src2dst_": "the initiator", "dst2src_": "the responder"}[_who]
    FEATURE_DOCS.update({
        f"{_short}size_min": f"smallest IP packet of {_w} (as over IPv4)",
        f"{_short}size_max": f"largest IP packet of {_w} (as over IPv4)",
        f"{_short}size_mean": f"mean IP packet size of {_w} (as over IPv4)", f"{_short}size_std": f"std of IP packet size of {_w}",
        f"{_short}size_cv": f"size std / mean of {_w}",
        f"{_short}size_mean_pos": f"(mean - min) / (max - min) of {_w}'s sizes",
        f"{_short}size_bimodality": f"size std / half the size range of {_w} (1: two sizes only)",
    })
for _d in ("light", "heavy"):
    for _i in range(N_HIST):
        _lo = int(PAYLOAD_HIST_EDGES[_i])
        _hi = f"-{int(PAYLOAD_HIST_EDGES[_i + 1]) - 1}" if _i + 1 < N_HIST else "+"
        FEATURE_DOCS[f"{_d}_hist_{_i}"] = (f"share of the {_d} direction's payload packets with "
                                           f"{_lo}{_hi} bytes of payload")
for _i in range(FIRST_PACKETS):
    FEATURE_DOCS[f"first_size_{_i}"] = (f"IP size of packet {_i} (as over IPv4), positive from the initiator, "
                                        "negative from the responder")
for _i in range(1, TIMING_GAPS):
    FEATURE_DOCS[f"first_gap_{_i}_rel"] = (f"gap before packet {_i} / the median non-zero gap among the first "
                                          f"{TIMING_GAPS} packets (the handshake's rhythm, whatever the round trip)")
for _i in range(BURSTS):
    FEATURE_DOCS[f"burst_{_i}"] = (f"payload bytes of burst {_i} (a run of payload packets in one direction), positive "
                                   "from the initiator, negative from the responder; 0 when the flow had no more "
                                   "bursts, unknown when the payload heads did not show it in full")
assert set(FEATURE_DOCS) == set(FEATURE_NAMES), set(FEATURE_NAMES) ^ set(FEATURE_DOCS)


#: Transport kinds of ``transport_kind``: the rows of per-transport statistics (evidence medians).
TRANSPORT_KINDS = ("tcp", "udp", "other")


def transport_kind(X: np.ndarray) -> np.ndarray:
    """Per row of a feature matrix: 0 for TCP, 1 for UDP, 2 for anything else (ICMP, GRE, ESP, ...)."""
    tcp = X[:, FEATURE_NAMES.index("is_tcp")] == 1
    udp = X[:, FEATURE_NAMES.index("is_udp")] == 1
    return np.where(tcp, 0, np.where(udp, 1, 2))


def _col(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64 with nulls as NaN."""
    col = table.column(name)
    col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return pc.cast(col, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)


def _padded(table: pa.Table, name: str, dtype: type, width: int = FIRST_PACKETS) -> np.ndarray:
    """A list column as an (n, width) array padded with NaN (vectorized, no row loop)."""
    n = table.num_rows
    out = np.full((n, width), np.nan, dtype)
    col = table.column(name).combine_chunks() if table.column(name).num_chunks != 1 \
        else table.column(name).chunk(0)
    if n == 0:
        return out
    lens = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.cast(pc.list_flatten(col), pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(n), lens)
    starts = np.cumsum(lens) - lens
    pos = np.arange(len(values)) - np.repeat(starts, lens)
    keep = pos < width
    out[rows[keep], pos[keep]] = values[keep]
    return out


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = a / b
    r[~np.isfinite(r)] = np.nan
    return r


def check_columns(table: pa.Table) -> None:
    """Raise ValueError naming the flow-table columns the features need but the table lacks."""
    missing = [c for c in INPUT_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"flow table lacks column(s) the model needs: {', '.join(missing)}")


def feature_matrix(table: pa.Table) -> np.ndarray:
    """Return the (rows, len(FEATURE_NAMES)) float32 feature matrix of a flow table."""
    check_columns(table)
    n = table.num_rows
    c = {name: _col(table, name) for name in INPUT_COLUMNS if name not in _LIST_COLUMNS}
    extra = np.where(c["ip_version"] == 6, float(IPV6_EXTRA_HEADER), 0.0)
    _as_ipv4_sizes(c, extra)
    f: dict[str, np.ndarray] = {}
    proto = c["ip_proto"]
    f["is_tcp"] = (proto == 6).astype(float)
    f["is_udp"] = (proto == 17).astype(float)
    f["is_icmp"] = ((proto == 1) | (proto == 58)).astype(float)
    pk, by = c["packets"], c["bytes"]
    f["up_pkt_frac"] = _div(c["src2dst_packets"], pk)
    f["up_byte_frac"] = _div(c["src2dst_bytes"], by)
    payload = c["src2dst_payload_bytes"] + c["dst2src_payload_bytes"]
    f["payload_frac"] = _div(payload, by)
    f["hdr_per_pkt"] = _div(by - payload, pk)
    f["up_payload_mean"] = _div(c["src2dst_payload_bytes"], c["src2dst_packets"])
    f["down_payload_mean"] = _div(c["dst2src_payload_bytes"], c["dst2src_packets"])
    for short, prefix in _DIRS:
        p = "" if prefix == "all" else prefix
        lo, hi = c[f"{p}size_min"], c[f"{p}size_max"]
        mean, std = c[f"{p}size_mean"], c[f"{p}size_std"]
        f[f"{short}size_min"], f[f"{short}size_max"] = lo, hi
        f[f"{short}size_mean"], f[f"{short}size_std"] = mean, std
        f[f"{short}size_cv"] = _div(std, mean)
        f[f"{short}size_mean_pos"] = _div(mean - lo, hi - lo)
        f[f"{short}size_bimodality"] = _div(std, (hi - lo) / 2.0)
    f["syn_frac"] = _div(c["tcp_syn"], pk)
    f["ack_frac"] = _div(c["tcp_ack"], pk)
    f["psh_frac"] = _div(c["tcp_psh"], pk)
    f["urg_ecn_frac"] = _div(c["tcp_urg"] + c["tcp_ece"] + c["tcp_cwr"], pk)
    f["starts_with_syn"] = starts_with_syn(c["first_tcp_flags"]).astype(float)
    f.update(_early(table, extra))
    f.update(_bursts(table, payload))
    f.update(_rhythm(table, c))
    f.update(_bytes(c, (proto != 6) | (f["starts_with_syn"] == 1)))
    f.update(_timing(table, c))
    out = np.empty((n, len(FEATURE_NAMES)), np.float32)
    for j, name in enumerate(FEATURE_NAMES):
        out[:, j] = f[name]
    return out


def _as_ipv4_sizes(c: dict[str, np.ndarray], extra: np.ndarray) -> None:
    """Count every packet of an IPv6 flow ``extra`` bytes smaller, in place (see ``IPV6_EXTRA_HEADER``)."""
    for prefix, packets in (("", "packets"), ("src2dst_", "src2dst_packets"), ("dst2src_", "dst2src_packets")):
        for stat in ("size_min", "size_max", "size_mean"):
            c[f"{prefix}{stat}"] = c[f"{prefix}{stat}"] - extra
        c[f"{prefix}bytes"] = c[f"{prefix}bytes"] - extra * c[packets]


def _early(table: pa.Table, extra: np.ndarray) -> dict[str, np.ndarray]:
    """Features of the first packets: signed sizes and the handshake rhythm (sizes as over IPv4)."""
    sizes = _padded(table, "first_sizes", np.float64) - extra[:, None]
    dirs = _padded(table, "first_dirs", np.float64)
    valid = ~np.isnan(sizes) & ~np.isnan(dirs)
    up = valid & (dirs == 0)
    down = valid & (dirs == 1)
    cnt = valid.sum(1).astype(float)
    f: dict[str, np.ndarray] = {}
    signed = np.where(up, sizes, np.where(down, -sizes, np.nan))
    for i in range(FIRST_PACKETS):
        f[f"first_size_{i}"] = signed[:, i]
    both = valid[:, 1:] & valid[:, :-1]
    switches = both & (dirs[:, 1:] != dirs[:, :-1])
    f["first_dir_switches"] = np.where(cnt > 0, switches.sum(1), np.nan)
    f["first_up_frac"] = _div(up.sum(1).astype(float), cnt)
    # distinct sizes per row, vectorized: sort each row and count value changes
    s = np.sort(np.where(valid, sizes, np.inf), axis=1)
    with np.errstate(invalid="ignore"):
        changes = (np.diff(s, axis=1) != 0) & np.isfinite(s[:, 1:])
    distinct = np.where(cnt > 0, 1 + changes.sum(1), 0).astype(float)
    f["first_distinct_size_frac"] = _div(distinct, cnt)
    f["first_small_frac"] = _div((valid & (sizes <= SMALL_PACKET)).sum(1).astype(float), cnt)
    with np.errstate(invalid="ignore"):
        f["first_up_max"] = _nanreduce(np.where(up, sizes, np.nan), np.nanmax)
        f["first_down_max"] = _nanreduce(np.where(down, sizes, np.nan), np.nanmax)
        f["first_up_min"] = _nanreduce(np.where(up, sizes, np.nan), np.nanmin)
        f["first_down_min"] = _nanreduce(np.where(down, sizes, np.nan), np.nanmin)
    # responder sizes that equal some initiator size: (n, K, K) comparison, K = 10
    eq = (sizes[:, :, None] == sizes[:, None, :]) & down[:, :, None] & up[:, None, :]
    f["first_size_shift_match"] = _div(eq.any(2).sum(1).astype(float), down.sum(1).astype(float))
    hello = up & (sizes >= HELLO_RANGE[0]) & (sizes <= HELLO_RANGE[1])
    f["first_hello_like"] = np.where(cnt > 0, hello.sum(1), np.nan).astype(float)
    f["late_hello_like"] = np.where(cnt > 4, hello[:, 4:].sum(1), np.nan).astype(float)
    return f


def _bursts(table: pa.Table, payload: np.ndarray) -> dict[str, np.ndarray]:
    """The first payload bursts (handshake flights, and a nested handshake after them).

    The flow table lists only bursts seen in full; when they add up to all the flow's
    payload bytes the flow had no more, so the missing ones are 0, else unknown (NaN).
    """
    bursts = _padded(table, "payload_bursts", np.float64, BURSTS)
    complete = np.nansum(np.abs(bursts), axis=1) == payload
    bursts = np.where(np.isnan(bursts) & complete[:, None], 0.0, bursts)
    return {f"burst_{i}": bursts[:, i] for i in range(BURSTS)}


def _rhythm(table: pa.Table, c: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Whole-flow payload rhythm from the payload-packet counts and payload-size histograms.

    Why: a TCP download through a tunnel sends encrypted inner ACKs (small payloads of
    one size) where plain TCP sends pure ACKs (no payload, not in the histogram), and a
    UDP tunnel carries inner packets plus a constant overhead both ways. Directions are
    named light/heavy by payload bytes so the pattern reads the same whoever initiated.
    """
    f: dict[str, np.ndarray] = {}
    up_pp, down_pp = c["src2dst_payload_packets"], c["dst2src_payload_packets"]
    f["up_payload_pkt_frac"] = _div(up_pp, c["src2dst_packets"])
    f["down_payload_pkt_frac"] = _div(down_pp, c["dst2src_packets"])
    f["payload_pkt_balance"] = _div(np.minimum(up_pp, down_pp), np.maximum(up_pp, down_pp))
    up_mean = _div(c["src2dst_payload_bytes"], up_pp)
    down_mean = _div(c["dst2src_payload_bytes"], down_pp)
    up_h = np.nan_to_num(_padded(table, "src2dst_payload_hist", np.float64, N_HIST))
    down_h = np.nan_to_num(_padded(table, "dst2src_payload_hist", np.float64, N_HIST))
    up_heavy = (c["src2dst_payload_bytes"] >= c["dst2src_payload_bytes"])[:, None]
    heavy, light = np.where(up_heavy, up_h, down_h), np.where(up_heavy, down_h, up_h)
    f["heavy_data_mean"] = np.where(up_heavy[:, 0], up_mean, down_mean)
    f["light_data_mean"] = np.where(up_heavy[:, 0], down_mean, up_mean)
    norms = {}
    for name, h in (("light", light), ("heavy", heavy)):
        tot = h.sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            p = h / tot[:, None]
            ent = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1) / np.log(N_HIST)
        p = np.where(tot[:, None] > 0, p, np.nan)
        norms[name] = p
        for i in range(N_HIST):
            f[f"{name}_hist_{i}"] = p[:, i]
        f[f"{name}_hist_entropy"] = np.where(tot > 0, ent, np.nan)
        f[f"{name}_hist_top"] = _nanreduce(p, np.nanmax)
    small = light[:, :4].sum(1)  # payloads of 1-127 bytes
    f["light_small_frac"] = _div(small, light.sum(1))
    f["light_small_per_heavy"] = _div(small, heavy.sum(1))
    f["heavy_large_frac"] = _div(heavy[:, 10:].sum(1), heavy.sum(1))
    f["hist_overlap"] = np.minimum(norms["light"], norms["heavy"]).sum(1)
    return f


def _bytes(c: dict[str, np.ndarray], start_seen: np.ndarray) -> dict[str, np.ndarray]:
    """How random the payload heads look, and the fully-encrypted first-payload rule.

    The rule needs the start of the stream: a TCP flow metered from the middle begins
    with a segment in the middle of a TLS record or a file, which looks random whatever
    the protocol. So for TCP it holds only when the SYN was seen (else unknown, NaN);
    a datagram always starts a message.
    """
    f: dict[str, np.ndarray] = {}
    for short, d in (("up", "src2dst"), ("down", "dst2src")):
        for column, name in _BYTE_FEATURES.items():
            f[f"{short}_{name}"] = c[f"{d}_{column}"]
    dev = np.abs(f["up_first_bits"] - RANDOM_BITS)
    f["first_bits_dev"] = dev
    random_start = looks_random(f["up_first_bits"], f["up_first_printable"], f["up_tls_frac"])
    f["fully_encrypted_start"] = np.where(np.isnan(dev) | ~start_seen, np.nan, random_start.astype(float))
    return f


def starts_with_syn(first_tcp_flags: np.ndarray) -> np.ndarray:
    """Flows whose first packet is a TCP SYN, from ``first_tcp_flags`` (NaN: not TCP, or unknown).

    Why it matters: only then was the flow's start seen, and its first payload is the
    protocol's first message rather than the middle of a stream.
    """
    return (np.nan_to_num(first_tcp_flags).astype(np.int64) & 0x02) > 0


def looks_random(bits: np.ndarray, printable: np.ndarray, tls_frac: np.ndarray) -> np.ndarray:
    """A first payload that looks random: set bits per byte near 4, mostly not printable, no TLS record.

    Unknown values (no payload) are False.
    """
    with np.errstate(invalid="ignore"):
        return (np.abs(bits - RANDOM_BITS) <= RANDOM_BAND) & (printable <= RANDOM_MAX_PRINTABLE) & (tls_frac == 0)


#: Flow-table columns :func:`fully_encrypted_both_ways` reads.
ENCRYPTED_COLUMNS: tuple[str, ...] = (
    "ip_proto", "first_tcp_flags", "truncated_packets",
    *(f"{d}_{s}" for d in ("src2dst", "dst2src")
      for s in ("first_payload_bits", "first_payload_printable", "tls_record_frac")),
)


def fully_encrypted_both_ways(table: pa.Table) -> np.ndarray:
    """TCP flows seen from their SYN whose first payload looks random in both directions.

    Why: a fully encrypted proxy (Shadowsocks, VMess, obfs4) is random from its first
    byte both ways, which almost no other protocol is (after Wu et al., USENIX Security
    2023); Telegram's transport and BitTorrent's encrypted peer wire are the common
    exceptions, so the rule that reads this (``endpoint_context``) runs only after the
    signatures, which name Telegram, and only on endpoints with many flows, which
    BitTorrent's peers rarely have. The SYN must be seen: a stream metered from the
    middle starts inside a record and looks random whatever it carries. And no packet
    may have been cut by the capture's snapshot length: the Telegram signature reads
    the first 64 payload bytes, and a headers-only capture (docs/model.md, Headers-only
    captures) hides them from it while a few random bytes still look random.
    """
    c = {name: _col(table, name) for name in ENCRYPTED_COLUMNS}
    syn = (c["ip_proto"] == 6) & starts_with_syn(c["first_tcp_flags"])
    whole = np.nan_to_num(c["truncated_packets"]) == 0
    return syn & whole & np.logical_and.reduce([
        looks_random(c[f"{d}_first_payload_bits"], c[f"{d}_first_payload_printable"], c[f"{d}_tls_record_frac"])
        for d in ("src2dst", "dst2src")])


def _timing(table: pa.Table, c: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Relative timing: ratios of gaps only, never a gap in milliseconds (see the module docstring).

    Why ratios: a path's round trip and a machine's speed scale every gap of a flow alike,
    while the pattern (a burst of handshake messages, then a pause; keepalives at an even
    tick; a request answered by many packets) belongs to the protocol.
    """
    f: dict[str, np.ndarray] = {}
    for short, d in (("up", "src2dst"), ("down", "dst2src")):
        mean = c[f"{d}_iat_mean_ms"]
        f[f"{short}_iat_cv"] = _div(c[f"{d}_iat_std_ms"], mean)
        f[f"{short}_iat_max_over_mean"] = _div(c[f"{d}_iat_max_ms"], mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log(_div(c["src2dst_iat_mean_ms"], c["dst2src_iat_mean_ms"]))
    f["iat_mean_log_ratio"] = np.where(np.isfinite(ratio), ratio, np.nan)
    gaps = _padded(table, "first_iats_ms", np.float64, TIMING_GAPS)
    median = _nanreduce(np.where(gaps > 0, gaps, np.nan), np.nanmedian)
    rel = _div(gaps, median[:, None])
    for i in range(1, TIMING_GAPS):
        f[f"first_gap_{i}_rel"] = rel[:, i]
    return f


def _nanreduce(a: np.ndarray, fn) -> np.ndarray:
    """Row-wise nan-aware reduction that yields NaN (not a warning) for all-NaN rows."""
    out = np.full(a.shape[0], np.nan)
    ok = ~np.isnan(a).all(1)
    if ok.any():
        out[ok] = fn(a[ok], axis=1)
    return out
