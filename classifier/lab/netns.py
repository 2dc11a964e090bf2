"""Network namespaces, a veth pair and the processes inside them, with guaranteed teardown.

Why this module exists: a lab run starts daemons that hold tun devices, sockets and
namespaces. A failure or Ctrl-C half-way must not leave any of them behind, or the next
run collides with the leftovers (an address already in use, a stale WireGuard control
socket, a namespace with the same name). ``Lab`` is a context manager: whatever happens
inside ``with``, ``close()`` kills every process group it started, kills anything else
still living in its namespaces, and deletes the namespaces (which deletes the veth pair
and every tun device inside them). SIGTERM and SIGHUP are turned into an exception while
a lab is open so that teardown also runs when the process is asked to stop.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from classifier.errors import VpnidError
from classifier.lab.delayline import PathConditions

#: Every namespace the lab creates starts with this, so leftovers can be found and removed.
NS_PREFIX = "vpnid-lab-"
#: Inside each namespace the veth end has this name (names are per namespace).
VETH = "veth0"


class LabError(VpnidError):
    """A lab run could not be set up or a daemon failed; the message says which and why."""


class LabInterrupted(KeyboardInterrupt):
    """Raised from a SIGTERM/SIGHUP handler so that ``finally`` blocks tear down the lab."""


def server_addr(n: int) -> str:
    """Outer (veth) address of the server namespace of scenario ``n``."""
    return f"198.18.{n}.1"


def client_addr(n: int) -> str:
    """Outer (veth) address of the client namespace of scenario ``n``."""
    return f"198.18.{n}.2"


def inner_server(n: int) -> str:
    """Tunnel-inner address of the server side of scenario ``n``."""
    return f"10.{n}.0.1"


def inner_client(n: int) -> str:
    """Tunnel-inner address of the client side of scenario ``n``."""
    return f"10.{n}.0.2"


def run_tag(pid: int) -> str:
    """The tag in the names of everything a lab run in process ``pid`` creates."""
    return str(pid)  # at most 7 digits: interface names like wg107s4194304 stay within 15 characters


@dataclass
class Proc:
    """A process started in a namespace, in its own process group (killed as a group)."""

    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        """Last lines of the process's output, for error messages."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _run_host(argv: Sequence[str], check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    """Run a short host command (``ip``, ``sysctl``); raise LabError with its stderr on failure."""
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]} not found; install the lab packages with `make lab-deps`") from exc
    if check and res.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed: {res.stderr.strip() or res.stdout.strip()}")
    return res


def _kill_group(popen: subprocess.Popen, grace: float = 2.0) -> None:
    """SIGTERM the process group, wait ``grace`` seconds, then SIGKILL it; always reap."""
    try:
        pgid = os.getpgid(popen.pid)
    except ProcessLookupError:
        pgid = None
    if pgid is not None and popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(grace)
    if pgid is not None:  # children of the leader may outlive it: kill the whole group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(5)


