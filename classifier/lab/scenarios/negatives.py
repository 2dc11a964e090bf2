"""Negatives: ordinary traffic that must not be called VPN, some of it tunnel-like.

Configuration per scenario: nginx (HTTPS and HTTP, a fresh EC certificate), dnsmasq
(authoritative answers for ``lab.example``), OpenSSH (host and user keys per run),
iperf3 (rate-limited TCP and UDP bulk transfer), OpenSSL ``s_server``/``s_client`` over
DTLS 1.2 and ngtcp2's ``gtlsserver``/``gtlsclient`` for QUIC (HTTP/3) on UDP 443.
All servers listen on the server's veth address 198.18.N.1.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from functools import partial

from classifier.lab.netns import LabError
from classifier.lab.scenarios import Scenario, register
from classifier.lab.session import Session
from classifier.lab.traffic import ssh_argv, start_dnsmasq, start_sshd

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log stderr;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx-tmp;
  proxy_temp_path {work}/nginx-tmp;
  fastcgi_temp_path {work}/nginx-tmp;
  uwsgi_temp_path {work}/nginx-tmp;
  scgi_temp_path {work}/nginx-tmp;
  server {{
    listen {ip}:{port}{ssl};
    {tls}
    root {work}/www;
  }}
}}
"""


def write_blob(s: Session) -> None:
    """The file the web servers serve: ``s.work/www/blob``, ``profile.blob_size`` random bytes."""
    import os

    www = s.work / "www"
    www.mkdir(exist_ok=True)
    (www / "blob").write_bytes(os.urandom(s.profile.blob_size))


#: Share of runs whose TLS servers offer TLS 1.3 (the rest: TLS 1.2 only). Most HTTPS today is
#: TLS 1.3, whose handshake has other flights than 1.2's (no key exchange after the certificate,
#: session tickets after the client's Finished); nginx 1.22 offers only up to 1.2 unless told.
TLS13_SHARE = 0.75


def tls_protocols(s: Session) -> str:
    """The run's TLS versions for nginx (``ssl_protocols``), drawn from its profile seed."""
    import random

    draw = random.Random(f"tls-versions:{s.profile.seed}").random()  # apart from s.rng()'s sequence
    return "TLSv1.2 TLSv1.3" if draw < TLS13_SHARE else "TLSv1.2"


def start_nginx(s: Session, tls: bool, http2: bool = False, directives: str = "", port: int | None = None) -> None:
    """nginx serving ``s.work/www`` on 443 (TLS, optionally HTTP/2) or plain on 80; returns once it listens.

    ``directives``: more ``server`` directives (keep-alive limits, ...); ``port``: another port
    (a proxy's server holding 443 itself). TLS versions: ``tls_protocols``.
    """
    port = port or (443 if tls else 80)
    (s.work / "nginx-tmp").mkdir(exist_ok=True)
    listen, lines = "", directives
    if tls:
        pki = s.pki()
        listen = " ssl http2" if http2 else " ssl"
        lines = (f"ssl_certificate {pki.server_cert}; ssl_certificate_key {pki.server_key}; "
                 f"ssl_protocols {tls_protocols(s)}; {directives}")
    conf = s.file("nginx.conf", NGINX_CONF.format(work=s.work, ip=s.server_ip, port=port, ssl=listen, tls=lines))
    proc = s.lab.spawn(s.server_ns, ["nginx", "-e", "stderr", "-p", str(s.work), "-c", str(conf)], "nginx")
    s.lab.wait_port(s.server_ns, port, procs=[proc])


def nginx_setup(s: Session, tls: bool) -> None:
    """nginx serving one file over HTTP or HTTPS."""
    write_blob(s)
    start_nginx(s, tls)


def nginx_traffic(s: Session, tls: bool) -> None:
    scheme = "https" if tls else "http"
    s.fetch_loop(f"{scheme}://{s.server_ip}/blob", s.duration, pause=0.4)


def dns_setup(s: Session) -> None:
    start_dnsmasq(s, s.server_ip)


