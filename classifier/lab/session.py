"""One scenario run: the lab, its capture and the traffic helpers scenarios share.

Why: scenario modules should only say how to configure and start their daemons; the
capture (tcpdump on the server's veth, started before or after the tunnel comes up),
the traffic through the tunnel and the timing are the same for all of them.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from classifier.lab.netns import (
    VETH,
    Lab,
    LabError,
    Proc,
    client_addr,
    inner_client,
    inner_server,
    server_addr,
)
from classifier.lab.pki import Pki, make_pki

if TYPE_CHECKING:
    from classifier.lab.scenarios import Scenario

#: Port of the small HTTP server that serves traffic through tunnels.
INNER_HTTP_PORT = 8080
#: Size of the file fetched through tunnels, bytes: enough to give bulk packets, small enough
#: to keep committed captures well under 1 MB.
BLOB_SIZE = 24 * 1024


#: Inner-traffic kinds a tunnel scenario can carry (``vpnid lab capture --traffic``); "default"
#: is the ping-plus-small-fetches mix of the committed samples, the rest live in ``lab/traffic.py``.
TRAFFIC_KINDS = ("default", "bulk", "interactive", "mixed", "iperf", "idle")


@dataclass(frozen=True)
class TrafficProfile:
    """Parameters of the traffic a run drives; the defaults made the committed samples.

    Training data wants variety across repeated captures of one scenario, so
    ``TrafficProfile.draw`` picks them at random (``vpnid lab capture --vary``): the kind of
    inner traffic (for tunnels that support several) and its rates, sizes and pauses.
    """

    ping_interval: float = 0.2  # seconds between pings through the tunnel
    ping_size: int = 120  # ICMP payload bytes
    pause_scale: float = 1.0  # multiplies the pauses between fetches / commands
    blob_size: int = BLOB_SIZE  # bytes of the file fetched over HTTP
    rate_kbit: int = 600  # iperf3 target rate
    kind: str = "default"  # inner traffic through a tunnel (TRAFFIC_KINDS)
    bulk_size: int = 4 * 1024 * 1024  # bytes of the large file of the "bulk" kind
    bulk_rate: int = 1024 * 1024  # bytes/s cap of bulk downloads (keeps captures bounded)
    udp: bool = False  # iperf3 over UDP instead of TCP
    reverse: bool = False  # iperf3 -R: the server sends
    datagram: int = 1200  # iperf3 -u datagram / -l write size
    seed: int = 0  # seeds the randomness inside the traffic (keystroke timing, query mix)

    @classmethod
    def draw(cls, rng: random.Random, kinds: tuple[str, ...] = ("default",)) -> TrafficProfile:
        """Random parameters, and a kind chosen from ``kinds`` (those the scenario supports)."""
        base = cls(ping_interval=round(rng.uniform(0.05, 0.5), 3), ping_size=rng.choice([56, 120, 400, 1000, 1300]),
                   pause_scale=round(rng.uniform(0.3, 2.5), 2), blob_size=rng.choice([4, 16, 24, 64, 160]) * 1024,
                   rate_kbit=rng.choice([200, 600, 1500, 4000]))
        kind = rng.choice(kinds)
        return base.with_kind(kind, rng)

    def with_kind(self, kind: str, rng: random.Random | None = None) -> TrafficProfile:
        """This profile with inner-traffic ``kind``; with ``rng``, that kind's parameters drawn at random."""
        if kind not in TRAFFIC_KINDS:
            raise ValueError(f"unknown traffic kind {kind!r}; known: {', '.join(TRAFFIC_KINDS)}")
        if rng is None:
            return replace(self, kind=kind, ping_interval=2.0 if kind == "idle" else self.ping_interval)
        # Every parameter is drawn whatever the kind: negatives with their own traffic (bulk
        # HTTPS, scp, iperf3) use them too.
        extra: dict[str, object] = {
            "kind": kind, "seed": rng.randrange(1 << 30),
            "bulk_size": rng.choice([2, 4, 8, 16]) * 1024 * 1024,
            "bulk_rate": rng.choice([256, 512, 1024, 2048, 4096]) * 1024,
            "udp": rng.random() < 0.5, "reverse": rng.random() < 0.3,
            "datagram": rng.choice([160, 400, 800, 1200]),
        }
        if kind == "iperf":
            extra["rate_kbit"] = rng.choice([100, 300, 1000, 3000, 8000])
        elif kind == "idle":
            extra["ping_interval"] = round(rng.uniform(1.0, 4.0), 2)
        return replace(self, **extra)  # type: ignore[arg-type]

    def describe(self) -> str:
        """Short text for the manifest notes: the kind and the parameters that shape it."""
        if self.kind == "bulk":
            return f"traffic bulk ({self.bulk_size // 1024 // 1024} MiB at {self.bulk_rate // 1024} KiB/s)"
        if self.kind == "iperf":
            return (f"traffic iperf ({'udp' if self.udp else 'tcp'} {self.rate_kbit} kbit/s, "
                    f"{self.datagram}-byte writes{', reverse' if self.reverse else ''})")
        if self.kind == "idle":
            return f"traffic idle (a ping or tiny request every {self.ping_interval:g} s)"
        return f"traffic {self.kind}"


