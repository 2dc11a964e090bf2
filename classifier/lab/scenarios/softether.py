"""SoftEther VPN: Ethernet frames over a TLS connection on TCP 443, the SSL-VPN of VPN Gate.

Configuration: ``vpnserver execsvc`` (foreground) and ``vpnclient execsvc``, each under
``unshare --mount`` with private directories bound on /var/lib/softether (where Debian's
build keeps its configuration) and /run/softether, so every run starts from an empty
configuration. ``vpncmd`` sets them up over their admin ports: on the server a user with a
password on the hub ``DEFAULT`` and a local bridge to a tap device (``tap_lab``), which
takes the inner server address; on the client a virtual NIC (``vpn_lab``) and an account
that connects to TCP 443 and takes the inner client address. Frames cross the hub as on a
switch, so ARP runs through the tunnel too. The client may open more TCP connections to
the server for the same session; every flow on 443 between the two is the tunnel.
"""

from __future__ import annotations

from pathlib import Path

from classifier.lab.netns import Proc
from classifier.lab.scenarios import Scenario, register
from classifier.lab.session import Session

SERVER = "/usr/libexec/softether/vpnserver/vpnserver"
CLIENT = "/usr/libexec/softether/vpnclient/vpnclient"
REQUIRES = (SERVER, CLIENT, "vpncmd", "unshare")
PORT = 443
PASSWORD = "vpnid-lab-not-secret"
#: Where Debian's build keeps its configuration and its run files.
MOUNTS = ("/var/lib/softether", "/run/softether")


def _start(s: Session, side: str, ns: str, binary: str) -> Proc:
    """Run one SoftEther daemon in the foreground with its own configuration and run directories."""
    binds = {target: s.work / f"softether-{side}" / target.strip("/").replace("/", "-") for target in MOUNTS}
    for d in (*MOUNTS, *binds.values()):  # mount points and the private directories bound on them
        Path(d).mkdir(parents=True, exist_ok=True)
    return s.lab.spawn_private(ns, [binary, "execsvc"], f"softether-{side}", binds=binds)


def _vpncmd(s: Session, ns: str, target: list[str], *command: str) -> None:
    s.lab.run(ns, ["vpncmd", *target, "/CMD", *command])


def setup(s: Session) -> None:
    """Configure the server's hub and bridge and the client's account, connect, wait for a ping."""
    srv = _start(s, "server", s.server_ns, SERVER)
    s.lab.wait_port(s.server_ns, 5555, procs=[srv])
    hub = ["localhost:5555", "/SERVER", "/HUB:DEFAULT"]
    _vpncmd(s, s.server_ns, hub, "UserCreate", "lab", "/GROUP:none", "/REALNAME:none", "/NOTE:none")
    _vpncmd(s, s.server_ns, hub, "UserPasswordSet", "lab", f"/PASSWORD:{PASSWORD}")
    _vpncmd(s, s.server_ns, ["localhost:5555", "/SERVER"], "BridgeCreate", "DEFAULT", "/DEVICE:lab", "/TAP:yes")
    s.lab.wait_link(s.server_ns, "tap_lab", procs=[srv])
    s.lab.run(s.server_ns, ["ip", "addr", "add", f"{s.inner_server}/24", "dev", "tap_lab"])

    cli = _start(s, "client", s.client_ns, CLIENT)
    client = ["localhost", "/CLIENT"]  # vpncmd finds the client's admin port (9930 or 9931) itself
    s.lab.wait_for("SoftEther client admin port", lambda: s.lab.run(
        s.client_ns, ["vpncmd", *client, "/CMD", "AccountList"], check=False).returncode == 0, 10, [srv, cli])
    _vpncmd(s, s.client_ns, client, "NicCreate", "lab")
    _vpncmd(s, s.client_ns, client, "AccountCreate", "lab", f"/SERVER:{s.server_ip}:{PORT}", "/HUB:DEFAULT",
            "/USERNAME:lab", "/NICNAME:lab")
    _vpncmd(s, s.client_ns, client, "AccountPasswordSet", "lab", f"/PASSWORD:{PASSWORD}", "/TYPE:standard")
    _vpncmd(s, s.client_ns, client, "AccountConnect", "lab")
    s.lab.wait_link(s.client_ns, "vpn_lab", procs=[srv, cli])
    s.lab.run(s.client_ns, ["ip", "addr", "add", f"{s.inner_client}/24", "dev", "vpn_lab"])
    s.lab.wait_ping(s.client_ns, s.inner_server, timeout=25, procs=[srv, cli])


register(Scenario(
    name="softether", number=33, vpn=True, protocol="softether", transport="tcp", server_port=PORT,
    notes="SoftEther VPN 4.x/5.x server and client, password auth, local bridge; Ethernet over TLS on TCP 443",
    requires=REQUIRES, setup=setup,
    description="SoftEther VPN (the SSL-VPN VPN Gate runs): Ethernet frames over TLS on TCP 443.",
))