def dns_traffic(s: Session) -> None:
    deadline = time.monotonic() + s.duration
    i = ok = 0
    while time.monotonic() < deadline:
        name, qtype = (f"host{i}.lab.example", "A") if i % 3 else ("txt.lab.example", "TXT")
        res = s.lab.run(s.client_ns, ["dig", "+tries=1", "+time=1", "+short", f"@{s.server_ip}", name, qtype],
                        check=False)
        ok += res.returncode == 0
        i += 1
        time.sleep(0.1 * s.profile.pause_scale)
    if not ok:
        raise LabError("no DNS answer")


def ssh_setup(s: Session) -> None:
    start_sshd(s, s.server_ip)


def ssh_traffic(s: Session) -> None:
    """A few interactive-sized commands then a bulk transfer in one SSH session each."""
    base = ssh_argv(s, s.server_ip)
    deadline = time.monotonic() + s.duration
    while time.monotonic() < deadline:
        s.lab.run(s.client_ns, [*base, f"uname -a; head -c {s.profile.blob_size} /dev/urandom | base64 | head -c 20000"],
                  timeout=20)
        time.sleep(0.3 * s.profile.pause_scale)


def iperf_setup(s: Session) -> None:
    proc = s.lab.spawn(s.server_ns, ["iperf3", "-s", "-B", s.server_ip, "-p", "5201"], "iperf3-server")
    s.lab.wait_port(s.server_ns, 5201, procs=[proc])


def iperf_traffic(s: Session, udp: bool) -> None:
    args = ["iperf3", "-c", s.server_ip, "-p", "5201", "-t", f"{max(1, round(s.duration))}",
            "-b", f"{s.profile.rate_kbit}K"]
    if udp:
        args += ["-u", "-l", "1200"]
    s.lab.run(s.client_ns, args, timeout=s.duration + 30)


def dtls_setup(s: Session) -> None:
    pki = s.pki()
    proc = s.lab.spawn(s.server_ns, ["openssl", "s_server", "-dtls1_2", "-accept", f"{s.server_ip}:4433",
                                     "-cert", str(pki.server_cert), "-key", str(pki.server_key), "-quiet"],
                       "dtls-server", stdin=subprocess.PIPE)
    s.extra["dtls-server"] = proc
    s.lab.wait_port(s.server_ns, 4433, "udp", procs=[proc])


def dtls_client(s: Session):
    """``openssl s_client`` connected to the DTLS server; what is written to its stdin goes out as records."""
    return s.lab.spawn(s.client_ns, ["openssl", "s_client", "-dtls1_2", "-connect", f"{s.server_ip}:4433",
                                     "-quiet"], "dtls-client", stdin=subprocess.PIPE)


def dtls_session(s: Session):
    """Start the DTLS client; return it once its handshake is done (its first line reached the server).

    Why wait: a server that writes before the client has finished its handshake makes
    ``s_client`` give up. Over the plain link the handshake takes microseconds; over a lab
    path (three round trips of up to 400 ms) it outlasted the first pause, and a third of the
    DTLS captures failed. The server printing the client's line shows both ends are past it.
    """
    server = s.extra["dtls-server"]
    client = dtls_client(s)
    send_line(client, "hello\n")
    s.lab.wait_for("the DTLS handshake", lambda: "hello" in server.tail(5), 20, [client, server])
    return client


#: Longest wait for an OpenSSL peer to take a line from its stdin pipe, seconds.
SEND_TIMEOUT = 10.0


