"""Generate a large, realistic benchmark capture quickly (numpy, no per-packet Python).

    python bench/make_capture.py -o bench/data/bench.pcap --packets 10000000 --flows 50000

The mix: ~80% IPv4 / 20% IPv6, ~30% of flows VLAN-tagged, TCP (handshake flags, ACK/PSH),
UDP (DNS-like, QUIC-like, and WireGuard transport messages with consistent receiver
indices and increasing counters), ESP with a constant SPI and increasing sequence
numbers, a little ICMP. Flow sizes are heavy-tailed; packet sizes bimodal. Packets are
truncated to a 128-byte snap length (as a mirror capture often is) and keep their wire
length. Same seed, same file.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time

import numpy as np

SNAP = 128
# kinds: (ip version, l4 name)
KINDS = [(4, "tcp"), (4, "udp"), (4, "wg"), (4, "esp"), (4, "icmp"), (6, "tcp"), (6, "udp"), (6, "wg")]
KIND_P = np.array([0.45, 0.17, 0.04, 0.03, 0.01, 0.18, 0.09, 0.03])
L4_LEN = {"tcp": 20, "udp": 8, "wg": 8 + 16, "esp": 8, "icmp": 8}
PROTO = {"tcp": 6, "udp": 17, "wg": 17, "esp": 50, "icmp": 1}


def _flows(rng: np.random.Generator, n_flows: int, n_packets: int, duration_s: float,
           span_s: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
    kind = rng.choice(len(KINDS), n_flows, p=KIND_P)
    weights = rng.pareto(1.2, n_flows) + 1.0
    counts = np.maximum(2, np.floor(weights / weights.sum() * n_packets)).astype(np.int64)
    counts[np.argmax(counts)] += n_packets - counts.sum()  # exact total
    counts = np.maximum(counts, 2)
    return {
        "kind": kind,
        "count": counts,
        # Default: spans of 5-40 % of the duration; ``span_s`` gives them in seconds instead.
        "start": rng.uniform(0, duration_s * 0.6 if span_s is None else duration_s - span_s[1], n_flows),
        "span": (rng.uniform(0.05, 0.4, n_flows) * duration_s if span_s is None
                 else rng.uniform(span_s[0], span_s[1], n_flows)),
        "vlan": np.where(rng.random(n_flows) < 0.3, rng.integers(1, 4095, n_flows), -1),
        "src4": rng.integers(0x0A000000, 0x0AFFFFFF, n_flows, dtype=np.uint32),
        "dst4": rng.integers(0x01000000, 0xDF000000, n_flows, dtype=np.uint32),
        "src6": rng.integers(0, 256, (n_flows, 16), dtype=np.uint8),
        "dst6": rng.integers(0, 256, (n_flows, 16), dtype=np.uint8),
        "sport": rng.integers(1024, 65535, n_flows),
        "dport": rng.choice(np.array([443, 80, 53, 8080, 22, 993, 3478]), n_flows),
        "idx": rng.integers(1, 2**32 - 1, (n_flows, 2), dtype=np.uint64),  # WireGuard receiver index / ESP SPI
    }


def _put(mat: np.ndarray, col: int, value: np.ndarray, width: int) -> None:
    """Write big-endian unsigned integers ``value`` into ``mat[:, col:col+width]``."""
    v = value.astype(np.uint64)
    for k in range(width):
        mat[:, col + k] = ((v >> np.uint64(8 * (width - 1 - k))) & np.uint64(0xFF)).astype(np.uint8)


def generate(path: str, n_packets: int, n_flows: int, duration_s: float = 300.0, seed: int = 7,
             span_s: tuple[float, float] | None = None) -> None:
    rng = np.random.default_rng(seed)
    fl = _flows(rng, n_flows, n_packets, duration_s, span_s)
    total = int(fl["count"].sum())
    fid = np.repeat(np.arange(n_flows), fl["count"])
    first = np.zeros(total, bool)
    starts = np.zeros(n_flows, np.int64)
    np.cumsum(fl["count"][:-1], out=starts[1:])
    first[starts] = True
    pos_in_flow = np.arange(total) - np.repeat(starts, fl["count"])
    # Timestamps: evenly spread over the flow's span with jitter.
    frac = (pos_in_flow + rng.random(total) * 0.9) / np.repeat(fl["count"], fl["count"])
    ts = np.repeat(fl["start"], fl["count"]) + frac * np.repeat(fl["span"], fl["count"])
    ts_ns = (1_700_000_000 * 10**9 + ts * 1e9).astype(np.int64)
    ts_ns[starts] = (1_700_000_000 * 10**9 + fl["start"] * 1e9).astype(np.int64)  # first packet at the start
    direction = (rng.random(total) < 0.45) & ~first
    big = rng.random(total) < 0.45
    payload = np.where(big, rng.integers(1000, 1400, total), rng.integers(0, 120, total))
    order = np.argsort(ts_ns, kind="stable")
    fid, ts_ns, direction, payload, pos_in_flow, first = (a[order] for a in (fid, ts_ns, direction, payload,
                                                                              pos_in_flow, first))
    with open(path + ".tmp", "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, SNAP, 1))  # nanosecond pcap, Ethernet
        step = 1 << 20
        for lo in range(0, total, step):
            sl = slice(lo, min(total, lo + step))
            fh.write(_records(fl, fid[sl], ts_ns[sl], direction[sl], payload[sl], pos_in_flow[sl], first[sl]))
    os.replace(path + ".tmp", path)


def _records(fl, fid, ts_ns, direction, payload, seqno, first) -> bytes:
    n = len(fid)
    kind = fl["kind"][fid]
    vlan = fl["vlan"][fid]
    tagged = vlan >= 0
    ipver = np.array([k[0] for k in KINDS])[kind]
    l4name = np.array([k[1] for k in KINDS])
    l4len = np.array([L4_LEN[k[1]] for k in KINDS])[kind]
    wg = l4name[kind] == "wg"
    payload = np.where(wg, 16 * (payload // 16) + 16, payload)  # WireGuard data: 32 + 16n after UDP header
    l2 = 14 + 4 * tagged
    l3 = np.where(ipver == 4, 20, 40)
    ip_total = l3 + l4len + payload
    wire = l2 + ip_total
    cap = np.minimum(wire, SNAP)
    rec = 16 + cap
    offs = np.zeros(n, np.int64)
    np.cumsum(rec[:-1], out=offs[1:])
    out = np.zeros(int(rec.sum()), np.uint8)
    width = 16 + 18 + 40 + 24  # longest header stack we write
    mat = np.zeros((n, width), np.uint8)
    sec, nsec = ts_ns // 10**9, ts_ns % 10**9
    le = lambda v, c: [mat.__setitem__((slice(None), c + k), ((v >> (8 * k)) & 0xFF).astype(np.uint8)) for k in range(4)]  # noqa: E731
    le(sec, 0)
    le(nsec, 4)
    le(cap, 8)
    le(wire, 12)
    c = 16
    mat[:, c:c + 12] = np.array([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2], np.uint8)
    # Ethernet type / VLAN tag, laid out per row with a shift of 4 bytes for tagged rows.
    eth = np.zeros((n, 6), np.uint8)
    eth[tagged, 0:2] = [0x81, 0x00]
    sub = eth[tagged]
    _put(sub, 2, vlan[tagged], 2)
    eth[tagged] = sub
    etype = np.where(ipver == 4, 0x0800, 0x86DD)
    ip = np.zeros((n, 40 + 24), np.uint8)  # IP header + L4 header (+16 WireGuard header bytes)
    v4 = ipver == 4
    v6 = ~v4
    proto = np.array([PROTO[k[1]] for k in KINDS])[kind]
    src4, dst4 = fl["src4"][fid], fl["dst4"][fid]
    s4 = np.where(direction, dst4, src4)
    d4 = np.where(direction, src4, dst4)
    sub = ip[v4]
    sub[:, 0] = 0x45
    _put(sub, 2, ip_total[v4], 2)
    sub[:, 8] = 64
    sub[:, 9] = proto[v4]
    _put(sub, 12, s4[v4], 4)
    _put(sub, 16, d4[v4], 4)
    ip[v4] = sub
    sub = ip[v6]
    sub[:, 0] = 0x60
    _put(sub, 4, (ip_total - 40)[v6], 2)
    sub[:, 6] = proto[v6]
    sub[:, 7] = 64
    a6, b6 = fl["src6"][fid][v6], fl["dst6"][fid][v6]
    dv = direction[v6][:, None]
    sub[:, 8:24] = np.where(dv, b6, a6)
    sub[:, 24:40] = np.where(dv, a6, b6)
    ip[v6] = sub
    # L4 headers go right after the IP header (20 or 40 bytes in).
    l4 = np.zeros((n, 24), np.uint8)
    sp, dp = fl["sport"][fid], fl["dport"][fid]
    dp = np.where(wg, 51820, dp)
    a, b = np.where(direction, dp, sp), np.where(direction, sp, dp)
    is_tcp = proto == 6
    is_udp = proto == 17
    is_esp = proto == 50
    for mask in (is_tcp, is_udp):
        sub = l4[mask]
        _put(sub, 0, a[mask], 2)
        _put(sub, 2, b[mask], 2)
        l4[mask] = sub
    sub = l4[is_tcp]
    _put(sub, 4, seqno[is_tcp] * 1000, 4)
    sub[:, 12] = 0x50
    sub[:, 13] = np.where(first[is_tcp], 0x02, np.where(seqno[is_tcp] % 3 == 0, 0x18, 0x10))
    l4[is_tcp] = sub
    sub = l4[is_udp]
    _put(sub, 4, (l4len + payload - 0)[is_udp], 2)
    l4[is_udp] = sub
    sub = l4[wg]
    sub[:, 8] = 4
    _put(sub, 12, fl["idx"][fid][wg][:, 0] + direction[wg], 4)
    _put(sub, 16, seqno[wg], 4)  # little-endian counter in real WireGuard; bytes only matter for signatures
    l4[wg] = sub
    sub = l4[is_esp]
    _put(sub, 0, fl["idx"][fid][is_esp][:, 0] + direction[is_esp], 4)
    _put(sub, 4, seqno[is_esp] + 1, 4)
    l4[is_esp] = sub
    sub = l4[proto == 1]
    sub[:, 0] = 8
    l4[proto == 1] = sub
    # Assemble: fixed part (16 rec + 12 MAC), then per-layout column groups.
    for tag in (False, True):
        for ver in (4, 6):
            m = (tagged == tag) & (ipver == ver)
            if not m.any():
                continue
            rows = mat[m]
            c = 28
            if tag:
                rows[:, c:c + 4] = eth[m, 0:4]
                c += 4
            _put(rows, c, etype[m], 2)
            c += 2
            hl = 20 if ver == 4 else 40
            rows[:, c:c + hl] = ip[m, :hl]
            c += hl
            rows[:, c:c + 24] = l4[m]
            mat[m] = rows
    hdr_take = np.minimum(rec, width)
    cols = np.arange(width)
    valid = cols[None, :] < hdr_take[:, None]
    rows_idx = np.nonzero(valid)
    out[offs[rows_idx[0]] + rows_idx[1]] = mat[valid]
    return out.tobytes()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", default="bench/data/bench.pcap")
    p.add_argument("--packets", type=int, default=10_000_000)
    p.add_argument("--flows", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--duration", type=float, default=300.0, help="capture time span in seconds")
    p.add_argument("--span", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="flow durations in seconds (default: 5-40 %% of --duration)")
    args = p.parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    t0 = time.perf_counter()
    generate(args.output, args.packets, args.flows, duration_s=args.duration, seed=args.seed,
             span_s=tuple(args.span) if args.span else None)
    size = os.path.getsize(args.output)
    print(f"wrote {args.output}: {args.packets} packets, {size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
