"""Obfuscated tunnels: Shadowsocks, VMess, Trojan and OpenVPN wrapped in TLS by stunnel.

Configuration: ``ss-server``/``ss-local`` (shadowsocks-libev, AEAD chacha20-ietf-poly1305)
on TCP 8388, the client fetching an HTTP file from the server through its SOCKS5 port (the
other traffic kinds reach their servers through ``ss-tunnel`` port forwards);
V2Ray's VMess (AEAD header, ``alterId`` 0, AES-128-GCM or ChaCha20-Poly1305 body) on TCP
10086 and Trojan (TLS on 443, the password's hash first, then the proxied stream), each
with a SOCKS5 port on the client that HTTPS fetches go through (TLS inside the proxy);
stunnel on TCP 443 in front of an OpenVPN TCP server on 127.0.0.1:1194, the client's
stunnel listening on 127.0.0.1:1194 for the OpenVPN client (the wire shows only TLS).
"""

from __future__ import annotations

import json
from functools import partial

from classifier.lab.scenarios import Scenario, register
from classifier.lab.scenarios.negatives import start_nginx, write_blob
from classifier.lab.scenarios.openvpn import start_openvpn
from classifier.lab.session import INNER_HTTP_PORT, TRAFFIC_KINDS, Session

SS_PORT = 8388
SS_METHOD = "chacha20-ietf-poly1305"
SS_PASSWORD = "vpnid-lab-not-secret"
#: curl through the client's SOCKS5 port (ss-local, v2ray, trojan all listen on 1080)
VIA_SOCKS = ("--socks5-hostname", "127.0.0.1:1080")


def ss_setup(s: Session) -> None:
    s.extra["http"] = s.http_server(s.server_ns, s.server_ip)
    start_shadowsocks(s)


def start_shadowsocks(s: Session) -> None:
    """ss-server on SS_PORT, ss-local's SOCKS5 port 1080 on the client, ``ss-tunnel`` forwards on demand."""
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
                 VIA_SOCKS, pause=0.4)


VMESS_PORT = 10086
TROJAN_PORT = 443
VMESS_ID = "8f2a7c4e-3b1d-4c59-9e0a-6d5b2f1c7a93"
TROJAN_PASSWORD = "vpnid-lab-not-secret"
# VMess was held out of training until the model of 2026-12-07: random from its first byte, it
# is what BitTorrent's encrypted peer wire, Telegram's MTProto and DNSCrypt look like too, and
# trained on alone it made the model call those VPN. Trained on together with the messaging
# app's MTProto connections (``mtproto-chat``, ``mtproto-media``), a fully random negative of
# the same kind, the model finds it and calls no MTProto flow VPN (docs/model.md, Results).
# Trojan (TLS in TLS) is trained on since the lab's HTTPS speaks TLS 1.3 with browser-weight
# requests and retried hellos (``https-browser``): against those negatives the nested
# handshake is what sets it apart.


#: Where the proxied HTTPS server listens (the server's 443 may be the proxy's own).
PROXIED_HTTPS_PORT = 8443


def proxied_https_server(s: Session) -> None:
    """nginx with TLS on PROXIED_HTTPS_PORT: what a proxy's user fetches is HTTPS, as most browsing is."""
    write_blob(s)
    start_nginx(s, tls=True, port=PROXIED_HTTPS_PORT)


def socks_traffic(s: Session) -> None:
    """HTTPS fetches of the blob through the client's SOCKS5 port (127.0.0.1:1080): TLS inside the proxy."""
    s.fetch_loop(f"https://{s.server_ip}:{PROXIED_HTTPS_PORT}/blob", s.duration,
                 VIA_SOCKS, pause=0.4)


