"""Synthetic labeled flow tables: packet sequences of a few traffic kinds, metered into FLOW_SCHEMA rows.

Why: the model's tests and the notebook need labeled flows that exist on every machine
(no captures, no root) and that behave like real ones where it matters: TCP or UDP
transport, handshakes, tunnel overhead mirrored in both directions, keepalive timers,
bulk transfers. These tables exercise training, calibration, grouped evaluation and
saving; they say nothing about accuracy on real traffic.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from classifier.flows.batch import HEAD_PACKETS_PER_DIR
from classifier.flows.schema import (
    BURSTS,
    FIRST_PACKETS,
    FLOW_SCHEMA,
    HEAD_STAT_COLUMNS,
    HEAD_STAT_MIN_PACKETS,
)
from classifier.flows.state import PAYLOAD_HIST_EDGES

#: Synthetic traffic kinds: name -> (is_vpn, transport protocol number).
KINDS: dict[str, tuple[bool, int]] = {
    "wireguard": (True, 17),
    "openvpn-udp": (True, 17),
    "openvpn-tcp": (True, 6),
    "shadowsocks": (True, 6),
    "https": (False, 6),
    "http": (False, 6),
    "dns": (False, 17),
    "quic": (False, 17),
    "ssh": (False, 6),
}

_SYN, _ACK, _PSH, _FIN = 0x02, 0x10, 0x08, 0x01


def _inner_traffic(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Inner packets of a tunnelled session: a download (big down, ACKs up) mixed with small chatter."""
    dirs = rng.choice([0, 1], n, p=[0.4, 0.6]).astype(np.int8)
    sizes = np.where(dirs == 1, rng.choice([1400, 1400, 1400, 600, 52], n), rng.choice([52, 52, 52, 120, 400], n))
    return sizes.astype(np.int64), dirs


