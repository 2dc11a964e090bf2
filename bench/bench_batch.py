"""Batch scale-out benchmark: `vpnid batch` throughput with 1 and 2 local workers.

    python bench/bench_batch.py                          # both scenarios, best of 1 run each
    python bench/bench_batch.py --scenario rotation --repeat 3 --wait-load 1.5

Two captures from bench/make_capture.py (10M packets, 50,000 flows, seeded; generated
once into bench/data/), each cut into 12 files of equal capture time (like `tcpdump -G`):

* ``crossing`` (worst case): the default 300 s capture, flows of 15-120 s, cut into
  files of 25 s, so almost every flow crosses several file boundaries;
* ``rotation`` (realistic): the same flow lengths over 3600 s, cut into files of 300 s
  (`tcpdump -G 300`), so most flows live within one file.

Each run is the `vpnid batch` command in a fresh process, end to end into a fresh
dataset (the model is the shipped one when present): interpreter and pool start-up,
per-file work (hash, read, meter, label), caching, stitching across files, labelling
the stitched flows, Parquet writing. Prints Markdown tables (for docs/benchmarks.md),
the share of flows crossing a file boundary and the load average before and after
every run, since other processes on the machine skew the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
VPNID = Path(sys.executable).parent / "vpnid"

#: name -> (capture file, generate() keyword arguments, file length in seconds)
SCENARIOS = {
    "crossing": ("bench.pcap", {}, 25.0),
    "rotation": ("rotation.pcap", {"duration_s": 3600.0, "span_s": (15.0, 120.0)}, 300.0),
}


def ensure_capture(name: str, packets: int, flows: int) -> Path:
    from make_capture import generate

    fname, kw, _ = SCENARIOS[name]
    if (packets, flows) != (10_000_000, 50_000):
        fname = f"batch-{name}-{packets}-{flows}.pcap"
    path = HERE / "data" / fname
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        generate(str(path), packets, flows, **kw)
    return path


def wait_for_quiet(limit: float | None, max_wait_s: float = 600.0) -> float:
    """Wait until the 1-minute load average is below ``limit``; returns it."""
    t0 = time.monotonic()
    while limit is not None and os.getloadavg()[0] >= limit and time.monotonic() - t0 < max_wait_s:
        time.sleep(10)
    return os.getloadavg()[0]


def run_once(pieces: list[Path], workers: int, out: Path, no_model: bool = False) -> dict:
    """One end-to-end `vpnid batch` command in a fresh process (interpreter and pool start-up included)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(VPNID), "batch", *map(str, pieces), "-o", str(out), "--workers", str(workers), "-q",
           *(["--no-model"] if no_model else [])]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()[0]
    manifest = json.loads((out / "_manifest.json").read_text())
    inputs = manifest["inputs"].values()
    last = manifest["output"].get("last_run", {})
    return {"workers": workers, "wall_s": wall, "packets": sum(e["packets"] for e in inputs),
            "flows": manifest["output"]["flows"], "merges": manifest["output"]["merges"],
            "file_task_s": sum(e["seconds"] for e in inputs), "client_s": last.get("client_busy_s", 0.0),
            "startup_s": last.get("worker_startup_s", 0.0), "load_before": load_before, "load_after": load_after}


def crossing_share(dataset: Path, t0_ns: int, file_s: float) -> float:
    """Share of the dataset's flows whose first and last packets fall in different files."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    t = ds.dataset(dataset).to_table(columns=["first_seen", "last_seen"])
    step = int(file_s * 1e9)
    first = (pc.cast(t.column("first_seen"), "int64").to_numpy() - t0_ns) // step
    last = (pc.cast(t.column("last_seen"), "int64").to_numpy() - t0_ns) // step
    return float((first != last).mean()) if len(first) else 0.0


def bench(name: str, args, work: Path, model: str | None) -> dict:
    from classifier.batch.split import record_index, split_pcap

    src = ensure_capture(name, args.packets, args.flows)
    _, ts, _ = record_index(src)
    file_s = SCENARIOS[name][2]
    pieces = split_pcap(src, work / name, seconds=file_s)
    results: dict[int, dict] = {}
    runs = []
    for _ in range(args.repeat):
        for workers in (1, 2):
            wait_for_quiet(args.wait_load)
            r = run_once(pieces, workers, work / f"ds-{name}", model is None)
            runs.append(r)
            if workers not in results or r["wall_s"] < results[workers]["wall_s"]:
                results[workers] = r
    share = crossing_share(work / f"ds-{name}", int(ts.min()), file_s)
    shutil.rmtree(work / name, ignore_errors=True)
    return {"scenario": name, "capture": src.name, "bytes": src.stat().st_size, "files": len(pieces),
            "file_s": file_s, "crossing_share": share, "best": results, "runs": runs,
            "speedup": results[1]["wall_s"] / results[2]["wall_s"]}


def report(res: dict, model: str | None) -> None:
    one = res["best"][1]
    print(f"\n### {res['scenario']}: {res['capture']}, {one['packets']:,} packets, {res['bytes'] / 1e9:.2f} GB, "
          f"{res['files']} files of {res['file_s']:.0f} s; {res['crossing_share']:.0%} of {one['flows']:,} flows "
          f"cross a file boundary ({one['merges']:,} merges); signatures on, model {'on' if model else 'absent'}.\n")
    print("| workers | wall time | packets/s | speed-up | pool start-up | file tasks (sum) | client busy "
          "| load 1-min before/after |")
    print("|---|---|---|---|---|---|---|---|")
    for w, r in res["best"].items():
        print(f"| {w} | {r['wall_s']:.2f} s | {r['packets'] / r['wall_s']:,.0f} | {one['wall_s'] / r['wall_s']:.2f}x | "
              f"{r['startup_s']:.2f} s | {r['file_task_s']:.2f} s | {r['client_s']:.2f} s | "
              f"{r['load_before']:.2f} / {r['load_after']:.2f} |")
    print("\nAll runs (wall s, workers, load before/after): " + ", ".join(
        f"{r['wall_s']:.2f} ({r['workers']}w, {r['load_before']:.2f}/{r['load_after']:.2f})" for r in res["runs"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    p.add_argument("--packets", type=int, default=10_000_000)
    p.add_argument("--flows", type=int, default=50_000)
    p.add_argument("--repeat", type=int, default=1, help="runs per worker count (alternating); the best is reported")
    p.add_argument("--wait-load", type=float, metavar="L",
                   help="before each run, wait (up to 10 min) until the 1-minute load average is below L")
    p.add_argument("--no-model", action="store_true", help="signatures only (default: the shipped model, if any)")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args(argv)

    from classifier.model import default_model_path

    model = str(default_model_path()) if default_model_path().is_file() and not args.no_model else None
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    work = Path(tempfile.mkdtemp(prefix="vpnid-bench-batch-"))
    out = []
    try:
        for name in names:
            res = bench(name, args, work, model)
            report(res, model)
            out.append(res)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nCommand: python bench/bench_batch.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
