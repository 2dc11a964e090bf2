"""tinc 1.0: a mesh VPN daemon with its own protocol, meta connection on TCP and data on UDP.

Configuration: two nodes, ``server`` and ``client``, in router mode; each has an RSA key
pair (``openssl genrsa -traditional``: tinc 1.0 reads PKCS#1 PEM) and a host file with its
Subnet and public key, which both sides hold. The client's ``ConnectTo = server`` opens the
meta connection to TCP 655 (a cleartext ``0 client 17`` greeting, then RSA and an encrypted
stream); packets go over UDP 655 once the nodes have exchanged keys, each one encrypted and
MACed with its sequence number inside (nothing in the clear repeats or counts). Neither
daemon uses a control socket; each gets its own pid file because /run is shared.

The signatures name it from the meta connection's ID lines and associate the UDP flow
with it; for the model it is a tunnel with no cleartext framing at all.
"""

from __future__ import annotations

from classifier.lab.scenarios import Scenario, register
from classifier.lab.session import Session

REQUIRES = ("tincd", "openssl")
PORT = 655

TINC_CONF = """\
Name = {name}
AddressFamily = ipv4
Mode = router
Interface = {ifname}
BindToAddress = {address}
Port = {port}
PingInterval = 10
{connect}
"""

HOST_FILE = """\
{address_line}
Subnet = {subnet}/32
{public_key}"""

TINC_UP = """\
#!/bin/sh
ip addr add {inner}/24 dev "$INTERFACE"
ip link set "$INTERFACE" up
"""


def _node(s: Session, name: str) -> tuple[str, str]:
    """Make ``name``'s private key in its directory; return (directory, PKCS#1 public key PEM)."""
    d = s.work / f"tinc-{name}"
    (d / "hosts").mkdir(parents=True, exist_ok=True)
    key = d / "rsa_key.priv"
    s.lab.run(s.server_ns, ["openssl", "genrsa", "-traditional", "-out", str(key), "2048"])
    key.chmod(0o600)
    pub = s.lab.run(s.server_ns, ["openssl", "rsa", "-in", str(key), "-RSAPublicKey_out"]).stdout.decode()
    return str(d), pub


def setup(s: Session) -> None:
    """Write both nodes' configurations and host files, start the daemons, wait for a ping."""
    nodes = {"server": (s.server_ip, s.inner_server, f"tinc{s.n}s{s.lab.tag}"),
             "client": (s.client_ip, s.inner_client, f"tinc{s.n}c{s.lab.tag}")}
    dirs, pubs = {}, {}
    for name in nodes:
        dirs[name], pubs[name] = _node(s, name)
    for name, (address, inner, ifname) in nodes.items():
        d = f"tinc-{name}"
        s.file(f"{d}/tinc.conf", TINC_CONF.format(name=name, ifname=ifname, address=address, port=PORT,
                                                  connect="ConnectTo = server" if name == "client" else ""))
        s.file(f"{d}/tinc-up", TINC_UP.format(inner=inner), mode=0o700)
        for host, (host_address, host_inner, _) in nodes.items():
            s.file(f"{d}/hosts/{host}", HOST_FILE.format(
                address_line=f"Address = {host_address} {PORT}" if host == "server" else "",
                subnet=host_inner, public_key=pubs[host]))
    procs = []
    for name, ns in (("server", s.server_ns), ("client", s.client_ns)):
        procs.append(s.lab.spawn(ns, ["tincd", "-c", dirs[name], "-D", "-d1",
                                      f"--pidfile={s.work}/tinc-{name}.pid"], f"tincd-{name}"))
        if name == "server":
            s.lab.wait_port(s.server_ns, PORT, procs=procs)
    s.lab.wait_ping(s.client_ns, s.inner_server, timeout=25, procs=procs)


register(Scenario(
    name="tinc", number=45, vpn=True, protocol="tinc", transport="udp", server_port=PORT,
    notes="tinc 1.0 router mode, RSA keys; meta connection TCP 655, data UDP 655", requires=REQUIRES,
    setup=setup,
    description="tinc 1.0: meta connection on TCP 655, encrypted packets on UDP 655.",
))
