"""Inner-traffic kinds for tunnels: bulk download, interactive SSH, mixed, iperf3, idle.

Why: a model trained on tunnels that only ever carry pings and small HTTP fetches learns
that mix instead of the tunnel. Each kind here drives a different application through
the same tunnel (``vpnid lab capture --traffic KIND``, or drawn at random with ``--vary``),
so the tunnel's packet sizes, rates, directions and pauses vary as they do in real use.

Every kind is written against ``Session.reach``/``Session.service_ip``: for a layer-3
tunnel the servers listen on the tunnel-inner address 10.N.0.1; for a TCP proxy
(Shadowsocks) they listen on 198.18.N.1 and the client reaches each port through a local
forward (``ss-tunnel``), and the kinds that need IP (ping, DNS, UDP) fall back to TCP.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from classifier.lab.netns import LabError, Proc
from classifier.lab.session import INNER_HTTP_PORT, Session

SSH_PORT = 22
DNS_PORT = 53
IPERF_PORT = 5201

SSHD_CONF = """\
Port {port}
ListenAddress {ip}
HostKey {work}/ssh_host_ed25519_key
PidFile {work}/sshd-{port}.pid
AuthorizedKeysFile {work}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
"""

#: Commands typed in interactive sessions: short outputs, like a person looking around.
COMMANDS = ("ls -l /etc | head -5", "uptime", "date", "cat /proc/loadavg", "echo $HOSTNAME", "id",
            "df -h / | tail -1", "uname -r", "ps -e | wc -l", "head -3 /etc/os-release", "pwd", "whoami")


# -- shared helpers (the negatives use them too) ----------------------------------------------

def start_sshd(s: Session, ip: str, port: int = SSH_PORT) -> Proc:
    """OpenSSH ``sshd -D`` on ``ip:port`` in the server namespace, with per-run host and user keys."""
    for key in ("ssh_host_ed25519_key", "id_ed25519"):
        if not (s.work / key).exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(s.work / key)], check=True,
                           capture_output=True, timeout=20)
    (s.work / "authorized_keys").write_bytes((s.work / "id_ed25519.pub").read_bytes())
    conf = s.file(f"sshd_config-{port}", SSHD_CONF.format(ip=ip, port=port, work=s.work))
    s.lab.run(s.server_ns, ["mkdir", "-p", "/run/sshd"])  # privilege-separation directory sshd insists on
    proc = s.lab.spawn(s.server_ns, ["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)], f"sshd-{port}")
    s.lab.wait_port(s.server_ns, port, procs=[proc])
    return proc


def ssh_argv(s: Session, host: str, port: int = SSH_PORT, *opts: str) -> list[str]:
    """ssh client arguments for the run's user key, no host-key prompts."""
    return ["ssh", "-i", str(s.work / "id_ed25519"), "-p", str(port), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", *opts,
            f"root@{host}"]


def type_session(s: Session, proc: Proc, rng: random.Random, seconds: float) -> int:
    """Type commands into an interactive shell at human speed for ``seconds``; return keystrokes.

    Keys come 50-350 ms apart (each one echoed by the remote pty, so every keystroke is a
    small packet each way), followed by a think-time pause of 0.4-2.5 s after Enter.
    """
    deadline = time.monotonic() + seconds
    keys = 0
    stdin = proc.popen.stdin
    assert stdin is not None
    while time.monotonic() < deadline and proc.alive():
        for ch in rng.choice(COMMANDS) + "\n":
            try:
                stdin.write(ch.encode())
                stdin.flush()
            except BrokenPipeError:
                break
            keys += 1
            time.sleep(rng.uniform(0.05, 0.35) * s.profile.pause_scale)
            if time.monotonic() >= deadline:
                break
        time.sleep(rng.uniform(0.4, 2.5) * s.profile.pause_scale)
    return keys


def curl_bytes(s: Session, url: str, timeout: float, *extra: str) -> int:
    """Download ``url`` from the client; return the bytes received (0 on failure, partial counts)."""
    res = s.lab.run(s.client_ns, ["curl", "-s", "-k", "-o", "/dev/null", "-w", "%{size_download}",
                                  "--max-time", f"{max(timeout, 1):.1f}", *extra, url],
                    check=False, timeout=timeout + 10)
    try:
        return int(float(res.stdout.decode().strip() or 0))
    except ValueError:
        return 0


def download_for(s: Session, url: str) -> int:
    """Download ``url`` again and again, capped at ``profile.bulk_rate``, for the session's duration.

    Returns the bytes received; 0 means no download worked (the caller says what failed).
    """
    deadline = time.monotonic() + s.duration
    got = 0
    while (left := deadline - time.monotonic()) > 0.2:
        got += curl_bytes(s, url, left, "--limit-rate", str(s.profile.bulk_rate))
    return got


#: Small files next to the blob (Python's http.server ignores Range requests), bytes.
SMALL_SIZES = (100, 300, 2000, 15000)


def _http(s: Session) -> str:
    """Start (once) the inner HTTP server; return its base URL as the client sees it."""
    if "inner_http" not in s.extra:
        s.extra["inner_http"] = s.http_server(s.server_ns, s.service_ip)
        root = s.work / f"www-{INNER_HTTP_PORT}"
        for size in SMALL_SIZES:
            write_random(root / f"s{size}", size)
    host, port = s.reach(INNER_HTTP_PORT)
    return f"http://{host}:{port}"


def _sshd(s: Session) -> tuple[str, int]:
    if "inner_sshd" not in s.extra:
        s.extra["inner_sshd"] = start_sshd(s, s.service_ip)
    return s.reach(SSH_PORT)


def _ping(s: Session) -> None:
    if s.routed and "ping" not in s.extra:
        s.extra["ping"] = s.ping_background()


