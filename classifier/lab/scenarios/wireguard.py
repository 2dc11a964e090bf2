"""WireGuard with ``wireguard-go`` (userspace; no kernel module is needed).

Configuration: keys from ``wg genkey`` per run; the server listens on the scenario's port,
the client has the server as endpoint; inner /24 10.N.0.0 on interfaces ``wgNsTAG``/``wgNcTAG``
(TAG: the run tag).
wireguard-go's control socket is ``/run/wireguard/IFNAME.sock`` in the shared /run, so the
two sides (and concurrent runs) need different interface names.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from classifier.lab.scenarios import Scenario, register
from classifier.lab.session import Session

REQUIRES = ("wireguard-go", "wg")


def _genkey(s: Session, who: str) -> tuple[str, str]:
    """(private key file, public key) made with ``wg``."""
    priv = s.lab.run(s.server_ns, ["wg", "genkey"]).stdout.decode().strip()
    pub = s.lab.run(s.server_ns, ["wg", "pubkey"], input=priv.encode()).stdout.decode().strip()
    return str(s.file(f"wg-{who}.key", priv + "\n")), pub


def setup(s: Session, port: int) -> None:
    """Start wireguard-go on both sides, configure them with ``wg set`` and wait for a ping."""
    ifs, ifc = f"wg{s.n}s{s.lab.tag}", f"wg{s.n}c{s.lab.tag}"  # at most 11 characters
    for ifname in (ifs, ifc):  # a stale socket of a killed run would block wireguard-go
        s.lab.on_close(partial(_remove_socket, ifname))
    skey, spub = _genkey(s, "server")
    ckey, cpub = _genkey(s, "client")
    srv = s.lab.spawn(s.server_ns, ["wireguard-go", "-f", ifs], "wireguard-go-server")
    cli = s.lab.spawn(s.client_ns, ["wireguard-go", "-f", ifc], "wireguard-go-client")
    s.lab.wait_for("wireguard-go sockets",
                   lambda: all(Path(f"/run/wireguard/{i}.sock").exists() for i in (ifs, ifc)), 10, [srv, cli])
    s.lab.run(s.server_ns, ["wg", "set", ifs, "listen-port", str(port), "private-key", skey,
                            "peer", cpub, "allowed-ips", f"{s.inner_client}/32"])
    keepalive = ["persistent-keepalive", "1"] if s.profile.kind == "idle" else []  # idle: keepalives show
    s.lab.run(s.client_ns, ["wg", "set", ifc, "private-key", ckey, "peer", spub,
                            "allowed-ips", f"{s.inner_server}/32", "endpoint", f"{s.server_ip}:{port}", *keepalive])
    for ns, ifname, addr in ((s.server_ns, ifs, s.inner_server), (s.client_ns, ifc, s.inner_client)):
        s.lab.run(ns, ["ip", "addr", "add", f"{addr}/24", "dev", ifname])
        s.lab.run(ns, ["ip", "link", "set", ifname, "up"])
    s.lab.wait_ping(s.client_ns, s.inner_server, procs=[srv, cli])


def _remove_socket(ifname: str) -> None:
    Path(f"/run/wireguard/{ifname}.sock").unlink(missing_ok=True)


register(Scenario(
    name="wireguard", number=1, vpn=True, protocol="wireguard", transport="udp", server_port=51820,
    notes="wireguard-go", requires=REQUIRES, setup=partial(setup, port=51820),
    description="WireGuard on the standard port 51820; handshake, pings and HTTP through the tunnel.",
))
register(Scenario(
    name="wireguard-port443", number=2, vpn=True, protocol="wireguard", transport="udp", server_port=443,
    notes="wireguard-go; non-standard port UDP 443", requires=REQUIRES, setup=partial(setup, port=443),
    description="WireGuard on UDP 443, where port-based rules expect QUIC.",
))
register(Scenario(
    name="wireguard-midflow", number=3, vpn=True, protocol="wireguard", transport="udp", server_port=51820,
    notes="wireguard-go; mid-flow: capture starts after the handshake", requires=REQUIRES,
    setup=partial(setup, port=51820), midflow=True,
    description="WireGuard captured mid-flow: only transport-data messages, no handshake.",
))
