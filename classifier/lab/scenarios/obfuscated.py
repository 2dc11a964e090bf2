"""Obfuscated tunnels: Shadowsocks and OpenVPN wrapped in TLS by stunnel.

Configuration: ``ss-server``/``ss-local`` (shadowsocks-libev, AEAD chacha20-ietf-poly1305)
on TCP 8388, the client fetching an HTTP file from the server through its SOCKS5 port (the
other traffic kinds reach their servers through ``ss-tunnel`` port forwards);
stunnel on TCP 443 in front of an OpenVPN TCP server on 127.0.0.1:1194, the client's
stunnel listening on 127.0.0.1:1194 for the OpenVPN client (the wire shows only TLS).
"""

from __future__ import annotations

from functools import partial

from classifier.lab.scenarios import Scenario, register
from classifier.lab.scenarios.openvpn import start_openvpn
from classifier.lab.session import INNER_HTTP_PORT, TRAFFIC_KINDS, Session

SS_PORT = 8388
SS_METHOD = "chacha20-ietf-poly1305"
SS_PASSWORD = "vpnid-lab-not-secret"


def ss_setup(s: Session) -> None:
    s.extra["http"] = s.http_server(s.server_ns, s.server_ip)
    srv = s.lab.spawn(s.server_ns, ["ss-server", "-s", s.server_ip, "-p", str(SS_PORT), "-k", SS_PASSWORD,
                                    "-m", SS_METHOD], "ss-server")
    s.lab.wait_port(s.server_ns, SS_PORT, procs=[srv])
    cli = s.lab.spawn(s.client_ns, ["ss-local", "-s", s.server_ip, "-p", str(SS_PORT), "-b", "127.0.0.1",
                                    "-l", "1080", "-k", SS_PASSWORD, "-m", SS_METHOD], "ss-local")
    s.lab.wait_port(s.client_ns, 1080, procs=[cli])
    s.extra["forward"] = partial(ss_forward, s)


def ss_forward(s: Session, port: int) -> tuple[str, int]:
    """A local ``ss-tunnel`` forward through the Shadowsocks server to 198.18.N.1:``port``.

    Lets the inner-traffic kinds (SSH, iperf3, bulk HTTP) run through the proxy as through
    a layer-3 tunnel; one forward per port, made on first use.
    """
    key = f"ss-tunnel-{port}"
    local = 20000 + port
    if key not in s.extra:
        proc = s.lab.spawn(s.client_ns, ["ss-tunnel", "-s", s.server_ip, "-p", str(SS_PORT), "-b", "127.0.0.1",
                                         "-l", str(local), "-L", f"{s.server_ip}:{port}", "-k", SS_PASSWORD,
                                         "-m", SS_METHOD], key)
        s.lab.wait_port(s.client_ns, local, procs=[proc])
        s.extra[key] = proc
    return "127.0.0.1", local


def ss_traffic(s: Session) -> None:
    s.fetch_loop(f"http://{s.server_ip}:{INNER_HTTP_PORT}/blob", s.duration,
                 ("--socks5-hostname", "127.0.0.1:1080"), pause=0.4)


STUNNEL_SERVER = """\
foreground = yes
pid =
[openvpn]
accept = {ip}:443
connect = 127.0.0.1:1194
cert = {cert}
key = {key}
"""
STUNNEL_CLIENT = """\
foreground = yes
pid =
client = yes
[openvpn]
accept = 127.0.0.1:1194
connect = {ip}:443
CAfile = {ca}
verifyChain = yes
checkIP = {ip}
"""


def stunnel_setup(s: Session) -> None:
    pki = s.pki()
    sconf = s.file("stunnel-server.conf", STUNNEL_SERVER.format(ip=s.server_ip, cert=pki.server_cert,
                                                                key=pki.server_key))
    cconf = s.file("stunnel-client.conf", STUNNEL_CLIENT.format(ip=s.server_ip, ca=pki.ca))
    srv = s.lab.spawn(s.server_ns, ["stunnel4", str(sconf)], "stunnel-server")
    s.lab.wait_port(s.server_ns, 443, procs=[srv])
    cli = s.lab.spawn(s.client_ns, ["stunnel4", str(cconf)], "stunnel-client")
    s.lab.wait_port(s.client_ns, 1194, procs=[cli])
    start_openvpn(s, "tcp", 1194, remote=("127.0.0.1", 1194), server_local="127.0.0.1")


register(Scenario(
    name="shadowsocks", number=31, vpn=True, protocol="shadowsocks", transport="tcp", server_port=SS_PORT,
    notes=f"shadowsocks-libev {SS_METHOD}; SOCKS proxy, no inner addresses",
    requires=("ss-server", "ss-local", "ss-tunnel"), setup=ss_setup, traffic=ss_traffic, kinds=TRAFFIC_KINDS,
    description="Shadowsocks (AEAD): HTTP fetches through ss-local's SOCKS5 port.",
))
register(Scenario(
    name="stunnel-openvpn", number=32, vpn=True, protocol="stunnel-openvpn", transport="tcp", server_port=443,
    notes="OpenVPN TCP inside stunnel TLS on 443", requires=("stunnel4", "openvpn", "openssl"),
    setup=stunnel_setup,
    description="OpenVPN over TCP wrapped in TLS by stunnel on 443: looks like HTTPS on the wire.",
))