# -- the kinds ---------------------------------------------------------------------------------

def bulk(s: Session) -> None:
    """Downloads of a several-MB file, rate-capped (``profile.bulk_rate``), for the duration."""
    base = _http(s)
    root = s.work / f"www-{INNER_HTTP_PORT}"
    write_random(root / "big", s.profile.bulk_size)
    if download_for(s, f"{base}/big") == 0:
        raise LabError(f"no bulk download through the {s.scenario.name} set-up")


def interactive(s: Session) -> None:
    """An SSH login through the tunnel with a pty, commands typed key by key with think time."""
    host, port = _sshd(s)
    rng = random.Random(s.profile.seed)
    proc = s.lab.spawn(s.client_ns, ssh_argv(s, host, port, "-tt"), "ssh-interactive", stdin=subprocess.PIPE)
    keys = type_session(s, proc, rng, s.duration)
    if not proc.alive() and proc.popen.returncode not in (0, None):
        raise LabError(f"interactive ssh through {s.scenario.name} exited ({proc.popen.returncode}): {proc.tail()}")
    if keys == 0:
        raise LabError(f"no keystrokes sent through {s.scenario.name}")


def mixed(s: Session) -> None:
    """DNS lookups, HTTP fetches of varied sizes and pings (TCP-only proxies: fetches and SSH commands)."""
    rng = random.Random(s.profile.seed)
    base = _http(s)
    _ping(s)
    if s.routed and "inner_dns" not in s.extra:
        s.extra["inner_dns"] = start_dnsmasq(s, s.service_ip)
    ssh = None if s.routed else _sshd(s)
    deadline = time.monotonic() + s.duration
    ok = i = 0
    while time.monotonic() < deadline:
        r = rng.random()
        if r < 0.4 and s.routed:
            name = f"host{rng.randrange(1000)}.lab.example"
            res = s.lab.run(s.client_ns, ["dig", "+tries=1", "+time=1", "+short", f"@{s.inner_server}", name,
                                          rng.choice(("A", "A", "TXT"))], check=False)
            ok += res.returncode == 0
        elif r < 0.4 and ssh is not None:
            res = s.lab.run(s.client_ns, [*ssh_argv(s, *ssh), rng.choice(COMMANDS)], check=False, timeout=15)
            ok += res.returncode == 0
        else:
            name = rng.choice((*(f"s{n}" for n in SMALL_SIZES[1:]), "blob"))
            ok += curl_bytes(s, f"{base}/{name}", 5) > 0
        i += 1
        time.sleep(rng.uniform(0.05, 0.6) * s.profile.pause_scale)
    if ok == 0:
        raise LabError(f"none of {i} mixed requests through {s.scenario.name} succeeded")


def iperf(s: Session) -> None:
    """iperf3 through the tunnel at ``profile.rate_kbit``: TCP or UDP, either direction."""
    if "inner_iperf" not in s.extra:
        proc = s.lab.spawn(s.server_ns, ["iperf3", "-s", "-B", s.service_ip, "-p", str(IPERF_PORT)], "iperf3-inner")
        s.lab.wait_port(s.server_ns, IPERF_PORT, procs=[proc])
        s.extra["inner_iperf"] = proc
    host, port = s.reach(IPERF_PORT)
    p = s.profile
    args = ["iperf3", "-c", host, "-p", str(port), "-t", f"{max(1, round(s.duration))}", "-b", f"{p.rate_kbit}K",
            "-l", str(p.datagram)]
    if p.udp and s.routed:  # a TCP proxy cannot carry UDP
        args.append("-u")
    if p.reverse:
        args.append("-R")
    s.lab.run(s.client_ns, args, timeout=s.duration + 30)


def idle(s: Session) -> None:
    """Nothing but the tunnel's keepalives and a ping every ``profile.ping_interval`` seconds
    (a TCP proxy: a tiny fetch instead of each ping), for the duration but at least three
    intervals."""
    seconds = max(s.duration, 3 * s.profile.ping_interval)  # at least three pings, or the capture is empty
    if s.routed:
        _ping(s)
        time.sleep(seconds)
        return
    base = _http(s)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        curl_bytes(s, f"{base}/s100", 5)
        time.sleep(s.profile.ping_interval)


def default(s: Session) -> None:
    """The scenario's own traffic (for tunnels: pings plus small HTTP fetches)."""
    (s.scenario.traffic or Session.tunnel_traffic)(s)


KINDS: dict[str, Callable[[Session], None]] = {"default": default, "bulk": bulk, "interactive": interactive,
                                               "mixed": mixed, "iperf": iperf, "idle": idle}


def drive(s: Session) -> None:
    """Run the traffic of the session's profile kind for the capture's duration."""
    KINDS[s.profile.kind](s)


def start_dnsmasq(s: Session, ip: str) -> Proc:
    """dnsmasq answering for ``lab.example`` on ``ip:53`` in the server namespace."""
    proc = s.lab.spawn(s.server_ns, ["dnsmasq", "-k", "--no-resolv", "--no-hosts", "--bind-interfaces",
                                     f"--listen-address={ip}", "--port=53", "--user=root",
                                     f"--pid-file={s.work}/dnsmasq-{ip}.pid", "--address=/lab.example/198.18.0.80",
                                     "--txt-record=txt.lab.example,vpnid lab negative", "--log-facility=-"],
                       f"dnsmasq-{ip}")
    s.lab.wait_port(s.server_ns, DNS_PORT, "udp", procs=[proc])
    return proc


def write_random(path: Path, size: int) -> None:
    """``size`` random bytes (incompressible, like real downloads) written in 1 MiB chunks."""
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            chunk = min(left, 1 << 20)
            fh.write(os.urandom(chunk))
            left -= chunk
