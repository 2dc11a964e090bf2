"""Engine benchmark: packets/s of pcap -> flows -> Parquet, against a dpkt loop in the same run.

    python bench/bench_engine.py                       # 10M packets, ~50k flows (generated once)
    python bench/bench_engine.py --packets 2000000     # smaller

Reports, for the same capture and in the same process run:
  - vpnid end to end (read, decode, flows, finalise, Parquet write), best of --repeat runs;
  - the stages alone (read+decode; +flow meter), to show where time goes;
  - the signature stage on the resulting flows (when classifier.signatures is present), as a
    fraction of the engine time;
  - a reference: a plain dpkt loop decoding the same packets into a dict flow table (on the
    first --ref-packets packets, since it is ~20x slower), and the ratio between the two;
  - peak RSS of `vpnid flows` on the whole capture, in a child process.
Numbers go to stdout as a Markdown table (paste into docs/benchmarks.md) and to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def ensure_capture(path: Path, packets: int, flows: int) -> Path:
    from make_capture import generate

    if not path.exists() or path.stat().st_size < 1000:
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"generating {path} ({packets} packets, {flows} flows)...", file=sys.stderr)
        generate(str(path), packets, flows)
    return path


def bench_engine(path: Path) -> dict:
    from classifier.flows.api import iter_flow_batches
    from classifier.flows.schema import FLOW_SCHEMA
    from classifier.output import TableSink

    stats: list = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with TableSink(os.path.join(tmp, "flows.parquet"), FLOW_SCHEMA) as sink:
            for batch in iter_flow_batches([path], stats=stats):
                sink.write(batch.table)
        dt = time.perf_counter() - t0
    return {"seconds": dt, "packets": stats[0].packets, "flows": sink.rows}


def bench_stages(path: Path) -> dict:
    from classifier.flows.meter import FlowMeter
    from classifier.packets.capture import iter_packet_batches

    t0 = time.perf_counter()
    n = 0
    for b in iter_packet_batches(path):
        n += b.n
    read = time.perf_counter() - t0
    t0 = time.perf_counter()
    meter = FlowMeter(raw=True)
    for b in iter_packet_batches(path):
        meter.add(b)
    meter.flush()
    meter_t = time.perf_counter() - t0
    return {"read_decode_s": read, "read_decode_meter_s": meter_t, "packets": n}


def bench_signatures(path: Path) -> dict | None:
    try:
        from classifier.signatures import detect
    except ImportError:
        return None
    from classifier.flows.api import iter_flow_batches

    batches = list(iter_flow_batches([path]))
    t0 = time.perf_counter()
    for b in batches:
        detect(b)
    return {"seconds": time.perf_counter() - t0, "flows": sum(len(b) for b in batches)}


def dpkt_reference(path: Path, limit: int) -> dict:
    """The baseline the issue names: dpkt decoding each packet into a dict flow table."""
    import dpkt

    flows: dict = {}
    n = 0
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        for ts, buf in dpkt.pcap.Reader(fh):
            n += 1
            if n > limit:
                n -= 1
                break
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
                continue
            l4 = ip.data
            sport = getattr(l4, "sport", 0)
            dport = getattr(l4, "dport", 0)
            a, b = (ip.src, sport), (ip.dst, dport)
            key = (a, b, ip.p) if a <= b else (b, a, ip.p)
            f = flows.get(key)
            if f is None:
                f = flows[key] = {"first": ts, "packets": 0, "bytes": 0, "init": a}
            f["packets"] += 1
            f["bytes"] += len(ip)
            f["last"] = ts
    return {"seconds": time.perf_counter() - t0, "packets": n, "flows": len(flows)}


#: Runs its arguments as its only child and prints that child's peak RSS (KiB).
_RSS_WRAPPER = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def peak_rss_flows(path: Path) -> float:
    """Peak RSS (MB) of `vpnid flows` on ``path``.

    Measured by a fresh wrapper process, not by this one: Linux records a child's peak
    from the memory it had before exec too, and a child forked from this process (which
    may hold gigabytes after generating the capture) would report this process's size.
    """
    exe = Path(sys.executable).with_name("vpnid")
    cmd = [sys.executable, "-c", _RSS_WRAPPER, str(exe), "flows", str(path), "-o", "/tmp/.bench_rss.parquet", "-q"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    Path("/tmp/.bench_rss.parquet").unlink(missing_ok=True)
    return int(out.split()[-1]) / 1024.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="vpnid engine benchmark")
    p.add_argument("--capture", type=Path, default=HERE / "data" / "bench.pcap")
    p.add_argument("--packets", type=int, default=10_000_000)
    p.add_argument("--flows", type=int, default=50_000)
    p.add_argument("--ref-packets", type=int, default=300_000)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--no-rss", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    path = ensure_capture(args.capture, args.packets, args.flows)
    from classifier.flows.api import read_flows

    small = HERE / "data" / "warmup.pcap"
    ensure_capture(small, 20_000, 200)
    read_flows(small)  # compile / load the cached kernels outside the timings

    runs = [bench_engine(path) for _ in range(args.repeat)]
    best = min(runs, key=lambda r: r["seconds"])
    stages = bench_stages(path)
    sig = bench_signatures(path)
    ref = dpkt_reference(path, args.ref_packets)
    rss = None if args.no_rss else peak_rss_flows(path)

    pps = best["packets"] / best["seconds"]
    ref_pps = ref["packets"] / ref["seconds"]
    result = {
        "capture": str(path), "capture_mb": path.stat().st_size / 1e6,
        "packets": best["packets"], "flows": best["flows"],
        "engine_s": best["seconds"], "engine_pps": pps,
        "read_decode_pps": stages["packets"] / stages["read_decode_s"],
        "read_decode_meter_pps": stages["packets"] / stages["read_decode_meter_s"],
        "dpkt_loop_pps": ref_pps, "dpkt_loop_packets": ref["packets"], "ratio_vs_dpkt": pps / ref_pps,
        "signatures_s": sig["seconds"] if sig else None,
        "signatures_fraction_of_engine": (sig["seconds"] / best["seconds"]) if sig else None,
        "peak_rss_mb": rss,
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
    }
    print("| measure | value |\n|---|---|")
    print(f"| capture | {result['packets']:,} packets, {result['flows']:,} flows, {result['capture_mb']:.0f} MB |")
    print(f"| vpnid pcap -> flows -> Parquet (1 core) | {pps:,.0f} packets/s ({best['seconds']:.2f} s) |")
    print(f"| read + decode only | {result['read_decode_pps']:,.0f} packets/s |")
    print(f"| read + decode + flow meter | {result['read_decode_meter_pps']:,.0f} packets/s |")
    print(f"| dpkt loop into a dict flow table (same run, first {ref['packets']:,} packets) | {ref_pps:,.0f} packets/s |")
    print(f"| ratio vpnid / dpkt loop | {pps / ref_pps:.1f}x |")
    if sig:
        print(f"| signature stage | {sig['seconds']:.2f} s = {100 * result['signatures_fraction_of_engine']:.1f}% "
              "of the engine time |")
    if rss is not None:
        print(f"| peak RSS of `vpnid flows` on the whole capture | {rss:,.0f} MB |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