def start_json_proxy(s: Session, tool: str, flag: str, server: dict, client: dict, port: int) -> None:
    """Start ``tool FLAG CONFIG.json`` as the proxy server (listening on ``port``), then as the
    client with its SOCKS5 port 1080; return once both listen."""
    srv = s.lab.spawn(s.server_ns, [tool, flag, str(s.file(f"{tool}-server.json", json.dumps(server)))],
                      f"{tool}-server")
    s.lab.wait_port(s.server_ns, port, procs=[srv])
    cli = s.lab.spawn(s.client_ns, [tool, flag, str(s.file(f"{tool}-client.json", json.dumps(client)))],
                      f"{tool}-client")
    s.lab.wait_port(s.client_ns, 1080, procs=[cli])


def vmess_setup(s: Session) -> None:
    proxied_https_server(s)
    start_vmess(s)


def start_vmess(s: Session) -> None:
    """V2Ray's VMess server on VMESS_PORT, its client's SOCKS5 port 1080."""
    security = s.rng().choice(["aes-128-gcm", "chacha20-poly1305"]) if s.profile.seed else "aes-128-gcm"
    server = {"inbounds": [{"listen": s.server_ip, "port": VMESS_PORT, "protocol": "vmess",
                            "settings": {"clients": [{"id": VMESS_ID, "alterId": 0}]}}],
              "outbounds": [{"protocol": "freedom"}]}
    client = {"inbounds": [{"listen": "127.0.0.1", "port": 1080, "protocol": "socks", "settings": {"udp": False}}],
              "outbounds": [{"protocol": "vmess", "settings": {"vnext": [{
                  "address": s.server_ip, "port": VMESS_PORT,
                  "users": [{"id": VMESS_ID, "alterId": 0, "security": security}]}]}}]}
    start_json_proxy(s, "v2ray", "-config", server, client, VMESS_PORT)


def trojan_setup(s: Session) -> None:
    proxied_https_server(s)
    start_trojan(s)


def start_trojan(s: Session) -> None:
    """Trojan on 443 (handing password-less connections to PROXIED_HTTPS_PORT), its client's SOCKS5 port 1080."""
    pki = s.pki()
    # a connection without the password is handed to remote_addr (Trojan's camouflage): the HTTPS server
    server = {"run_type": "server", "local_addr": s.server_ip, "local_port": TROJAN_PORT,
              "remote_addr": s.server_ip, "remote_port": PROXIED_HTTPS_PORT, "password": [TROJAN_PASSWORD],
              "log_level": 2, "ssl": {"cert": str(pki.server_cert), "key": str(pki.server_key),
                                      "alpn": ["http/1.1"]}}
    client = {"run_type": "client", "local_addr": "127.0.0.1", "local_port": 1080,
              "remote_addr": s.server_ip, "remote_port": TROJAN_PORT, "password": [TROJAN_PASSWORD], "log_level": 2,
              "ssl": {"verify": True, "verify_hostname": False, "cert": str(pki.ca), "alpn": ["http/1.1"]}}
    start_json_proxy(s, "trojan", "-c", server, client, TROJAN_PORT)


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
register(Scenario(
    name="vmess", number=34, vpn=True, protocol="vmess", transport="tcp", server_port=VMESS_PORT,
    notes="V2Ray 4 VMess over TCP (AEAD header, alterId 0); SOCKS proxy, no inner addresses",
    requires=("v2ray",), setup=vmess_setup, traffic=socks_traffic,
    description="V2Ray VMess over TCP: HTTPS fetches through the client's SOCKS5 port; random bytes from the first.",
))
register(Scenario(
    name="trojan", number=35, vpn=True, protocol="trojan", transport="tcp", server_port=TROJAN_PORT,
    notes="Trojan over TLS on 443 (password hash, then the proxied stream); SOCKS proxy, no inner addresses",
    requires=("trojan", "openssl"), setup=trojan_setup, traffic=socks_traffic,
    description="Trojan: TLS on 443 per proxied connection; HTTPS fetches through the client's SOCKS5 port (TLS in TLS).",
))
