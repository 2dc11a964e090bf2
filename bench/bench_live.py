"""Highest tcpreplay rate ``vpnid live`` keeps up with, without kernel drops (needs root).

    sudo .venv/bin/python bench/bench_live.py [--capture bench/data/live.pcap] [--limit 1000000]
                                              [--rates 50000,100000,top] [-- LIVE OPTIONS]

A veth pair joins two network namespaces; for each rate ``vpnid live`` captures on one
end while ``tcpreplay --preload-pcap --limit N --pps RATE`` (or ``--topspeed``) sends the
first N packets of the capture into the other; SIGINT stops it and its final log line
gives the packets it decoded and the kernel's drop counter, and /proc gives the CPU time
``vpnid live`` used while the replay ran. Prints one Markdown table row per rate. The
capture (1,000,000 packets, 20,000 flows, 128-byte snap length) is made by
bench/make_capture.py when missing.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def make_veth(tag: str) -> tuple[str, str, str, str]:
    ns_cap, ns_tx, if_cap, if_tx = f"vpnid-bench-{tag}-cap", f"vpnid-bench-{tag}-tx", f"vbc{tag}", f"vbt{tag}"
    sh("ip", "netns", "add", ns_cap)
    sh("ip", "netns", "add", ns_tx)
    sh("ip", "link", "add", if_cap, "netns", ns_cap, "type", "veth", "peer", "name", if_tx, "netns", ns_tx)
    for ns, ifname in ((ns_cap, if_cap), (ns_tx, if_tx)):
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        sh("ip", "-n", ns, "link", "set", ifname, "mtu", "65535", "up")
    return ns_cap, if_cap, ns_tx, if_tx


def run_rate(veth: tuple[str, str, str, str], capture: str, limit: int, rate: str, extra: list[str],
             loop: int = 1) -> dict:
    ns_cap, if_cap, ns_tx, if_tx = veth
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "live.log"
        with open(log, "w") as err:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns_cap, sys.executable, "-m", "classifier.cli.main", "live", "-i", if_cap,
                 "-o", f"{tmp}/out", "--alerts", f"{tmp}/alerts.jsonl", "--stats-interval", "1h", *extra],
                stderr=err, stdout=subprocess.DEVNULL, cwd=REPO)
        end = time.monotonic() + 60
        while "capturing on" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"vpnid live did not start: {log.read_text()}")
            time.sleep(0.05)
        speed = ["--topspeed"] if rate == "top" else ["--pps", rate]
        t0, cpu0 = time.monotonic(), cpu_seconds(proc.pid)
        sent = subprocess.run(["ip", "netns", "exec", ns_tx, "tcpreplay", "--preload-pcap", "--limit", str(limit),
                               "--loop", str(loop), "-i", if_tx, *speed, capture],
                              capture_output=True, text=True, check=False)
        time.sleep(0.5)  # let the sensor catch up with what is queued in the ring
        busy = cpu_seconds(proc.pid) - cpu0
        replay_s = time.monotonic() - t0
        proc.send_signal(2)
        proc.wait(timeout=300)
        text = log.read_text()
    actual = re.search(r"Rated: [\d.]+ Bps, ([\d.]+) Mbps, ([\d.]+) pps", sent.stdout)
    stopped = re.search(r"stopped: (\d+) packets, (\d+) flows .*kernel: (\d+) packets, (\d+) dropped", text)
    if sent.returncode != 0 or not stopped:
        raise SystemExit(f"run failed:\n{sent.stdout}\n{sent.stderr}\n{text}")
    return {"rate": rate, "sent_pps": float(actual.group(2)) if actual else float("nan"),
            "sent_mbps": float(actual.group(1)) if actual else float("nan"),
            "decoded": int(stopped.group(1)), "flows": int(stopped.group(2)),
            "kernel": int(stopped.group(3)), "drops": int(stopped.group(4)), "cpu_s": busy, "replay_s": replay_s}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--capture", default=str(REPO / "bench" / "data" / "live.pcap"))
    p.add_argument("--limit", type=int, default=1_000_000, help="packets sent per rate")
    p.add_argument("--rates", default="25000,50000,75000,100000,top")
    p.add_argument("--loop", type=int, default=1, help="send the capture this many times (tcpreplay --loop)")
    p.add_argument("live_args", nargs="*", help="extra `vpnid live` options (after --)")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, veth, AF_PACKET)")
    if not Path(args.capture).exists():
        subprocess.run([sys.executable, str(REPO / "bench" / "make_capture.py"), "-o", args.capture,
                        "--packets", "1000000", "--flows", "20000"], check=True)
    veth = make_veth(str(os.getpid() % 100000))
    try:
        print("| tcpreplay rate | sent (pps) | sent (Mbit/s) | decoded packets | flows | kernel drops "
              "| vpnid CPU (core share) |")
        print("|---|---|---|---|---|---|---|")
        for rate in args.rates.split(","):
            r = run_rate(veth, args.capture, args.limit, rate, args.live_args, args.loop)
            name = "--topspeed" if rate == "top" else f"--pps {int(rate):,}"
            print(f"| {name} | {r['sent_pps']:,.0f} | {r['sent_mbps']:,.0f} | {r['decoded']:,} | {r['flows']:,} | "
                  f"{r['drops']:,} | "
                  f"{r['cpu_s']:.1f} s in {r['replay_s']:.1f} s ({r['cpu_s'] / r['replay_s']:.0%}) |", flush=True)
    finally:
        for ns in veth[0], veth[2]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
