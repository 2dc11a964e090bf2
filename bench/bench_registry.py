"""Registry matching benchmark: 1,000,000 flows against 100,000 entries, IPv4 and IPv6.

    .venv/bin/python bench/bench_registry.py [--flows N] [--entries N] [--seed S]

The registry is synthetic but shaped like a real list: 70% IPv4 entries (half single
addresses, the rest /24 to /16 blocks, some nested inside others), 30% IPv6 (/48, /56,
/64 and single addresses), a fifth of all entries with validity dates. It is written as
CSV and loaded through ``Registry.load`` so loading and validation are timed too.

Flows come from a host population (clients open many flows): "realistic" draws
1,000,000 flows from 200,000 distinct addresses per family, about a third of them inside
registered blocks; "all distinct" makes every address unique, the worst case for the
per-distinct-address parsing. Every flow is a VPN flow, so every flow is matched.
"""

from __future__ import annotations

import argparse
import csv
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from classifier.registry import Registry
from classifier.registry.addresses import parse_column

T0_NS = 1_709_283_600 * 10**9  # 2024-03-01 09:00 UTC


def make_registry(path: Path, entries: int, rng: np.random.Generator) -> None:
    n4 = int(entries * 0.7)
    n6 = entries - n4
    rows = []
    for i in range(n4):
        kind = rng.random()
        base = int(rng.integers(0x0B000000, 0xDF000000))  # 11.0.0.0 - 223.0.0.0
        if kind < 0.5:
            plen = 32
        elif kind < 0.85:
            plen = 24
        else:
            plen = int(rng.integers(16, 24))
        base &= ~((1 << (32 - plen)) - 1) & 0xFFFFFFFF
        rows.append((f"{socket.inet_ntop(socket.AF_INET, base.to_bytes(4, 'big'))}/{plen}", i))
    for i in range(n6):
        plen = int(rng.choice([48, 56, 64, 128]))
        hi = (0x2001_0DB8 << 32) | int(rng.integers(0, 2**20)) << 12  # 2001:db8::/32, 20 random bits
        value = (hi << 64) | (int(rng.integers(0, 2**63)) if plen > 64 else 0)
        value &= ~((1 << (128 - plen)) - 1)
        rows.append((f"{socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, 'big'))}/{plen}", n4 + i))
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ip", "organization", "registration_id", "category", "valid_from", "valid_until"])
        for ip, i in rows:
            dated = i % 5 == 0
            w.writerow([ip, f"Org {i % 9000}", f"PTA-VPN-{i:07d}", "software house",
                        "2023-01-01" if dated else "", "2024-12-31" if dated else ""])


def host_addresses(reg: Registry, family: int, hosts: int, rng: np.random.Generator) -> list[str]:
    """``hosts`` distinct addresses, about a third inside registered blocks."""
    entries = [e for e in reg.entries if e.family == family]
    inside = hosts // 3
    picks = rng.integers(0, len(entries), inside)
    out: set[int] = set()
    for k in picks:
        e = entries[int(k)]
        out.add(e.start + int(rng.integers(0, min(e.end - e.start, 2**62) + 1)))
    if family == 4:
        while len(out) < hosts:
            out.update(int(x) for x in rng.integers(0x0B000000, 0xDF000000, hosts - len(out)))
        return [socket.inet_ntop(socket.AF_INET, v.to_bytes(4, "big")) for v in out]
    while len(out) < hosts:
        out.update((0x2001_0DB8 << 96) | (int(a) << 64) | int(b) for a, b in
                   zip(rng.integers(0, 2**32, hosts - len(out)), rng.integers(0, 2**63, hosts - len(out)),
                       strict=True))
    return [socket.inet_ntop(socket.AF_INET6, v.to_bytes(16, "big")) for v in out]


def flow_table(addrs: list[str], flows: int, rng: np.random.Generator) -> pa.Table:
    pool = pa.array(addrs, pa.string())
    src = pool.take(pa.array(rng.integers(0, len(addrs), flows)))
    dst = pool.take(pa.array(rng.integers(0, len(addrs), flows)))
    first = T0_NS + rng.integers(-400, 400, flows) * 86_400 * 10**9  # spans validity boundaries
    return pa.table({
        "src_ip": src, "dst_ip": dst,
        "first_seen": pa.array(first, pa.timestamp("ns", tz="UTC")),
        "is_vpn": pa.array(np.ones(flows, bool)),
    })


def timed(fn, repeat: int = 3):
    best, result = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--flows", type=int, default=1_000_000)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--hosts", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "registry.csv"
        make_registry(path, args.entries, rng)
        load_s, reg = timed(lambda: Registry.load(path, strict=True), repeat=1)
    d = reg.describe()
    print(f"registry: {d['entries']:,} entries ({d['ipv4_entries']:,} IPv4, {d['ipv6_entries']:,} IPv6); "
          f"CSV load + validation + index {load_s:.2f} s")
    print(f"{'case':<28} {'flows':>10} {'distinct':>9} {'parse s':>8} {'annotate s':>11} {'flows/s':>12} "
          f"{'registered':>10}")
    for family in (4, 6):
        for label, hosts in (("realistic", args.hosts), ("all distinct", 2 * args.flows)):
            addrs = host_addresses(reg, family, min(hosts, 2 * args.flows), rng)
            table = flow_table(addrs, args.flows, rng)
            if label == "all distinct":  # every endpoint of every flow is a different address
                pool = pa.array(addrs, pa.string())
                perm = rng.permutation(len(addrs))
                table = table.set_column(0, "src_ip", pool.take(pa.array(perm[: args.flows])))
                table = table.set_column(1, "dst_ip", pool.take(pa.array(perm[args.flows : 2 * args.flows])))
            both = pa.chunked_array([table.column("src_ip").combine_chunks(),
                                     table.column("dst_ip").combine_chunks()])
            parse_s, _ = timed(lambda both=both: parse_column(both))
            ann_s, out = timed(lambda table=table: reg.annotate(table))
            registered = out.column("registered").to_numpy(zero_copy_only=False).mean()
            distinct = len(set(addrs)) if label == "all distinct" else len(addrs)
            print(f"IPv{family} {label:<23} {args.flows:>10,} {distinct:>9,} {parse_s:>8.2f} {ann_s:>11.2f} "
                  f"{args.flows / ann_s:>12,.0f} {registered:>10.1%}")


if __name__ == "__main__":
    main()
