"""Obfuscated tunnels: Shadowsocks and OpenVPN wrapped in TLS by stunnel.

Configuration: ``ss-server``/``ss-local`` (shadowsocks-libev, AEAD chacha20-ietf-poly1305)
on TCP 8388, the client fetching an HTTP file from the server through its SOCKS5 port;
stunnel on TCP 443 in front of an OpenVPN TCP server on 127.0.0.1:1194, the client's
stunnel listening on 127.0.0.1:1194 for the OpenVPN client (the wire shows only TLS).
"""

from __future__ import annotations

from classifier.lab.scenarios import Scenario, register
from classifier.lab.scenarios.openvpn import start_openvpn
from classifier.lab.session import INNER_HTTP_PORT, Session

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
    notes=f"shadowsocks-libev {SS_METHOD}; SOCKS proxy, no inner addresses", requires=("ss-server", "ss-local"),
    setup=ss_setup, traffic=ss_traffic,
    description="Shadowsocks (AEAD): HTTP fetches through ss-local's SOCKS5 port.",
))
register(Scenario(
    name="stunnel-openvpn", number=32, vpn=True, protocol="stunnel-openvpn", transport="tcp", server_port=443,
    notes="OpenVPN TCP inside stunnel TLS on 443", requires=("stunnel4", "openvpn", "openssl"),
    setup=stunnel_setup,
    description="OpenVPN over TCP wrapped in TLS by stunnel on 443: looks like HTTPS on the wire.",
))
