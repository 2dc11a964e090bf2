"""QuickTun: a one-datagram-per-packet UDP tunnel with NaCl encryption (``nacltai``).

Configuration: ``keypair`` makes each side's Curve25519 key pair; both sides run
``quicktun`` configured through its environment (``PROTOCOL=nacltai``, tun mode), the
server bound to UDP 2998 and floating to wherever the client writes from. There is no
handshake: every datagram is a 16-byte TAI64NA nonce (a clock in seconds, nanoseconds and
attoseconds, in the clear and rising from packet to packet, but not by one), the
authenticator and the encrypted inner packet; the signature reads that nonce
(``classifier/signatures/quicktun.py``).
"""

from __future__ import annotations

from classifier.lab.scenarios import Scenario, register
from classifier.lab.session import Session

REQUIRES = ("quicktun", "keypair")
PORT = 2998


def _keypair(s: Session) -> tuple[str, str]:
    """(secret, public) hex keys from ``keypair``."""
    out = s.lab.run(s.server_ns, ["keypair"]).stdout.decode()
    keys = dict(line.split(": ", 1) for line in out.splitlines() if line.startswith(("SECRET: ", "PUBLIC: ")))
    return keys["SECRET"].strip(), keys["PUBLIC"].strip()[:64]


def setup(s: Session) -> None:
    """Start both ends, put the inner addresses on their tun devices, wait for a ping."""
    (ssec, spub), (csec, cpub) = _keypair(s), _keypair(s)
    sides = (("server", s.server_ns, s.server_ip, s.client_ip, s.inner_server, s.inner_client, ssec, cpub),
             ("client", s.client_ns, s.client_ip, s.server_ip, s.inner_client, s.inner_server, csec, spub))
    procs = []
    for side, ns, local, remote, inner, peer, secret, peer_public in sides:
        ifname = f"qt{s.n}{side[0]}{s.lab.tag}"
        env = {"TUN_MODE": "1", "PROTOCOL": "nacltai", "LOCAL_ADDRESS": local,
               "LOCAL_PORT": str(PORT), "REMOTE_ADDRESS": remote, "REMOTE_PORT": str(PORT),
               "PRIVATE_KEY": secret, "PUBLIC_KEY": peer_public}
        if side == "server":
            env["REMOTE_FLOAT"] = "1"
        # Debian's build reads ifupdown's names: the interface as IFACE, options as IF_QT_*
        env = {"IFACE": ifname, **{f"IF_QT_{k}": v for k, v in env.items()}}
        procs.append(s.lab.spawn(ns, ["quicktun"], f"quicktun-{side}", env=env))
        s.lab.wait_link(ns, ifname, procs=procs)
        s.lab.run(ns, ["ip", "addr", "add", inner, "peer", peer, "dev", ifname])
        s.lab.run(ns, ["ip", "link", "set", ifname, "up"])
    s.lab.wait_ping(s.client_ns, s.inner_server, procs=procs)


register(Scenario(
    name="quicktun", number=46, vpn=True, protocol="quicktun", transport="udp", server_port=PORT,
    notes="QuickTun nacltai (NaCl, TAI64NA nonce in the clear); UDP 2998", requires=REQUIRES, setup=setup,
    description="QuickTun over UDP 2998: NaCl-encrypted datagrams with a clock-like nonce, no handshake.",
))