def send_line(proc, text: str, timeout: float = SEND_TIMEOUT) -> None:
    """Write ``text`` to an OpenSSL peer's stdin now (it sends what it reads as DTLS records).

    Why not a plain blocking write: when its DTLS peer goes away, ``s_server`` can stop
    reading stdin; the pipe fills and a blocking write would hang the whole lab run. The
    line goes out in pieces the pipe has room for, and a peer that takes nothing for
    ``timeout`` seconds fails the capture instead.
    """
    data = memoryview(text.encode())
    fd = proc.popen.stdin.fileno()
    deadline = time.monotonic() + timeout
    while data:
        _, ready, _ = select.select([], [fd], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise LabError(f"{proc.name} took no input for {timeout:g} s (its peer may be gone): {proc.tail()}")
        try:
            data = data[os.write(fd, data[:select.PIPE_BUF]):]  # room for PIPE_BUF bytes when select says ready
        except BrokenPipeError:
            raise LabError(f"{proc.name} exited before it took its input: {proc.tail()}") from None


def check_dtls_client(proc) -> None:
    if not proc.alive():
        raise LabError(f"DTLS client exited: {proc.tail()}")


def dtls_traffic(s: Session) -> None:
    """One DTLS session: client and server both send lines of varying length for the duration."""
    server = s.extra["dtls-server"]
    proc = dtls_session(s)
    deadline = time.monotonic() + s.duration
    i = 0
    while time.monotonic() < deadline and proc.alive():
        send_line(proc, f"vpnid lab dtls message {i} {'x' * (i * 37 % 400)}\n")
        if i % 2 and server.alive():
            send_line(server, f"reply {i} {'y' * (i * 53 % 900)}\n")
        i += 1
        time.sleep(0.1 * s.profile.pause_scale)
    check_dtls_client(proc)


def quic_setup(s: Session) -> None:
    pki = s.pki()
    write_blob(s)
    proc = s.lab.spawn(s.server_ns, ["gtlsserver", "-q", "-d", str(s.work / "www"), s.server_ip, "443",
                                     str(pki.server_key), str(pki.server_cert)], "quic-server")
    s.lab.wait_port(s.server_ns, 443, "udp", procs=[proc])


def quic_traffic(s: Session) -> None:
    """HTTP/3 fetches of the blob, one QUIC connection each."""
    deadline = time.monotonic() + s.duration
    while time.monotonic() < deadline:
        s.lab.run(s.client_ns, ["gtlsclient", "-q", "--exit-on-all-streams-close", s.server_ip, "443",
                                f"https://{s.server_ip}/blob"], timeout=15)
        time.sleep(0.3 * s.profile.pause_scale)


def register_negative(name: str, number: int, protocol: str, transport: str, port: int | None,
                      requires: tuple[str, ...], setup, traffic, notes: str, description: str,
                      training: bool = True) -> None:
    """Register a non-VPN scenario (daemons in the namespaces, no tunnel); every negative family uses it."""
    register(Scenario(name=name, number=number, vpn=False, protocol=protocol, transport=transport,
                      server_port=port, notes=notes, requires=requires, setup=setup, traffic=traffic,
                      description=description, training=training))


register_negative("https", 100, "https", "tcp", 443, ("nginx", "openssl"), partial(nginx_setup, tls=True),
     partial(nginx_traffic, tls=True), "nginx + curl", "HTTPS downloads of a small file.")
register_negative("http", 101, "http", "tcp", 80, ("nginx",), partial(nginx_setup, tls=False),
     partial(nginx_traffic, tls=False), "nginx + curl", "Plain HTTP downloads of a small file.")
register_negative("dns", 102, "dns", "udp", 53, ("dnsmasq", "dig"), dns_setup, dns_traffic, "dnsmasq + dig, A and TXT",
     "DNS queries over UDP from one client.")
register_negative("ssh", 103, "ssh", "tcp", 22, ("/usr/sbin/sshd", "ssh", "ssh-keygen"), ssh_setup, ssh_traffic,
     "OpenSSH, key auth, command output", "SSH sessions running commands with some bulk output.")
register_negative("iperf3-tcp", 104, "iperf3-tcp", "tcp", 5201, ("iperf3",), iperf_setup, partial(iperf_traffic, udp=False),
     "iperf3 at 600 kbit/s by default", "Rate-limited TCP bulk transfer.")
register_negative("iperf3-udp", 105, "iperf3-udp", "udp", 5201, ("iperf3",), iperf_setup, partial(iperf_traffic, udp=True),
     "iperf3 -u at 600 kbit/s by default, 1200-byte datagrams",
     "Constant-rate UDP stream of equal datagrams: statistically tunnel-like.")
register_negative("dtls", 106, "dtls", "udp", 4433, ("openssl",), dtls_setup, dtls_traffic, "openssl s_server/s_client DTLS 1.2",
     "A DTLS 1.2 session exchanging lines: DTLS like OpenConnect's data channel, but no VPN.")
register_negative("quic", 107, "quic", "udp", 443, ("gtlsserver", "gtlsclient"), quic_setup, quic_traffic,
     "ngtcp2 gtlsserver/gtlsclient, HTTP/3", "QUIC (HTTP/3) fetches on UDP 443.")
