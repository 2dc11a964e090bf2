"""OpenVPN 2.6 and 2.5 in point-to-point TLS mode, over UDP and TCP, plain, tls-auth and tls-crypt.

The data channel is AES-256-GCM (2.6's default, packet id in the clear), or AES-256-CBC with an
HMAC-SHA1 tag in the ``-cbc`` and ``-small`` scenarios: the configuration of many 2.4-era
servers still in use, whose packet id is encrypted, so their packets carry no visible
counter. The ``-small`` scenarios also cap the packet size, so the TLS handshake crosses in
dozens of small control packets, as older releases and small-MTU links send it.

Configuration: a fresh EC PKI per run (``classifier.lab.pki``); server ``--tls-server`` with
``--ifconfig 10.N.0.1 10.N.0.2``, client ``--tls-client --remote-cert-tls server``; DCO off
(no kernel module here), so both sides use a tun device. The tls-auth / tls-crypt key is made
with ``openvpn --genkey secret``.

The ``openvpn25-`` scenarios run OpenVPN 2.5 (Debian 11's package, fetched and checked from
Debian's archive by ``classifier.lab.debian_archive``, run from a cache directory) on one or
both sides. Its handshake differs on the wire from 2.6's: 2.6 piggybacks a growing list of
acknowledgements on its control packets (the count at byte 9 rises 1, 2, 3, ...), 2.5 (and, by
the public corpus's captures, older servers) acknowledges in separate P_ACK_V1 packets and
numbers its control messages at offset 13 after an empty list. Trained on 2.6 alone, a model
learns one release's handshake (docs/model.md, Limits); the shipped model is trained on both
(docs/model.md, Results: "OpenVPN 2.5 in training").
"""

from __future__ import annotations

from functools import partial

from classifier.lab import debian_archive
from classifier.lab.scenarios import Scenario, register
from classifier.lab.session import Session

REQUIRES = ("openvpn", "openssl")
#: OpenVPN 2.5 and the libraries Debian 12 no longer ships (libssl1.1 and the pkcs11 helper
#: built against it); the rest (lzo, lz4, libc, ...) comes from the system.
OPENVPN_25 = ("bullseye", ("openvpn", "libssl1.1", "libpkcs11-helper1"), "usr/sbin/openvpn")
REQUIRES_25 = (*REQUIRES, "deb:bullseye/openvpn")


def openvpn_command(release: str) -> tuple[list[str], dict[str, str]]:
    """argv prefix and environment for OpenVPN ``release`` ("2.6": the system's; "2.5": Debian 11's).

    The prefix holds the options only that release takes: 2.6 is told to keep data channel
    offload off (no kernel module here); 2.5 has no offload, nor the option.
    """
    if release == "2.6":
        return ["openvpn", "--disable-dco"], {}
    if release == "2.5":
        prog = debian_archive.program(*OPENVPN_25)
        return [prog.argv0], prog.env
    raise ValueError(f"no OpenVPN release {release!r} in the lab; choose 2.6 or 2.5")


def start_openvpn(s: Session, proto: str, port: int, auth: str = "", remote: tuple[str, int] | None = None,
                  server_local: str | None = None, cipher: str = "AES-256-GCM", max_packet: int = 0,
                  server_release: str = "2.6", client_release: str = "2.6") -> None:
    """Start an OpenVPN server and client and wait until the tunnel answers pings.

    ``auth`` is ``""``, ``"tls-auth"`` or ``"tls-crypt"``. ``remote`` overrides where the
    client connects (e.g. a local stunnel), ``server_local`` where the server listens.
    ``cipher`` is the only data-channel cipher both sides offer; a CBC cipher gets an
    HMAC-SHA1 tag (``--auth SHA1``), as 2.4-era configurations had. ``max_packet`` (bytes)
    caps the packets OpenVPN writes (``--max-packet-size``): the TLS handshake goes out in
    many small control packets, as older releases and small-MTU links send it.
    ``server_release`` and ``client_release`` pick OpenVPN 2.6 (the system's) or 2.5 per side.
    """
    pki = s.pki()
    key = s.work / "ta.key"
    if auth:
        s.lab.run(s.server_ns, ["openvpn", "--genkey", "secret", str(key)])
    common = ["--dev", "tun", "--verb", "3", "--ca", str(pki.ca), "--cipher", cipher,
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
    srv_cmd, srv_env = openvpn_command(server_release)
    cli_cmd, cli_env = openvpn_command(client_release)
    srv = s.lab.spawn(s.server_ns, [*srv_cmd, *common, *srv_args], "openvpn-server", env=srv_env)
    if proto == "tcp":
        s.lab.wait_port(s.server_ns, port, procs=[srv])
    cli = s.lab.spawn(s.client_ns, [*cli_cmd, *common, *cli_args], "openvpn-client", env=cli_env)
    s.lab.wait_ping(s.client_ns, s.inner_server, timeout=25, procs=[srv, cli])


def setup(s: Session, proto: str, port: int, auth: str = "", cipher: str = "AES-256-GCM",
          max_packet: int = 0, releases: tuple[str, str] = ("2.6", "2.6")) -> None:
    start_openvpn(s, proto, port, auth, cipher=cipher, max_packet=max_packet,
                  server_release=releases[0], client_release=releases[1])


def _add(name: str, number: int, proto: str, port: int, auth: str = "", midflow: bool = False,
         extra_note: str = "", cipher: str = "AES-256-GCM", max_packet: int = 0,
         releases: tuple[str, str] = ("2.6", "2.6")) -> None:
    cbc = cipher.endswith("-CBC")
    small = f"small control packets (--max-packet-size {max_packet})" if max_packet else ""
    server, client = releases
    release = "" if releases == ("2.6", "2.6") else (
        f"OpenVPN {server}" if server == client else f"server OpenVPN {server}, client {client}")
    notes = "; ".join(x for x in (release, auth or "plain TLS", f"{cipher} + HMAC-SHA1" if cbc else "", small,
                                  extra_note) if x)
    register(Scenario(
        name=name, number=number, vpn=True, protocol="openvpn", transport=proto, server_port=port,
        notes=notes, requires=REQUIRES if "2.5" not in releases else REQUIRES_25,
        setup=partial(setup, proto=proto, port=port, auth=auth, cipher=cipher, max_packet=max_packet,
                      releases=releases),
        midflow=midflow,
        description=(f"OpenVPN {server}" if server == client else f"OpenVPN {client} client to a {server} server")
                    + f" over {proto.upper()} {port}, {auth or 'no tls-auth/tls-crypt'}"
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
_add("openvpn25-udp", 154, "udp", 1194, releases=("2.5", "2.5"))
_add("openvpn25-udp-tls-auth", 155, "udp", 1194, "tls-auth", cipher="AES-256-CBC", releases=("2.5", "2.5"))
_add("openvpn25-tcp", 156, "tcp", 1194, releases=("2.5", "2.5"))
_add("openvpn25-client-udp", 157, "udp", 1194, "tls-crypt", releases=("2.6", "2.5"))
