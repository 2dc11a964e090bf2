"""Run scenarios: check the environment, set up, capture, tear down, write a manifest row.

Why the order matters: for an ordinary scenario the capture starts before the daemons so
the handshake is in it; for a mid-flow scenario the tunnel is brought up and traffic is
flowing before tcpdump starts, so the capture begins in the middle of the tunnel flow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import dpkt

from classifier.errors import VpnidError
from classifier.lab import debian_archive
from classifier.lab.delayline import TAPS, PathConditions
from classifier.lab.manifest import ManifestRow
from classifier.lab.netns import Lab, LabError
from classifier.lab.scenarios import SYSTEM_PYTHON, Scenario
from classifier.lab.session import Session, TrafficProfile
from classifier.lab.traffic import drive
from classifier.output import atomic_path

#: Tools every live scenario needs besides its own daemons.
BASE_TOOLS = ("ip", "ethtool", "tcpdump", "ping", "curl", "ss")
DEFAULT_DURATION = 3.0
#: Quiet time after a mid-flow scenario's set-up before the capture starts.
MIDFLOW_LEAD_S = 1.5


def _installed(requirement: str) -> bool:
    """Is one entry of ``Scenario.requires`` present: an executable on the PATH (plus the sbin
    directories), ``gst:ELEMENT`` a GStreamer element, ``py3:MODULE`` a module of the system Python,
    ``deb:SUITE/PACKAGE`` a package of an earlier Debian release: unpacked already, or fetchable
    and checkable here (``lab/debian_archive.py`` fetches it when the scenario starts)."""
    kind, _, name = requirement.partition(":")
    if kind == "deb" and name:
        return debian_archive.fetchable()
    if kind == "gst" and name:
        argv = ["gst-inspect-1.0", name]
    elif kind == "py3" and name:
        argv = [SYSTEM_PYTHON, "-c", f"import {name}"]
    else:
        path = os.environ.get("PATH", "") + ":" + ":".join(["/usr/sbin", "/sbin", "/usr/lib/ipsec"])
        return shutil.which(requirement, path=path) is not None
    try:
        return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def missing_tools(scenario: Scenario) -> list[str]:
    """What the scenario needs (``BASE_TOOLS`` and its ``requires``) that is not installed."""
    if scenario.crafted:
        return []
    return [t for t in dict.fromkeys((*BASE_TOOLS, *scenario.requires)) if not _installed(t)]


def check_environment(scenarios: list[Scenario]) -> None:
    """Refuse to start unless root and every needed tool is installed (one clear message)."""
    live = [s for s in scenarios if not s.crafted]
    if live and os.geteuid() != 0:
        raise VpnidError("vpnid lab capture needs root (network namespaces, veth pairs, tcpdump); "
                         "run it as root, e.g. with sudo")
    missing = sorted({t for s in live for t in missing_tools(s)})
    if missing:
        raise VpnidError(f"missing lab tools: {', '.join(missing)}; install them with `make lab-deps` "
                         "(apt-get install --no-install-recommends, see docs/lab.md)")


def count_pcap(path: str | os.PathLike) -> tuple[int, int]:
    """(records, sum of captured lengths) of a pcap file, as dpkt reads it."""
    packets = 0
    total = 0
    with open(path, "rb") as fh:
        for _ts, buf in dpkt.pcap.Reader(fh):
            packets += 1
            total += len(buf)
    return packets, total


def effective_profile(scenario: Scenario, profile: TrafficProfile | None) -> TrafficProfile:
    """The profile a run uses: a kind the scenario does not support falls back to its own traffic."""
    profile = profile or TrafficProfile()
    if profile.kind not in scenario.traffic_kinds:
        profile = replace(profile, kind="default")
    return profile


#: The manifest's words for a capture made with the hosts' segmentation offloads on.
OFFLOADS_NOTE = "segmentation offloads on (TCP super-packets, as captured on a host)"


def capture_notes(scenario: Scenario, profile: TrafficProfile, path: PathConditions | None = None,
                  tap: str = "server", offloads: bool = False) -> str:
    """Manifest notes of one capture: the scenario's, plus the inner traffic when it is not the
    default (so the committed samples' rows equal the registry's notes), plus the network path
    when it is not the plain veth pair, plus the tap when it is not the server's, plus the
    offloads when they were kept."""
    parts = [_traffic_notes(scenario, profile)]
    if not scenario.crafted:  # crafted captures have no link and no tap
        if path is not None and path != PathConditions():
            parts.append(path.describe())
        if tap == "client":
            parts.append("captured at the client")
        if offloads:
            parts.append(OFFLOADS_NOTE)
    return "; ".join(part for part in parts if part)


def _traffic_notes(scenario: Scenario, profile: TrafficProfile) -> str:
    if scenario.crafted and profile.seed:
        return f"{scenario.notes}; inner pattern drawn with seed {profile.seed}"
    if len(scenario.traffic_kinds) > 1 and profile != TrafficProfile():
        return f"{scenario.notes}; {profile.describe()}" if scenario.notes else profile.describe()
    return scenario.notes


def run_scenario(scenario: Scenario, outdir: str | os.PathLike, duration: float = DEFAULT_DURATION,
                 file_name: str | None = None, keep_workdir: bool = False,
                 profile: TrafficProfile | None = None, path: PathConditions | None = None,
                 tap: str = "server", offloads: bool = False) -> ManifestRow:
    """Make one capture of ``scenario`` into ``outdir``; return its manifest row.

    The capture appears in ``outdir`` only when the run succeeded (written atomically);
    the lab is torn down in every case. ``profile`` sets the traffic parameters (default:
    those of the committed samples; crafted scenarios use only its seed, to draw their inner
    pattern), and a kind of inner traffic
    the scenario does not support falls back to its own traffic. When the traffic differs
    from the default, the manifest notes say which kind and parameters were used. ``path``
    puts a network path (delay, loss, rate, MTU; lab/delayline.py) between the two hosts;
    crafted scenarios have no hosts and ignore it. ``tap`` is the host whose veth is captured
    (``TAPS``): over a path, the end it is seen from. ``offloads`` keeps the hosts' TCP
    segmentation offloads on (``Lab``), so the capture holds a host capture's super-packets.
    """
    if tap not in TAPS:
        raise LabError(f"unknown tap {tap!r}; known: {', '.join(TAPS)}")
    profile = effective_profile(scenario, profile)
    notes = capture_notes(scenario, profile, path, tap, offloads)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    name = file_name or f"{scenario.name}.pcap"
    target = out / name
    if scenario.crafted:
        with atomic_path(target) as tmp:
            scenario.craft(tmp, scenario.number, duration, profile.seed)  # type: ignore[misc]
    else:
        with Lab(scenario.number, keep_workdir=keep_workdir, path=path, offloads=offloads) as lab:
            session = Session(lab, scenario, duration, lab.workdir / "capture.pcap",
                              profile=profile, tap=tap)
            if not scenario.midflow:
                session.start_capture()
            scenario.setup(session)  # type: ignore[misc]
            if scenario.midflow:
                session.extra["ping"] = session.ping_background()
                time.sleep(MIDFLOW_LEAD_S)
                session.start_capture()
            drive(session)
            session.stop_capture()
            with atomic_path(target) as tmp:
                if scenario.rewrite is not None:
                    scenario.rewrite(session.pcap, tmp)
                else:
                    shutil.copyfile(session.pcap, tmp)
    packets, nbytes = count_pcap(target)
    if packets == 0:
        target.unlink(missing_ok=True)
        raise LabError(f"{scenario.name}: the capture is empty")
    return ManifestRow(file=name, scenario=scenario.name, vpn=scenario.vpn, protocol=scenario.protocol,
                       transport=scenario.transport, server_port=scenario.server_port,
                       midflow=scenario.midflow, notes=notes, packets=packets, bytes=nbytes)
