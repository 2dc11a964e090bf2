"""The scenario registry: every capture the lab can make, with its ground truth.

Why one registry: the manifest row of a capture (protocol, transport, port, mid-flow,
notes) is declared next to the code that makes the traffic, so adding a scenario is one
``register(Scenario(...))`` call in one family module (``wireguard.py``, ``openvpn.py``,
...) and the CLI, the docs table and the tests pick it up.

Scenario numbers ``N`` are fixed forever: the addresses 198.18.N.1 (server),
198.18.N.2 (client), 10.N.0.1 / 10.N.0.2 (tunnel inside) are derived from them and
other files (``pcaps/registered-sample.csv``) rely on them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from classifier.lab.session import Session

#: Family modules, imported in this order by ``all_scenarios()``.
FAMILIES = ("wireguard", "openvpn", "ipsec", "openconnect", "obfuscated", "legacy", "tinc", "quicktun",
            "softether", "crafted", "negatives", "services", "dnscrypt", "browser", "messaging", "datagram", "relay", "encapsulation", "probes",
            "kcptun", "iodine", "ptunnel", "dns2tcp")


#: The Python of Debian's packaged Python modules (python3-websockets, python3-libtorrent),
#: not the project's environment: scenarios run their helper scripts that need them with it.
SYSTEM_PYTHON = "/usr/bin/python3"


@dataclass(frozen=True)
class Scenario:
    """How to make one capture and what is in it.

    ``setup`` starts the daemons and returns once the tunnel carries traffic; ``traffic``
    (default: pings and HTTP fetches through the tunnel) runs for the capture's duration.
    A ``craft`` function instead writes the capture itself (packets the kernel here cannot
    produce, built with scapy); such scenarios need neither root nor daemons. A ``rewrite``
    function changes only the framing of a real daemon's capture.
    """

    name: str
    number: int
    vpn: bool
    protocol: str
    transport: str
    server_port: int | None
    notes: str
    description: str
    #: What must be installed: executables, ``gst:ELEMENT`` (a GStreamer element) and
    #: ``py3:MODULE`` (a module of the system Python); ``lab/runner.py: missing_tools``.
    requires: tuple[str, ...] = ()
    setup: Callable[[Session], None] | None = None
    traffic: Callable[[Session], None] | None = None
    craft: Callable[[Path, int, float, int], None] | None = None
    #: Turns the daemons' capture (first path) into the file kept (second): for a framing the
    #: kernel here cannot put on the wire but a real host would (``lab/pcaprewrite.py``).
    rewrite: Callable[[Path, Path], None] | None = None
    midflow: bool = False
    #: False: a held-out scenario. ``vpnid lab capture training`` (the shipped model's training
    #: set, ``make lab-train``) leaves it out; ``all`` and its name still capture it, for
    #: evaluation. Used where a kind of tunnel is measured but, trained on, made the model worse.
    training: bool = True
    #: Inner-traffic kinds the scenario can carry (``lab/traffic.py``). Empty: derived, all
    #: of ``TRAFFIC_KINDS`` for a layer-3 tunnel with the default traffic, else "default" only.
    kinds: tuple[str, ...] = ()

    @property
    def crafted(self) -> bool:
        return self.craft is not None

    @property
    def traffic_kinds(self) -> tuple[str, ...]:
        """The inner-traffic kinds ``--traffic`` and ``--vary`` may choose for this scenario."""
        if self.kinds:
            return self.kinds
        if self.setup is not None and self.traffic is None:
            from classifier.lab.session import TRAFFIC_KINDS

            return TRAFFIC_KINDS
        return ("default",)


_REGISTRY: dict[str, Scenario] = {}
_loaded = False


def register(scenario: Scenario) -> Scenario:
    """Add a scenario; names and numbers must be unique."""
    if scenario.name in _REGISTRY:
        raise ValueError(f"scenario {scenario.name!r} registered twice")
    for other in _REGISTRY.values():
        if other.number == scenario.number:
            raise ValueError(f"scenario number {scenario.number} used by {other.name} and {scenario.name}")
    if not 1 <= scenario.number <= 254:
        raise ValueError(f"scenario number {scenario.number} outside 1..254")
    if scenario.kinds and "default" not in scenario.kinds:
        raise ValueError(f"scenario {scenario.name}: kinds must include 'default'")
    if (scenario.setup is None) == (scenario.craft is None):
        raise ValueError(f"scenario {scenario.name}: give exactly one of setup or craft")
    if scenario.rewrite is not None and scenario.setup is None:
        raise ValueError(f"scenario {scenario.name}: only a captured scenario can be rewritten")
    _REGISTRY[scenario.name] = scenario
    return scenario


def all_scenarios() -> dict[str, Scenario]:
    """Every registered scenario by name, ordered by scenario number."""
    global _loaded
    if not _loaded:
        for fam in FAMILIES:
            importlib.import_module(f"{__name__}.{fam}")
        _loaded = True
    return dict(sorted(_REGISTRY.items(), key=lambda kv: kv[1].number))


def get(name: str) -> Scenario:
    """The scenario called ``name``; KeyError lists the known names."""
    scenarios = all_scenarios()
    if name not in scenarios:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(scenarios)}")
    return scenarios[name]