@dataclass
class Session:
    """State handed to a scenario's ``setup`` and ``traffic`` functions."""

    lab: Lab
    scenario: Scenario
    duration: float
    pcap: Path
    capture_proc: Proc | None = None
    profile: TrafficProfile = field(default_factory=TrafficProfile)
    extra: dict[str, object] = field(default_factory=dict)
    #: Which host's veth tcpdump listens on (delayline.TAPS): over a lab path, the end of the path the
    #: capture sees it from (a mirror in front of the server, or at the client's network edge).
    tap: str = "server"

    # Addresses of the fixed plan (docs/lab.md).
    @property
    def n(self) -> int:
        return self.lab.n

    @property
    def server_ip(self) -> str:
        return server_addr(self.n)

    @property
    def client_ip(self) -> str:
        return client_addr(self.n)

    @property
    def inner_server(self) -> str:
        return inner_server(self.n)

    @property
    def inner_client(self) -> str:
        return inner_client(self.n)

    @property
    def routed(self) -> bool:
        """True when the tunnel carries IP packets; False for a TCP proxy (Shadowsocks), set up
        by putting a ``forward`` function in ``extra``: no ping, DNS or UDP through it."""
        return "forward" not in self.extra

    @property
    def service_ip(self) -> str:
        """Where servers for the inner traffic listen: the tunnel-inner address, or for a
        proxy the server's own address (the proxy server connects to it locally)."""
        return self.inner_server if self.routed else self.server_ip

    def reach(self, port: int) -> tuple[str, int]:
        """(host, port) the client connects to for a TCP service on ``service_ip:port``."""
        forward = self.extra.get("forward")
        return forward(port) if callable(forward) else (self.inner_server, port)

    @property
    def server_ns(self) -> str:
        return self.lab.server

    @property
    def client_ns(self) -> str:
        return self.lab.client

    @property
    def work(self) -> Path:
        return self.lab.workdir

    def rng(self) -> random.Random:
        """A fresh generator for the randomness inside the traffic (sizes, pauses), seeded by the profile."""
        return random.Random(self.profile.seed)

    def file(self, name: str, text: str | bytes, mode: int = 0o600) -> Path:
        """Write a configuration file into the run's private work directory."""
        path = self.work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, str):
            text = text.encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(text)
        return path

    def pki(self) -> Pki:
        """The run's certificate authority and key pairs, made on first use."""
        if "pki" not in self.extra:
            self.extra["pki"] = make_pki(self.work, self.server_ip)
        return self.extra["pki"]  # type: ignore[return-value]

    # -- capture ---------------------------------------------------------------------------
    def start_capture(self) -> None:
        """Start tcpdump on the veth of the ``tap`` host (the server's by default); return once it is listening.

        ``-U --immediate-mode`` writes every packet as it arrives, so nothing is lost in
        the kernel buffer when tcpdump is stopped.
        """
        if self.capture_proc is not None:
            return
        ns = self.client_ns if self.tap == "client" else self.server_ns
        proc = self.lab.spawn(ns, ["tcpdump", "-U", "--immediate-mode", "-n", "-s", "262144",
                                   "-i", VETH, "-w", str(self.pcap)], "tcpdump")
        self.capture_proc = proc
        self.lab.wait_for("tcpdump to listen", lambda: "listening on" in proc.tail(5), 10, [proc])

    def stop_capture(self) -> None:
        """Stop tcpdump with SIGINT so that it closes the file cleanly."""
        if self.capture_proc is None:
            return
        time.sleep(0.3)  # let the last replies cross the veth
        self.lab.stop(self.capture_proc, signal.SIGINT)
        self.capture_proc = None
        if not self.pcap.exists():
            raise LabError(f"tcpdump wrote no capture for {self.scenario.name}")

    # -- traffic ---------------------------------------------------------------------------
    def http_server(self, ns: str, bind: str, port: int = INNER_HTTP_PORT, max_size: int | None = None) -> Proc:
        """A small HTTP server (Python's http.server) serving one file of ``profile.blob_size`` bytes,
        at most ``max_size`` (a tunnel too slow for the larger draws within curl's time limit)."""
        root = self.work / f"www-{port}"
        root.mkdir(exist_ok=True)
        size = self.profile.blob_size if max_size is None else min(self.profile.blob_size, max_size)
        (root / "blob").write_bytes(os.urandom(size))
        proc = self.lab.spawn(ns, [sys.executable, "-m", "http.server", "--bind", bind, str(port)],
                              f"http-{port}", cwd=root)
        self.lab.wait_port(ns, port, procs=[proc])
        return proc

    def ping_background(self, addr: str | None = None) -> Proc:
        """Ping ``addr`` (default: the inner server) from the client until teardown."""
        return self.lab.spawn(self.client_ns, ["ping", "-q", "-i", f"{self.profile.ping_interval}",
                                               "-s", f"{self.profile.ping_size}",
                                               addr or self.inner_server], "ping")

    def fetch_loop(self, url: str, seconds: float, extra_args: tuple[str, ...] = (), pause: float = 0.6) -> int:
        """Fetch ``url`` with curl from the client repeatedly for ``seconds``; return successes."""
        deadline = time.monotonic() + seconds
        ok = 0
        while time.monotonic() < deadline:
            res = self.lab.run(self.client_ns, ["curl", "-s", "-k", "-o", "/dev/null", "--max-time", "5",
                                                *extra_args, url], check=False, timeout=10)
            ok += res.returncode == 0
            time.sleep(pause * self.profile.pause_scale)
        if ok == 0:
            raise LabError(f"no successful fetch of {url} through the {self.scenario.name} set-up")
        return ok

    def fetch_blob_loop(self, host: str, port: int) -> int:
        """HTTP fetches of the blob from ``host:port`` for the capture's duration: the traffic of a
        relay whose client end listens locally (kcptun, ptunnel, dns2tcp)."""
        return self.fetch_loop(f"http://{host}:{port}/blob", self.duration, pause=0.4)

    def tunnel_traffic(self) -> None:
        """Default traffic through a layer-3 tunnel: pings plus HTTP fetches of a small file."""
        if "inner_http" not in self.extra:
            self.extra["inner_http"] = self.http_server(self.server_ns, self.inner_server)
        if "ping" not in self.extra:
            self.extra["ping"] = self.ping_background()
        self.fetch_loop(f"http://{self.inner_server}:{INNER_HTTP_PORT}/blob", self.duration)
