"""TCP over KCP (N = 159): kcptun, a port forwarder over a reliable UDP transport.

Why: KCP (ikcp.c) is the reliable transport over UDP that many online games use, and
kcptun (kcp-go) carries TCP connections over it, most often in front of a proxy in
censored networks. Encrypted (always, here), every datagram is random from its first byte
(kcp-go puts a random nonce and a checksum before the KCP header and encrypts all of it)
with the rhythm of a reliable stream: an obfuscated tunnel no signature can name, the
model's job. (A game's KCP in the clear is the ``kcp`` signature's: its header repeats the
conversation id and counts like a tunnel header.)

The cipher (kcptun's default AES, Salsa20, AES-128), the mode (``fast``, ``fast2``,
``normal``) and forward error correction (the default 10 data and 3 parity shards, or
none) are drawn with ``--vary``; compression is off.

Configuration: ``kcptun-server`` in the server namespace on UDP 29900 + n relays to a TCP
service on the server's address; ``kcptun-client`` in the client namespace listens on
127.0.0.1:20000 + port, one pair per service port the traffic kind uses (as the
Shadowsocks scenario's ``ss-tunnel`` forwards), so each service is one UDP flow and the
first one (the manifest's tunnel) is on 29900.

Held out of training (``training=False``): it measures how the shipped model treats a
fully encrypted UDP tunnel it never saw (docs/model.md, Results).
"""

from __future__ import annotations

from functools import partial

from classifier.lab.scenarios import Scenario, register
from classifier.lab.session import INNER_HTTP_PORT, TRAFFIC_KINDS, Session

KCPTUN_PORT = 29900
KEY = "vpnid-lab-not-secret"
#: kcptun's own defaults (aes; 10 data and 3 parity shards; fast mode) come first: --vary draws among them.
CIPHERS = ("aes", "salsa20", "aes-128")
MODES = ("fast", "fast2", "normal")
FEC = ((10, 3), (0, 0))


def kcptun_options(s: Session) -> list[str]:
    """The options both ends share: cipher, mode, forward error correction (drawn when --vary)."""
    rng = s.rng()
    vary = bool(s.profile.seed)
    crypt = rng.choice(CIPHERS) if vary else CIPHERS[0]
    mode = rng.choice(MODES) if vary else MODES[0]
    data, parity = rng.choice(FEC) if vary else FEC[0]
    return ["--key", KEY, "--crypt", crypt, "--mode", mode, "--datashard", str(data), "--parityshard", str(parity),
            "--nocomp", "--quiet"]


def kcptun_setup(s: Session) -> None:
    s.extra["http"] = s.http_server(s.server_ns, s.server_ip)
    s.extra["forward"] = partial(kcptun_forward, s, kcptun_options(s), {})


def kcptun_forward(s: Session, options: list[str], pairs: dict[int, tuple], port: int) -> tuple[str, int]:
    """A kcptun pair relaying 127.0.0.1:20000+``port`` on the client to the server's ``port``,
    made on first use; the n-th pair's server listens on UDP KCPTUN_PORT + n."""
    local = 20000 + port
    if port not in pairs:
        udp = KCPTUN_PORT + len(pairs)
        srv = s.lab.spawn(s.server_ns, ["kcptun-server", "--listen", f"{s.server_ip}:{udp}",
                                        "--target", f"{s.server_ip}:{port}", *options], f"kcptun-server-{port}")
        s.lab.wait_port(s.server_ns, udp, "udp", procs=[srv])
        cli = s.lab.spawn(s.client_ns, ["kcptun-client", "--localaddr", f"127.0.0.1:{local}",
                                        "--remoteaddr", f"{s.server_ip}:{udp}", *options], f"kcptun-client-{port}")
        s.lab.wait_port(s.client_ns, local, procs=[cli])
        pairs[port] = (srv, cli)
    return "127.0.0.1", local


def kcptun_traffic(s: Session) -> None:
    """HTTP fetches of the blob through the relay (made on first use): the default kind."""
    s.fetch_blob_loop(*s.reach(INNER_HTTP_PORT))


register(Scenario(
    name="kcptun", number=159, vpn=True, protocol="kcptun", transport="udp", server_port=KCPTUN_PORT,
    notes="kcptun (kcp-go) encrypted, FEC and mode as drawn; TCP relayed per service port, no inner addresses",
    requires=("kcptun-server", "kcptun-client"), setup=kcptun_setup,
    traffic=kcptun_traffic, kinds=TRAFFIC_KINDS, training=False,
    description="kcptun: TCP over encrypted KCP (reliable UDP), random from the first byte; held out of training.",
))