def _packets(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(sizes, dirs, iats_ms, tcp_flags) of one flow of ``kind``."""
    n = int(rng.integers(12, 300))
    rtt = float(rng.uniform(5, 120))
    if kind == "wireguard":
        inner, d = _inner_traffic(rng, n)
        sizes = np.concatenate([[176, 120], inner + 60 + 28 - 28 * 0]).astype(np.int64)
        dirs = np.concatenate([[0, 1], d])
        iats = np.concatenate([[0, rtt], rng.exponential(rtt / 4, n)])
        keep = rng.random(len(sizes)) < 0.1
        iats[keep] = rng.choice([10_000.0, 25_000.0], keep.sum())
        flags = np.zeros(len(sizes), np.int64)
    elif kind == "openvpn-udp":
        inner, d = _inner_traffic(rng, n)
        hs = np.array([42 + 28, 54 + 28, 50 + 28, 300 + 28, 1200, 1200, 900, 200])
        hsd = np.array([0, 1, 0, 0, 1, 1, 1, 0])
        sizes = np.concatenate([hs, inner + 41 + 28]).astype(np.int64)
        dirs = np.concatenate([hsd, d])
        iats = np.concatenate([[0], rng.exponential(rtt / 3, len(hs) - 1), rng.exponential(rtt / 4, n)])
        flags = np.zeros(len(sizes), np.int64)
    elif kind in ("openvpn-tcp", "shadowsocks"):
        inner, d = _inner_traffic(rng, n)
        over = 2 + 41 + 52 if kind == "openvpn-tcp" else 34 + 52
        first = [60, 60, 52] + ([52 + 16 + 54, 52 + 16 + 54, 52, 52 + 300, 1500, 1500, 900]
                                if kind == "openvpn-tcp" else [52 + int(rng.integers(80, 600)), 52 + 34, 52])
        fdirs = [0, 1, 0] + ([0, 1, 0, 0, 1, 1, 1] if kind == "openvpn-tcp" else [0, 1, 0])
        acks = rng.random(n) < 0.3
        body = np.where(acks, 52, inner + over)
        sizes = np.concatenate([first, np.minimum(body, 1500)]).astype(np.int64)
        dirs = np.concatenate([fdirs, np.where(acks, 1 - d, d)]).astype(np.int8)
        iats = np.concatenate([[0], rng.exponential(rtt / 2, len(first) - 1), rng.exponential(rtt / 4, n)])
        flags = np.full(len(sizes), _ACK | _PSH)
        flags[0], flags[1] = _SYN, _SYN | _ACK
    elif kind in ("https", "http", "ssh"):
        m = n
        down_bulk = rng.random(m) < 0.7
        body_dirs = np.where(down_bulk, 1, 0).astype(np.int8)
        body = np.where(body_dirs == 1, rng.choice([1500, 1500, 1500, 1500, 700], m), 52)
        if kind == "https":
            first = [60, 60, 52, int(rng.integers(517, 700)), 52, 1500, 1500, int(rng.integers(300, 1500)), 52,
                     int(rng.integers(100, 200)), int(rng.integers(150, 700))]
            fdirs = [0, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0]
        elif kind == "http":
            first = [60, 60, 52, int(rng.integers(120, 500)), 52]
            fdirs = [0, 1, 0, 0, 1]
        else:
            first = [60, 60, 52, 73, 73, 1500, 1100, 100, 500, 52]
            fdirs = [0, 1, 0, 0, 1, 0, 1, 0, 1, 0]
        sizes = np.concatenate([first, body]).astype(np.int64)
        dirs = np.concatenate([fdirs, body_dirs]).astype(np.int8)
        iats = np.concatenate([[0], rng.exponential(rtt / 2, len(first) - 1), rng.exponential(2.0, m)])
        flags = np.full(len(sizes), _ACK)
        flags[0], flags[1] = _SYN, _SYN | _ACK
        flags[-1] |= _FIN
    elif kind == "dns":
        sizes = np.array([int(rng.integers(60, 110)), int(rng.integers(80, 400))], np.int64)
        dirs = np.array([0, 1], np.int8)
        iats = np.array([0, rtt])
        flags = np.zeros(2, np.int64)
    elif kind == "quic":
        first = [1280, 1280, 1280, 200, 60]
        fdirs = [0, 1, 1, 1, 0]
        body_dirs = (rng.random(n) < 0.75).astype(np.int8)
        body = np.where(body_dirs == 1, rng.choice([1280, 1280, 900], n), rng.integers(40, 70, n))
        sizes = np.concatenate([first, body]).astype(np.int64)
        dirs = np.concatenate([fdirs, body_dirs]).astype(np.int8)
        iats = np.concatenate([[0], rng.exponential(rtt / 2, 4), rng.exponential(3.0, n)])
        flags = np.zeros(len(sizes), np.int64)
    else:
        raise ValueError(f"unknown synthetic kind {kind!r}")
    return sizes, dirs.astype(np.int8), np.asarray(iats, float), flags


def _stats(prefix: str, sizes: np.ndarray, ts_ms: np.ndarray) -> dict[str, object]:
    p = f"{prefix}_" if prefix else ""
    row: dict[str, object] = {}
    if len(sizes):
        row.update({f"{p}size_min": int(sizes.min()), f"{p}size_max": int(sizes.max()),
                    f"{p}size_mean": float(sizes.mean()), f"{p}size_std": float(sizes.std())})
    else:
        row.update({f"{p}size_min": None, f"{p}size_max": None, f"{p}size_mean": None, f"{p}size_std": None})
    if len(sizes) >= 2:
        g = np.diff(ts_ms)
        row.update({f"{p}iat_min_ms": float(g.min()), f"{p}iat_max_ms": float(g.max()),
                    f"{p}iat_mean_ms": float(g.mean()), f"{p}iat_std_ms": float(g.std())})
    else:
        row.update({f"{p}iat_min_ms": None, f"{p}iat_max_ms": None, f"{p}iat_mean_ms": None,
                    f"{p}iat_std_ms": None})
    return row


def _hist(payload: np.ndarray) -> list[int]:
    """Payload-carrying packets by payload size, binned like the flow engine (PAYLOAD_HIST_EDGES)."""
    p = payload[payload > 0]
    idx = np.searchsorted(PAYLOAD_HIST_EDGES, p, side="right") - 1
    return np.bincount(idx, minlength=len(PAYLOAD_HIST_EDGES)).astype(int).tolist()


def flow_row(sizes: np.ndarray, dirs: np.ndarray, iats_ms: np.ndarray, flags: np.ndarray, proto: int,
             *, capture: str = "synthetic", flow_id: int = 0, start_ns: int = 1_700_000_000_000_000_000,
             src_ip: str = "10.0.0.2", dst_ip: str = "192.0.2.1", src_port: int | None = 40000,
             dst_port: int | None = 443) -> dict[str, object]:
    """Meter one packet sequence into a FLOW_SCHEMA row, the way the flow engine documents it."""
    sizes = np.asarray(sizes, np.int64)
    dirs = np.asarray(dirs, np.int8)
    ts_ms = np.cumsum(np.asarray(iats_ms, float))
    hdr = 20 + (32 if proto == 6 else 8 if proto == 17 else 0)
    pay = np.maximum(sizes - hdr, 0)
    up, down = dirs == 0, dirs == 1
    tcp = proto == 6
    row: dict[str, object] = {
        "flow_id": flow_id, "capture": capture, "src_ip": src_ip, "dst_ip": dst_ip,
        "src_port": src_port if proto in (6, 17) else None, "dst_port": dst_port if proto in (6, 17) else None,
        "ip_proto": proto, "ip_version": 4, "vlan_id": None,
        "first_seen": start_ns, "last_seen": start_ns + int(ts_ms[-1] * 1e6),
        "duration_ms": float(ts_ms[-1] - ts_ms[0]), "end_reason": "eof",
        "packets": len(sizes), "bytes": int(sizes.sum()),
        "src2dst_packets": int(up.sum()), "src2dst_bytes": int(sizes[up].sum()),
        "dst2src_packets": int(down.sum()), "dst2src_bytes": int(sizes[down].sum()),
        "src2dst_payload_bytes": int(pay[up].sum()), "dst2src_payload_bytes": int(pay[down].sum()),
        "src2dst_payload_packets": int((pay[up] > 0).sum()), "dst2src_payload_packets": int((pay[down] > 0).sum()),
        "src2dst_payload_hist": _hist(pay[up]), "dst2src_payload_hist": _hist(pay[down]),
        "truncated_packets": 0, "fragments": 0,
    }
    # payload byte statistics: drawn alike for every kind (no payload is simulated), so they
    # carry no label information; null where a direction carries no payload
    rng = np.random.default_rng(flow_id + int(sizes.sum()))
    for d, mask in (("src2dst", up), ("dst2src", down)):
        n_payload = int((pay[mask] > 0).sum())
        # no cleartext encapsulation is simulated: inner_header_frac and inner_ppp_frac are 0; framing and length fields drawn alike too
        values = (rng.uniform(3.2, 4.2), rng.uniform(0.2, 0.9), rng.uniform(3.4, 4.1), float(rng.random() < 0.3), 0.0, 0.0,
                  float(rng.integers(0, 12)), rng.uniform(0.0, 1.0), float(rng.integers(0, 32)),
                  float(rng.random() < 0.1), rng.uniform(0.0, 1.0), float(rng.integers(0, 9)))
        row.update({f"{d}_{c}": (v if n_payload >= HEAD_STAT_MIN_PACKETS[c] else None)
                    for c, v in zip(HEAD_STAT_COLUMNS, values, strict=True)})
    row.update(_stats("", sizes, ts_ms))
    row.update(_stats("src2dst", sizes[up], ts_ms[up]))
    row.update(_stats("dst2src", sizes[down], ts_ms[down]))
    fl = np.asarray(flags, np.int64) if tcp else np.zeros(len(sizes), np.int64)
    for name, bit in (("syn", 0x02), ("ack", 0x10), ("fin", 0x01), ("rst", 0x04), ("psh", 0x08),
                      ("urg", 0x20), ("ece", 0x40), ("cwr", 0x80)):
        row[f"tcp_{name}"] = int(((fl & bit) > 0).sum())
    row["first_tcp_flags"] = int(fl[0]) if tcp else None
    k = min(FIRST_PACKETS, len(sizes))
    first_iats = np.diff(ts_ms[:k], prepend=ts_ms[0])
    row["first_sizes"] = sizes[:k].tolist()
    row["first_dirs"] = dirs[:k].tolist()
    row["first_iats_ms"] = first_iats.tolist()
    row["payload_bursts"] = packet_bursts(pay, dirs)
    return row


def packet_bursts(pay: np.ndarray, dirs: np.ndarray) -> list[int]:
    """``payload_bursts`` as the engine lists them (``classifier/flows/head_stats.py``), one packet at a time."""
    out: list[int] = []
    last, stored = -1, [0, 0]
    carrying = np.flatnonzero(pay > 0)
    sent = [int((dirs[carrying] == side).sum()) for side in (0, 1)]
    for i in carrying:
        d = int(dirs[i])
        signed = int(pay[i]) if d == 0 else -int(pay[i])
        if d == last:
            out[-1] += signed
        else:
            out.append(signed)
        last = d
        stored[d] += 1
        if stored[d] == HEAD_PACKETS_PER_DIR and sent[d] > stored[d]:
            out.pop()  # the heads miss this direction's later packets: the burst may go on
            break
    return out[:BURSTS]


def synthetic_flows(n_captures: int = 40, flows_per_capture: tuple[int, int] = (3, 12), seed: int = 0,
                    kinds: tuple[str, ...] | None = None) -> pa.Table:
    """A labeled flow table: FLOW_SCHEMA + ``label`` (1 VPN, 0 not) + ``protocol``.

    Each synthetic capture holds flows of one kind (like one lab scenario), so grouped
    evaluation by ``capture`` is meaningful; VPN captures also hold a DNS lookup, as
    real ones do, labeled 0.
    """
    rng = np.random.default_rng(seed)
    names = list(kinds or KINDS)
    rows: list[dict[str, object]] = []
    labels: list[int] = []
    protos: list[str | None] = []
    for c in range(n_captures):
        kind = names[c % len(names)]
        vpn, _proto = KINDS[kind]
        capture = f"synthetic-{c:03d}-{kind}.pcap"
        for i in range(int(rng.integers(*flows_per_capture))):
            this = kind if not (vpn and i == 0) else "dns"
            this_vpn, this_proto = KINDS[this]
            sizes, dirs, iats, flags = _packets(this, rng)
            rows.append(flow_row(sizes, dirs, iats, flags, this_proto, capture=capture, flow_id=i,
                                 src_port=int(rng.integers(1024, 65535)), dst_port=int(rng.integers(1, 65535))))
            labels.append(int(this_vpn))
            protos.append(this if this_vpn else None)
    table = pa.Table.from_pylist(rows, schema=FLOW_SCHEMA)
    table = table.append_column("label", pa.array(labels, pa.int8()))
    return table.append_column("protocol", pa.array(protos, pa.string()))
