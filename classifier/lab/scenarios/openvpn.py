"""OpenVPN 2.6 in point-to-point TLS mode, over UDP and TCP, plain, tls-auth and tls-crypt.

The data channel is AES-256-GCM (2.6's default, packet id in the clear), or AES-256-CBC with an
HMAC-SHA1 tag in the ``-cbc`` and ``-small`` scenarios: the configuration of many 2.4-era
servers still in use, whose packet id is encrypted, so their packets carry no visible
counter. The ``-small`` scenarios also cap the packet size, so the TLS handshake crosses in
dozens of small control packets, as older releases and small-MTU links send it.

Configuration: a fresh EC PKI per run (``classifier.lab.pki``); server ``--tls-server`` with
``--ifconfig 10.N.0.1 10.N.0.2``, client ``--tls-client --remote-cert-tls server``; DCO off
(no kernel module here), so both sides use a tun device. The tls-auth / tls-crypt key is made
with ``openvpn --genkey secret``.
"""

from __future__ import annotations

from functools import partial

from classifier.lab.scenarios import Scenario, register
from classifier.lab.session import Session

REQUIRES = ("openvpn", "openssl")


def start_openvpn(s: Session, proto: str, port: int, auth: str = "", remote: tuple[str, int] | None = None,
                  server_local: str | None = None, cipher: str = "AES-256-GCM", max_packet: int = 0) -> None:
    """Start an OpenVPN server and client and wait until the tunnel answers pings.

    ``auth`` is ``""``, ``"tls-auth"`` or ``"tls-crypt"``. ``remote`` overrides where the
    client connects (e.g. a local stunnel), ``server_local`` where the server listens.
    ``cipher`` is the only data-channel cipher both sides offer; a CBC cipher gets an
    HMAC-SHA1 tag (``--auth SHA1``), as 2.4-era configurations had. ``max_packet`` (bytes)
    caps the packets OpenVPN writes (``--max-packet-size``): the TLS handshake goes out in
    many small control packets, as older releases and small-MTU links send it.
    """
    pki = s.pki()
    key = s.work / "ta.key"
    if auth:
        s.lab.run(s.server_ns, ["openvpn", "--genkey", "secret", str(key)])
    common = ["--dev", "tun", "--disable-dco", "--verb", "3", "--ca", str(pki.ca), "--cipher", cipher,
              "--data-ciphers", cipher, "--ping", "1", "--persist-tun"]
    if cipher.endswith("-CBC"):
        common += ["--auth", "SHA1"]
    if max_packet:
        common += ["--max-packet-size", str(max_packet)]
    srv_args = ["--tls-server", "--dh", "none", "--cert", str(pki.server_cert), "--key", str(pki.server_key),
                "--ifconfig", s.inner_server, s.inner_client, "--local", server_local or s.server_ip,
                "--lport", str(port), "--proto", "udp" if proto == "udp" else "tcp-server"]
    host, rport = remote or (s.server_ip, port)
    cli_args = ["--tls-client", "--remote-cert-tls", "server", "--cert", str(pki.client_cert),
                "--key", str(pki.client_key), "--ifconfig", s.inner_client, s.inner_server,
                "--remote", host, str(rport), "--nobind", "--proto", "udp" if proto == "udp" else "tcp-client",
                "--connect-retry", "1"]
    if auth == "tls-auth":
        srv_args += ["--tls-auth", str(key), "0"]
        cli_args += ["--tls-auth", str(key), "1"]
    elif auth == "tls-crypt":
        srv_args += ["--tls-crypt", str(key)]
        cli_args += ["--tls-crypt", str(key)]
    srv = s.lab.spawn(s.server_ns, ["openvpn", *common, *srv_args], "openvpn-server")
    if proto == "tcp":
        s.lab.wait_port(s.server_ns, port, procs=[srv])
    cli = s.lab.spawn(s.client_ns, ["openvpn", *common, *cli_args], "openvpn-client")
    s.lab.wait_ping(s.client_ns, s.inner_server, timeout=25, procs=[srv, cli])


def setup(s: Session, proto: str, port: int, auth: str = "", cipher: str = "AES-256-GCM",
          max_packet: int = 0) -> None:
    start_openvpn(s, proto, port, auth, cipher=cipher, max_packet=max_packet)


def _add(name: str, number: int, proto: str, port: int, auth: str = "", midflow: bool = False,
         extra_note: str = "", cipher: str = "AES-256-GCM", max_packet: int = 0) -> None:
    cbc = cipher.endswith("-CBC")
    small = f"small control packets (--max-packet-size {max_packet})" if max_packet else ""
    notes = "; ".join(x for x in (auth or "plain TLS", f"{cipher} + HMAC-SHA1" if cbc else "", small, extra_note) if x)
    register(Scenario(
        name=name, number=number, vpn=True, protocol="openvpn", transport=proto, server_port=port,
        notes=notes, requires=REQUIRES,
        setup=partial(setup, proto=proto, port=port, auth=auth, cipher=cipher, max_packet=max_packet),
        midflow=midflow,
        description=f"OpenVPN over {proto.upper()} {port}, {auth or 'no tls-auth/tls-crypt'}"
                    + (f", {cipher} data channel with HMAC-SHA1 (no cleartext packet id)" if cbc else "")
                    + (f", packets capped by --max-packet-size {max_packet}" if max_packet else "")
                    + (", captured mid-flow" if midflow else "") + ".",
    ))


_add("openvpn-udp", 10, "udp", 1194)
_add("openvpn-tcp", 11, "tcp", 1194)
_add("openvpn-udp-tls-auth", 12, "udp", 1194, "tls-auth")
_add("openvpn-tcp-tls-auth", 13, "tcp", 1194, "tls-auth")
_add("openvpn-udp-tls-crypt", 14, "udp", 1194, "tls-crypt")
_add("openvpn-tcp-tls-crypt", 15, "tcp", 1194, "tls-crypt")
_add("openvpn-tcp443", 16, "tcp", 443, extra_note="TCP 443 like HTTPS")
_add("openvpn-udp-midflow", 17, "udp", 1194, midflow=True,
     extra_note="mid-flow: capture starts after the TLS handshake")
_add("openvpn-udp-cbc", 18, "udp", 1194, "tls-auth", cipher="AES-256-CBC")
_add("openvpn-tcp-cbc", 19, "tcp", 1194, cipher="AES-256-CBC")
_add("openvpn-udp-small", 27, "udp", 1194, "tls-auth", cipher="AES-256-CBC", max_packet=100)
_add("openvpn-tcp-small", 28, "tcp", 1194, cipher="AES-256-CBC", max_packet=100)
