"""``vpnid lab``: list scenarios, make ground-truth captures, remove leftovers.

Why a subcommand and not a script: researchers regenerate the committed samples and
make more training data (longer, repeated runs) with the same code the tests use.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import random
import sys

from classifier.errors import UsageError, VpnidError
from classifier.lab.delayline import TAPS, PathConditions


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("lab", help="make ground-truth captures with real VPN daemons (root)",
                              description="Traffic lab: real VPN daemons in network namespaces, captured "
                                          "with tcpdump, with a ground-truth manifest (docs/lab.md).")
    sub = p.add_subparsers(dest="lab_command", metavar="ACTION")

    ls = sub.add_parser("list", help="list the scenarios and whether their tools are installed")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=run_list)

    cap = sub.add_parser("capture", help="run scenarios and write captures plus MANIFEST.csv (root)")
    cap.add_argument("scenarios", nargs="+", metavar="SCENARIO",
                     help="scenario names or shell patterns (e.g. 'openvpn-*'); 'all' for every scenario, "
                          "'training' for all but the held-out ones (the shipped model's training set)")
    cap.add_argument("-o", "--output", required=True, metavar="DIR",
                     help="directory for the captures; DIR/MANIFEST.csv is created or updated")
    cap.add_argument("--duration", type=float, default=3.0, metavar="S",
                     help="seconds of traffic per capture (default 3; the committed samples use 3)")
    cap.add_argument("--repeat", type=int, default=1, metavar="K",
                     help="captures per scenario; K > 1 names them NAME-r01.pcap ... (training data)")
    cap.add_argument("--first-index", type=int, default=1, metavar="N",
                     help="number repeated captures from N (NAME-rNN.pcap): a later run with another "
                          "--seed adds captures to DIR instead of replacing the first ones (default 1)")
    cap.add_argument("--vary", action=argparse.BooleanOptionalAction, default=None,
                     help="draw the traffic parameters (inner-traffic kind, ping rate and size, pauses, file "
                          "sizes, rates) at random for each capture; default: on when --repeat > 1")
    cap.add_argument("--seed", type=int, default=None, help="seed for --vary (default: random)")
    cap.add_argument("--traffic", default=None, metavar="KIND[,KIND...]",
                     help="inner traffic through tunnels: default (pings + small HTTP fetches), bulk, "
                          "interactive, mixed, iperf, idle, or 'all'; several (comma-separated) or --vary "
                          "pick one per capture at random; scenarios without inner traffic ignore it")
    cap.add_argument("--path", default=None, metavar="SPEC",
                     help="a network path between the hosts (lab/delayline.py): 'vary' draws one per "
                          "capture (round trips 2-400 ms, loss, rate limits, MTUs down to 1400; seeded by "
                          "--seed), or e.g. 'delay=40,jitter=4,loss=0.005,rate=8000,mtu=1400' (one-way ms, "
                          "fraction, kbit/s); default: the plain veth pair")
    cap.add_argument("--tap", choices=TAPS, default="server",
                     help="capture on the server's veth (default) or the client's: over a --path, the end "
                          "of the path the capture sees it from")
    cap.add_argument("--offloads", action="store_true",
                     help="keep the hosts' TCP segmentation offloads on: the capture holds the coalesced "
                          "super-packets (up to 64 KB) that a capture made on an end host holds, instead of "
                          "wire-sized frames; plain veth pair only (not with --path)")
    cap.add_argument("--keep-going", action="store_true",
                     help="continue with the next scenario when one fails (exit status 1 at the end)")
    cap.add_argument("--keep-workdir", action="store_true",
                     help="keep each run's configuration and daemon logs (path printed) for debugging")
    cap.set_defaults(func=run_capture)

    cl = sub.add_parser("clean", help="remove namespaces left by a lab run that was killed (root)")
    cl.set_defaults(func=run_clean)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def select(patterns: list[str]) -> list:
    """Scenarios matching names or patterns, in scenario-number order, without duplicates."""
    from classifier.lab.scenarios import all_scenarios

    scenarios = all_scenarios()
    chosen: dict[str, object] = {}
    for pat in patterns:
        if pat in ("all", "training"):
            names = [n for n, s in scenarios.items() if pat == "all" or s.training]
        else:
            names = fnmatch.filter(scenarios, pat)
        if not names:
            raise UsageError(f"no scenario matches {pat!r}; `vpnid lab list` shows them")
        for n in names:
            chosen[n] = scenarios[n]
    return sorted(chosen.values(), key=lambda s: s.number)  # type: ignore[attr-defined]


def parse_kinds(text: str | None) -> tuple[str, ...] | None:
    """The kinds named by ``--traffic`` (None: not given); 'all' means every kind."""
    from classifier.lab.session import TRAFFIC_KINDS

    if text is None:
        return None
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    if kinds == ("all",):
        return TRAFFIC_KINDS
    bad = [k for k in kinds if k not in TRAFFIC_KINDS]
    if bad or not kinds:
        raise UsageError(f"--traffic: unknown kind {', '.join(bad) or repr(text)}; known: {', '.join(TRAFFIC_KINDS)}, all")
    return kinds


def scenario_kinds(scn, requested: tuple[str, ...] | None) -> tuple[str, ...]:
    """The inner-traffic kinds asked for that the scenario supports (``default`` when none)."""
    return tuple(k for k in scn.traffic_kinds if requested is None or k in requested) or ("default",)


def kind_plan(kinds: tuple[str, ...], repeat: int, rng: random.Random) -> list[str]:
    """Inner-traffic kind of each of ``repeat`` captures: every kind once, in shuffled order, before any twice.

    Why not an independent draw per capture: with four captures and six kinds, chance
    left some tunnels without any bulk transfer in their training data, and the model
    then missed exactly those tunnels carrying downloads.
    """
    plan: list[str] = []
    while len(plan) < repeat:
        cycle = list(kinds)
        rng.shuffle(cycle)
        plan += cycle
    return plan[:repeat]


def choose_profile(scn, requested: tuple[str, ...] | None, vary: bool, rng: random.Random,
                   kind: str | None = None):
    """The traffic profile of one capture: ``kind``, or a kind among those asked for that the scenario supports."""
    from classifier.lab.session import TrafficProfile

    kinds = (kind,) if kind is not None else scenario_kinds(scn, requested)
    if vary:
        return TrafficProfile.draw(rng, kinds)
    if requested is None:
        return TrafficProfile()
    return TrafficProfile().with_kind(rng.choice(kinds))


def parse_path(text: str | None, seed: int | None) -> tuple[PathConditions | None, random.Random | None]:
    """``--path``: a fixed path, or (for 'vary') a generator of its own, so that drawing paths
    leaves the traffic draws of a seed as they were without it."""
    if text is None:
        return None, None
    if text == "vary":
        return None, random.Random(f"path-{seed}" if seed is not None else None)
    try:
        return PathConditions.parse(text), None
    except ValueError as exc:
        raise UsageError(f"--path: {exc}") from None


def run_list(args: argparse.Namespace) -> int:
    from classifier.lab.runner import missing_tools
    from classifier.lab.scenarios import all_scenarios

    rows = []
    for s in all_scenarios().values():
        missing = missing_tools(s)
        rows.append({"number": s.number, "name": s.name, "vpn": s.vpn, "protocol": s.protocol,
                     "transport": s.transport, "server_port": s.server_port, "midflow": s.midflow,
                     "crafted": s.crafted, "training": s.training, "missing": missing, "notes": s.notes,
                     "traffic": list(s.traffic_kinds)})
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print(f"{'N':>3}  {'scenario':<26} {'vpn':<4} {'protocol':<16} {'transport':<9} {'port':>5}  {'ready':<6} notes")
    for r in rows:
        ready = "crafted" if r["crafted"] else ("yes" if not r["missing"] else "no")
        port = "" if r["server_port"] is None else r["server_port"]
        print(f"{r['number']:>3}  {r['name']:<26} {'yes' if r['vpn'] else 'no':<4} {r['protocol']:<16} "
              f"{r['transport']:<9} {port!s:>5}  {ready:<6} {r['notes']}"
              + ("" if r["training"] else " [held out of training]")
              + (f" [missing: {', '.join(r['missing'])}]" if r["missing"] else ""))
    return 0


def run_capture(args: argparse.Namespace) -> int:
    from pathlib import Path

    from classifier.lab.manifest import update_manifest
    from classifier.lab.runner import check_environment, run_scenario

    if args.duration <= 0 or args.duration > 3600:
        raise UsageError("--duration must be between 0 and 3600 seconds")
    if args.repeat < 1:
        raise UsageError("--repeat must be at least 1")
    if not 1 <= args.first_index <= 99 - args.repeat + 1:
        raise UsageError("--first-index must be at least 1, and the last capture's number at most 99")
    requested = parse_kinds(args.traffic)
    fixed_path, path_rng = parse_path(args.path, args.seed)
    if args.offloads and args.path is not None:
        raise UsageError("--offloads needs the plain veth pair: a --path's delay line forwards frames of at "
                         "most the MTU")
    scenarios = select(args.scenarios)
    check_environment(scenarios)
    vary = args.vary if args.vary is not None else args.repeat > 1
    rng = random.Random(args.seed)
    out = Path(args.output)
    failures = 0
    for scn in scenarios:
        plan = kind_plan(scenario_kinds(scn, requested), args.repeat, rng) if vary else [None] * args.repeat
        for k in range(1, args.repeat + 1):
            index = args.first_index + k - 1
            numbered = args.repeat > 1 or args.first_index > 1
            name = f"{scn.name}-r{index:02d}.pcap" if numbered else f"{scn.name}.pcap"
            print(f"lab: {scn.name} (N={scn.number}) -> {out / name}", file=sys.stderr, flush=True)
            try:
                profile = choose_profile(scn, requested, vary, rng, plan[k - 1])
                path = PathConditions.draw(path_rng) if path_rng is not None else fixed_path
                row = run_scenario(scn, out, args.duration, file_name=name, keep_workdir=args.keep_workdir,
                                   profile=profile, path=path, tap=args.tap,
                                   offloads=args.offloads)
            except VpnidError as exc:
                if not args.keep_going:
                    raise
                failures += 1
                print(f"vpnid: error: {scn.name}: {exc}", file=sys.stderr)
                continue
            update_manifest(out / "MANIFEST.csv", [row])
            print(f"lab: {name}: {row.packets} packets, {row.bytes} bytes", file=sys.stderr, flush=True)
    return 1 if failures else 0


def run_clean(args: argparse.Namespace) -> int:
    import os

    from classifier.lab.netns import cleanup_leftovers

    if os.geteuid() != 0:
        raise VpnidError("vpnid lab clean needs root (it deletes network namespaces)")
    removed = cleanup_leftovers()
    print(f"removed {len(removed)} namespace(s)" + (f": {', '.join(removed)}" if removed else ""))
    return 0