def ns_pids(ns: str) -> list[int]:
    """Processes still living in namespace ``ns``."""
    res = _run_host(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def list_lab_namespaces() -> list[str]:
    """Namespaces created by the lab (by name prefix), including leftovers of killed runs."""
    res = _run_host(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in res.stdout.splitlines() if line.startswith(NS_PREFIX)]


def delete_namespace(ns: str) -> None:
    """Kill everything inside ``ns`` and delete it (its interfaces go with it)."""
    for _ in range(3):
        pids = ns_pids(ns)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    _run_host(["ip", "netns", "del", ns], check=False)


def cleanup_leftovers() -> list[str]:
    """Remove namespaces of lab runs that were killed before they could tear down.

    A namespace whose run is still alive (its tag is a running process id) is left alone.
    """
    removed = []
    for ns in list_lab_namespaces():
        parts = ns[len(NS_PREFIX):].split("-")  # N-TAG-s
        if len(parts) == 3 and parts[1].isdigit() and Path(f"/proc/{int(parts[1])}").exists():
            continue
        delete_namespace(ns)
        removed.append(ns)
    return removed


class Lab:
    """Two namespaces (``server``, ``client``) joined by one veth pair, for scenario ``n``.

    Server 198.18.N.1/24 and client 198.18.N.2/24 on ``veth0`` in each namespace; IPv6
    is disabled so captures hold only the scenario's traffic (plus ARP). With a ``path``
    that is more than an MTU, the pair becomes two pairs through a third namespace
    (``path_ns``) where a delay line (lab/delayline.py) bridges them with that path's delay,
    loss and rate; the hosts see one Ethernet segment either way.

    Segmentation offloads are off, so frames are at most the MTU as on a wire; with
    ``offloads`` they stay on and the capture holds what a capture on an end host holds:
    TCP segments coalesced into super-packets of up to 64 KB (a host's NIC segments what it
    sends after the tap, and merges what it receives before it). Only the plain veth pair
    can carry them: the delay line forwards frames of at most the MTU.
    """

    def __init__(self, n: int, keep_workdir: bool = False, path: PathConditions | None = None,
                 offloads: bool = False) -> None:
        if not 1 <= n <= 254:
            raise LabError(f"scenario number {n} outside 1..254")
        if offloads and path is not None and not path.ideal:
            raise LabError("segmentation offloads need the plain veth pair: the delay line of a path "
                           "forwards frames of at most the MTU")
        self.n = n
        #: Names what this process creates (namespaces, work directory, interfaces), so
        #: concurrent runs never collide and each run's leftovers can be told apart.
        self.tag = run_tag(os.getpid())
        self.server = f"{NS_PREFIX}{n}-{self.tag}-s"
        self.client = f"{NS_PREFIX}{n}-{self.tag}-c"
        self.path = path or PathConditions()
        self.offloads = offloads
        self.path_ns = f"{NS_PREFIX}{n}-{self.tag}-p"
        self.procs: list[Proc] = []
        self.cleanups: list[Callable[[], object]] = []
        self.workdir = Path(tempfile.mkdtemp(prefix=f"vpnid-lab-{n}-{self.tag}-"))
        self.keep_workdir = keep_workdir
        self._created: list[str] = []
        self._old_handlers: dict[int, object] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Lab:
        self._install_signal_handlers()
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def _install_signal_handlers(self) -> None:
        def handler(signum, frame):  # pragma: no cover - exercised by the lab test via SIGTERM
            raise LabInterrupted(f"signal {signum}")

        with contextlib.suppress(ValueError):  # not the main thread: the caller must clean up
            for sig in (signal.SIGTERM, signal.SIGHUP):
                self._old_handlers[sig] = signal.signal(sig, handler)

    def _create(self) -> None:
        n = self.n
        bridged = not self.path.ideal  # a delay line in a third namespace joins the hosts
        namespaces = [self.server, self.client] + ([self.path_ns] if bridged else [])
        for ns in namespaces:
            _run_host(["ip", "netns", "add", ns])
            self._created.append(ns)
            for key in ("all", "default"):
                self.exec_host(ns, ["sysctl", "-q", "-w", f"net.ipv6.conf.{key}.disable_ipv6=1"])
            self.exec_host(ns, ["ip", "link", "set", "lo", "up"])
        if bridged:
            for ns, end in ((self.server, "to-server"), (self.client, "to-client")):
                _run_host(["ip", "link", "add", VETH, "netns", ns, "type", "veth", "peer", "name", end,
                           "netns", self.path_ns])
                self._link_up(self.path_ns, end)
                self.exec_host(self.path_ns, ["ip", "link", "set", end, "promisc", "on"])
        else:
            _run_host(["ip", "link", "add", VETH, "netns", self.server, "type", "veth",
                       "peer", "name", VETH, "netns", self.client])
        for ns, addr in ((self.server, server_addr(n)), (self.client, client_addr(n))):
            self.exec_host(ns, ["ip", "addr", "add", f"{addr}/24", "dev", VETH])
            self.exec_host(ns, ["ip", "link", "set", VETH, "mtu", str(self.path.mtu)])
            if bridged:  # the delay line copies frames as bytes: checksums must be in them
                self.exec_host(ns, ["ethtool", "-K", VETH, "tx", "off"])
            self._link_up(ns, VETH)
        if bridged:
            line = self.spawn(self.path_ns, [sys.executable, "-m", "classifier.lab.delayline", "to-server",
                                             "to-client", *self.path.argv(), "--seed", str(n)], "delayline")
            self.wait_for("the delay line to forward", lambda: "forwarding" in line.tail(3), 10, [line])

    def _link_up(self, ns: str, dev: str) -> None:
        """Bring ``dev`` up without segmentation offloads (unless the lab keeps them).

        The capture then holds wire-sized packets (at most the MTU), as on a real link, instead
        of 64 KB super-segments. UDP segmentation is a flag of its own: without it, QUIC stacks
        that batch datagrams (UDP_SEGMENT) showed up as 65,000-byte datagrams. With
        ``offloads`` the TCP ones stay on (a host capture's super-packets) and UDP
        segmentation is still cleared: every host merges TCP, only some applications ask
        for UDP batches.
        """
        if self.offloads:
            self.exec_host(ns, ["ethtool", "-K", dev, "tx-udp-segmentation", "off"])
        else:
            self.exec_host(ns, ["ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off",
                                "tx-udp-segmentation", "off"])
        self.exec_host(ns, ["ip", "link", "set", dev, "up"])

    def close(self) -> None:
        """Tear everything down; safe to call twice and after a partial set-up.

        Ctrl-C and SIGTERM are held off while it runs (it is bounded: a few seconds per
        process at most), so a second Ctrl-C cannot leave half of the lab behind.
        """
        held: dict[int, object] = {}
        with contextlib.suppress(ValueError):  # not the main thread
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                held[sig] = signal.signal(sig, signal.SIG_IGN)
        try:
            self._teardown()
        finally:
            for sig, old in held.items():
                restore = self._old_handlers.get(sig, old)
                with contextlib.suppress(Exception):
                    signal.signal(sig, restore)  # type: ignore[arg-type]
            self._old_handlers.clear()

    def _teardown(self) -> None:
        for proc in reversed(self.procs):
            _kill_group(proc.popen)
        self.procs.clear()
        for fn in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                fn()
        self.cleanups.clear()
        for ns in reversed(self._created):
            delete_namespace(ns)
        self._created.clear()
        if self.keep_workdir:
            print(f"lab: work directory kept: {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- running things --------------------------------------------------------------------
    def exec_host(self, ns: str, argv: Sequence[str], check: bool = True,
                  timeout: float = 20) -> subprocess.CompletedProcess:
        """Run a short command inside ``ns`` and wait for it."""
        return _run_host(["ip", "netns", "exec", ns, *argv], check=check, timeout=timeout)

    def run(self, ns: str, argv: Sequence[str], timeout: float = 30, check: bool = True,
            input: bytes | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a command inside ``ns`` in its own process group; kill the group on timeout."""
        popen = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                 env=self._env(env))
        try:
            out, err = popen.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            _kill_group(popen, grace=0.5)
            raise LabError(f"`{' '.join(argv)}` in {ns} did not finish within {timeout:.0f} s") from exc
        except BaseException:
            _kill_group(popen, grace=0.5)
            raise
        res = subprocess.CompletedProcess(popen.args, popen.returncode, out, err)
        if check and popen.returncode != 0:
            msg = (err or out).decode(errors="replace").strip().splitlines()[-5:]
            raise LabError(f"`{' '.join(argv)}` in {ns} exited with {popen.returncode}: {' | '.join(msg)}")
        return res

    def spawn(self, ns: str, argv: Sequence[str], name: str, env: dict[str, str] | None = None,
              cwd: str | os.PathLike | None = None, stdin: int | None = subprocess.DEVNULL) -> Proc:
        """Start a long-running process inside ``ns``; it is killed at teardown."""
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as fh:
            popen = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=fh, stderr=subprocess.STDOUT,
                                     stdin=stdin, start_new_session=True, env=self._env(env), cwd=cwd)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def spawn_private(self, ns: str, argv: Sequence[str], name: str, binds: dict[str, Path],
                      env: dict[str, str] | None = None) -> Proc:
        """``spawn`` in a private mount namespace where each directory ``binds[target]`` is bound on
        ``target``: daemons that keep pid files, sockets or configuration at fixed paths (/run,
        /var/lib/...) then run twice on one machine, and every run starts from empty directories."""
        mounts = " && ".join(f'mount --bind "{source}" "{target}"' for target, source in binds.items())
        return self.spawn(ns, ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               f"{mounts} && exec {shlex.join(argv)}"], name, env=env)

    def stop(self, proc: Proc, sig: int = signal.SIGTERM, timeout: float = 5) -> None:
        """Stop one process early (e.g. tcpdump, so that it flushes its file)."""
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.popen.pid, sig)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc.popen, grace=0.5)
        if proc in self.procs:
            self.procs.remove(proc)
        _kill_group(proc.popen, grace=0)

    def on_close(self, fn: Callable[[], object]) -> None:
        """Register a callable to run at teardown, after the processes are gone."""
        self.cleanups.append(fn)

    @staticmethod
    def _env(extra: dict[str, str] | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME", "TERM")}
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        if "/usr/sbin" not in env["PATH"]:
            env["PATH"] += ":/usr/sbin:/sbin"
        env.update(extra or {})
        return env

    # -- waiting ---------------------------------------------------------------------------
    def wait_for(self, what: str, check, timeout: float = 15, procs: Sequence[Proc] = ()) -> None:
        """Poll ``check()`` until true; fail early with a log tail if one of ``procs`` died."""
        deadline = time.monotonic() + timeout
        while True:
            if check():
                return
            for proc in procs:
                if not proc.alive():
                    raise LabError(f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}:\n"
                                   f"{proc.tail()}")
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {p.name}:\n{p.tail()}" for p in procs)
                raise LabError(f"timed out after {timeout:.0f} s waiting for {what}" + (f"\n{tails}" if tails else ""))
            time.sleep(0.1)

    def wait_ping(self, ns: str, addr: str, timeout: float = 15, procs: Sequence[Proc] = ()) -> None:
        """Wait until ``addr`` answers a ping from ``ns`` (the tunnel is up)."""
        self.wait_for(f"{addr} to answer ping from {ns}",
                      lambda: self.run(ns, ["ping", "-c1", "-W1", "-q", addr], check=False).returncode == 0,
                      timeout, procs)

    def wait_link(self, ns: str, ifname: str, timeout: float = 10, procs: Sequence[Proc] = ()) -> None:
        """Wait until the network device ``ifname`` exists in ``ns`` (a daemon made its tun or tap)."""
        self.wait_for(f"device {ifname} in {ns}",
                      lambda: self.run(ns, ["ip", "link", "show", ifname], check=False).returncode == 0,
                      timeout, procs)

    def wait_port(self, ns: str, port: int, proto: str = "tcp", timeout: float = 10,
                  procs: Sequence[Proc] = ()) -> None:
        """Wait until something listens on ``port`` inside ``ns``."""
        flag = "-ltn" if proto == "tcp" else "-lun"

        def listening() -> bool:
            out = self.run(ns, ["ss", "-H", flag, f"sport = :{port}"], check=False).stdout
            return bool(out.strip())

        self.wait_for(f"{proto} port {port} in {ns}", listening, timeout, procs)


@contextlib.contextmanager
def lab(n: int, keep_workdir: bool = False) -> Iterator[Lab]:
    """``with lab(n) as l:``, the functional spelling of ``with Lab(n)``."""
    with Lab(n, keep_workdir) as lb:
        yield lb
