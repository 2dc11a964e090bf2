"""IPsec with strongSwan's charon: IKEv2 and IKEv1 with a pre-shared key.

Configuration: the kernel here has no ESP transform, so charon uses its userspace data
path, the ``kernel-libipsec`` plugin (listed before ``kernel-netlink``), which always sends
ESP in UDP 4500 (NAT-T framing). With MOBIKE (IKEv2 default) IKE moves from 500 to 4500
after IKE_SA_INIT. The ``-kernel`` scenarios rewrite charon's capture as a host whose
kernel has ESP, with no NAT between the peers, sends it (``as_kernel_ipsec``): ESP as IP
protocol 50 and, without MOBIKE, IKE on 500 throughout; ``ipsec-esp-crafted``
(``crafted.py``) builds plain ESP from scratch. The two charons would collide on
``/run/charon.pid`` and the vici socket, so each runs in its own mount namespace with a
private directory bound on /run; ``swanctl`` talks to it through that directory's vici
socket. Traffic selectors are the single inner addresses 10.N.0.1/32 and 10.N.0.2/32, put
on ``lo``; charon routes them through its ``ipsec0`` tun device (routing table 220).
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import dpkt

from classifier.lab.netns import Proc
from classifier.lab.pcaprewrite import rewrite_pcap
from classifier.lab.scenarios import Scenario, register
from classifier.lab.session import Session

CHARON = "/usr/lib/ipsec/charon"
REQUIRES = (CHARON, "swanctl", "unshare")
PLUGINS = ("random nonce aes sha1 sha2 hmac kdf gmp curve25519 pem pkcs1 x509 pubkey "
           "kernel-libipsec kernel-netlink socket-default vici updown")
PSK = "vpnid-lab-psk-not-secret"
PROPOSALS = "aes128-sha256-x25519"

STRONGSWAN_CONF = """\
charon {{
  load = {plugins}
  install_routes = {install_routes}
  retransmit_tries = 3
{options}  filelog {{ stderr {{ default = 1 }} }}
  plugins {{
    kernel-libipsec {{ allow_peer_ts = yes }}
  }}
}}
swanctl {{
  load = pem pkcs1 x509 pubkey random nonce
}}
"""

SWANCTL_CONF = """\
connections {{
  lab {{
    version = {version}
    mobike = {mobike}
{timers}    local_addrs = {local}
    remote_addrs = {remote}
    proposals = {proposals}
    local {{
      auth = psk
      id = {local_id}
    }}
    remote {{
      auth = psk
      id = {remote_id}
    }}
    children {{
      lab {{
        local_ts = {local_ts}/32
        remote_ts = {remote_ts}/32
        esp_proposals = aes128-sha256-x25519
{child_timers}      }}
    }}
  }}
}}
secrets {{
  ike-lab {{
    id-1 = server@lab
    id-2 = client@lab
    secret = {psk}
  }}
}}
"""


#: A responder under load (``charon.cookie_threshold`` half-open IKE_SAs besides the request
#: being answered) asks every initiator to prove its address first. A threshold of one and
#: one half-open IKE_SA (``half_open_init``, never followed up) put the lab's server there.
COOKIE_CONF = "  cookie_threshold = 1\n"

#: Sends one IKE_SA_INIT (hex, argv[2]) to argv[1]:500 and waits for the answer.
SEND_INIT = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5); "
             "s.sendto(bytes.fromhex(sys.argv[2]), (sys.argv[1], 500)); s.recv(4096)")


def _payload(next_payload: int, body: bytes) -> bytes:
    """An IKEv2 payload: generic header (next payload, not critical, length), then the body."""
    return struct.pack("!BBH", next_payload, 0, 4 + len(body)) + body


def half_open_init(spi: bytes, key: bytes, nonce: bytes) -> bytes:
    """An IKE_SA_INIT request offering aes128-sha256-x25519 (``PROPOSALS``) with X25519 ``key``.

    The server answers it and keeps the IKE_SA half-open until it times out, since no
    IKE_AUTH follows: the one half-open IKE_SA that ``COOKIE_CONF`` needs.
    """
    transforms = [(1, 12, struct.pack("!HH", 0x800E, 128)),  # ENCR_AES_CBC, key length 128
                  (2, 5, b""), (3, 12, b""), (4, 31, b"")]  # PRF and INTEG HMAC-SHA2-256, Curve25519
    body = b"".join(struct.pack("!BBHBBH", 0 if i == len(transforms) - 1 else 3, 0, 8 + len(attrs), kind, 0, ident)
                    + attrs for i, (kind, ident, attrs) in enumerate(transforms))
    proposal = struct.pack("!BBHBBBB", 0, 0, 8 + len(body), 1, 1, 0, len(transforms)) + body
    payloads = (_payload(34, proposal) + _payload(40, struct.pack("!HH", 31, 0) + key)  # SA, KE
                + _payload(0, nonce))  # Nonce
    header = spi + bytes(8) + struct.pack("!BBBBII", 33, 0x20, 34, 0x08, 0, 28 + len(payloads))
    return header + payloads


#: What a desktop client offers: several proposals, strongest first, with a 2048-bit MODP
#: group whose key share makes IKE_SA_INIT some 680 bytes (the lab's other clients offer
#: one proposal with X25519: some 250 bytes).
DESKTOP_PROPOSALS = ("aes256-sha256-modp2048, aes256-sha512-modp4096, aes256-sha384-modp3072, "
                     "aes128-sha256-modp2048, aes128-sha1-modp2048, aes128-sha256-x25519")

#: Timers of a long-lived connection, shortened to fit a capture of a few seconds: a
#: dead-peer check after a second without traffic from the peer and, for IKEv2, a
#: CHILD_SA rekey (CREATE_CHILD_SA) every two seconds, so IKE keeps talking after the
#: set-up as it does over hours on a real link. The route through ``ipsec0`` is then put
#: in once by hand: charon's own route goes away and comes back at every rekey. (An IKEv1
#: quick-mode rekey stops libipsec's ESP for good, so IKEv1 gets dead-peer checks only.)
CHATTY_TIMERS = "    dpd_delay = 1s\n"
CHATTY_CHILD_TIMERS = {2: "        rekey_time = 2s\n        rand_time = 0s\n", 1: ""}


def _start_charon(s: Session, side: str, version: int, mobike: bool, proposals: str,
                  chatty: bool = False, options: str = "") -> tuple[Proc, str, str]:
    """Start one charon in its own mount namespace; return (process, vici URI, config path).

    ``options``: more ``charon`` settings for its strongswan.conf, one per line (``COOKIE_CONF``).
    """
    timers, child_timers = (CHATTY_TIMERS, CHATTY_CHILD_TIMERS[version]) if chatty else ("", "")
    server = side == "server"
    d = s.work / f"ipsec-{side}"
    run = d / "run"
    run.mkdir(parents=True, exist_ok=True)
    conf = s.file(f"ipsec-{side}/strongswan.conf", STRONGSWAN_CONF.format(
        plugins=PLUGINS, install_routes="no" if chatty else "yes", options=options))
    swanctl = s.file(f"ipsec-{side}/swanctl.conf", SWANCTL_CONF.format(
        version=version, mobike="yes" if mobike else "no", proposals=proposals, timers=timers,
        child_timers=child_timers,
        local=s.server_ip if server else s.client_ip, remote=s.client_ip if server else s.server_ip,
        local_id="server@lab" if server else "client@lab", remote_id="client@lab" if server else "server@lab",
        local_ts=s.inner_server if server else s.inner_client,
        remote_ts=s.inner_client if server else s.inner_server, psk=PSK))
    ns = s.server_ns if server else s.client_ns
    s.lab.run(ns, ["ip", "addr", "add", f"{s.inner_server if server else s.inner_client}/32", "dev", "lo"])
    proc = s.lab.spawn_private(ns, [CHARON], f"charon-{side}", binds={"/run": run},
                               env={"STRONGSWAN_CONF": str(conf)})
    uri = f"unix://{run}/charon.vici"
    s.lab.wait_for(f"charon ({side}) vici socket", lambda: (run / "charon.vici").exists(), 10, [proc])
    if chatty:  # a fixed route: charon's own is removed and put back at every rekey, and traffic fails between
        s.lab.wait_link(ns, "ipsec0", procs=[proc])
        local_ts, remote_ts = (s.inner_server, s.inner_client) if server else (s.inner_client, s.inner_server)
        s.lab.run(ns, ["ip", "link", "set", "ipsec0", "up"])
        s.lab.run(ns, ["ip", "route", "add", f"{remote_ts}/32", "dev", "ipsec0", "src", local_ts])
    s.lab.run(ns, ["swanctl", "--load-all", "--file", str(swanctl), "--uri", uri],
              env={"STRONGSWAN_CONF": str(conf)})
    return proc, uri, str(conf)


def setup(s: Session, version: int, mobike: bool = True, ke_retry: bool = False, chatty: bool = False,
          cookie: bool = False) -> None:
    """Start both charons, initiate the CHILD_SA from the client, wait for a ping through it.

    ``ke_retry``: the client's first proposal guesses the X25519 group, the server accepts
    only MODP-2048, so the server answers INVALID_KE_PAYLOAD and the client sends its
    IKE_SA_INIT again with the group asked for: four packets on UDP 500 before IKE moves on,
    as real clients show whenever their guess of the server's group is wrong.
    ``chatty``: ``CHATTY_TIMERS``. ``cookie``: the server answers the first IKE_SA_INIT with
    a COOKIE notify (``COOKIE_CONF``) and the client, offering ``DESKTOP_PROPOSALS``, sends it
    again with the cookie: four packets on UDP 500, a large request, a 60-byte answer, the
    request again and the server's reply, as busy servers answer real clients.
    """
    if ke_retry:
        server_proposals, client_proposals = "aes128-sha256-modp2048", "aes128-sha256-x25519-modp2048"
    elif cookie:
        server_proposals, client_proposals = f"aes256-sha256-modp2048, {PROPOSALS}", DESKTOP_PROPOSALS
    else:
        server_proposals, client_proposals = PROPOSALS, PROPOSALS
    srv, _, _ = _start_charon(s, "server", version, mobike, server_proposals, chatty,
                              COOKIE_CONF if cookie else "")
    cli, uri, conf = _start_charon(s, "client", version, mobike, client_proposals, chatty)
    if cookie:
        probe = half_open_init(os.urandom(8), os.urandom(32), os.urandom(32))
        s.lab.run(s.client_ns, [sys.executable, "-c", SEND_INIT, s.server_ip, probe.hex()], timeout=10)
    s.lab.run(s.client_ns, ["swanctl", "--initiate", "--child", "lab", "--uri", uri, "--timeout", "15"],
              timeout=25, env={"STRONGSWAN_CONF": conf})
    s.lab.wait_ping(s.client_ns, s.inner_server, procs=[srv, cli])


NOTE = "strongSwan kernel-libipsec: ESP in UDP 4500 (kernel has no ESP)"

register(Scenario(
    name="ipsec-ikev2", number=20, vpn=True, protocol="ipsec-ike", transport="udp", server_port=500,
    notes=f"IKEv2 PSK; MOBIKE moves IKE to 4500; {NOTE}", requires=REQUIRES,
    setup=partial(setup, version=2),
    description="IKEv2 (IKE_SA_INIT on 500, IKE_AUTH on 4500) then ESP-in-UDP traffic on 4500.",
))
register(Scenario(
    name="ipsec-ikev1", number=21, vpn=True, protocol="ipsec-ike", transport="udp", server_port=500,
    notes=f"IKEv1 main mode PSK; {NOTE}", requires=REQUIRES, setup=partial(setup, version=1, mobike=False),
    description="IKEv1 main mode and quick mode, then ESP-in-UDP traffic.",
))
register(Scenario(
    name="ipsec-esp-udp-midflow", number=22, vpn=True, protocol="ipsec-esp", transport="udp", server_port=4500,
    notes=f"IKEv2 PSK; mid-flow: capture starts after IKE, only ESP in UDP 4500; {NOTE}", requires=REQUIRES,
    setup=partial(setup, version=2), midflow=True,
    description="IPsec captured mid-flow: ESP-in-UDP 4500 packets only, no IKE exchange.",
))
register(Scenario(
    name="ipsec-ikev2-ke-retry", number=23, vpn=True, protocol="ipsec-ike", transport="udp", server_port=500,
    notes=f"IKEv2 PSK; server rejects the client's key-exchange group (INVALID_KE_PAYLOAD), client retries; {NOTE}",
    requires=REQUIRES, setup=partial(setup, version=2, ke_retry=True),
    description="IKEv2 whose first IKE_SA_INIT guesses the wrong group: INVALID_KE_PAYLOAD, a second "
                "IKE_SA_INIT on 500, IKE_AUTH on 4500, then ESP in UDP 4500.",
))

register(Scenario(
    name="ipsec-ikev2-cookie", number=142, vpn=True, protocol="ipsec-ike", transport="udp", server_port=500,
    notes=f"IKEv2 PSK; the server asks for a cookie (cookie_threshold 1), the client offers six proposals "
          f"with MODP-2048 first; {NOTE}",
    requires=REQUIRES, setup=partial(setup, version=2, cookie=True),
    description="IKEv2 from a desktop-style client to a server under load: IKE_SA_INIT, a COOKIE notify, "
                "IKE_SA_INIT again with the cookie (four packets on 500), IKE_AUTH on 4500, then ESP in UDP 4500.",
))


# ------------------------------------------------------------------ as a kernel with ESP sends it
NATT_PORT = 4500
NON_ESP_MARKER = bytes(4)
NATT_KEEPALIVE = b"\xff"


def as_kernel_ipsec(frame: bytes, ike_port: int) -> bytes | None:
    """One frame of charon's capture as a kernel with ESP and no NAT between the peers sends it.

    ESP in UDP 4500 becomes ESP (IP protocol 50); NAT-T keepalives (one 0xFF byte) are
    dropped, as no NAT means none are sent; IKE in UDP 4500 stays there when ``ike_port``
    is 4500 (IKEv2 with MOBIKE moves to 4500 with or without NAT) or, with ``ike_port``
    500 (IKEv1, IKEv2 without MOBIKE: no NAT, no move), goes back to 500 without the
    non-ESP marker. Every other frame is returned unchanged.
    """
    eth = dpkt.ethernet.Ethernet(frame)
    ip = eth.data
    if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.udp.UDP):
        return frame
    udp = ip.data
    if NATT_PORT not in (udp.sport, udp.dport):
        return frame
    payload = bytes(udp.data)
    if payload == NATT_KEEPALIVE:
        return None
    if payload[:4] == NON_ESP_MARKER:
        if ike_port == NATT_PORT:
            return frame
        udp.sport, udp.dport = (ike_port if p == NATT_PORT else p for p in (udp.sport, udp.dport))
        udp.data, udp.sum = payload[4:], 0  # dpkt computes the checksum of a zero sum
        udp.ulen = udp.__hdr_len__ + len(udp.data)
        ip.len = ip.__hdr_len__ + len(ip.opts) + udp.ulen
    else:
        ip.p, ip.data = dpkt.ip.IP_PROTO_ESP, payload
        ip.len = ip.__hdr_len__ + len(ip.opts) + len(payload)
    ip.sum = 0
    eth.data = ip
    return bytes(eth)


def kernel_rewrite(ike_port: int) -> Callable[[Path, Path], None]:
    """A scenario's ``rewrite``: the whole capture through ``as_kernel_ipsec``."""
    def rewrite(src: Path, dst: Path) -> None:
        rewrite_pcap(src, dst, lambda frame: as_kernel_ipsec(frame, ike_port))
    return rewrite


KERNEL_NOTE = "charon's exchange rewritten as a kernel with ESP and no NAT sends it: ESP as IP protocol 50"

register(Scenario(
    name="ipsec-ikev2-kernel", number=24, vpn=True, protocol="ipsec-ike", transport="udp", server_port=500,
    notes=f"IKEv2 PSK, MOBIKE (IKE on 4500 after IKE_SA_INIT), dead-peer checks and CHILD_SA rekeys; "
          f"{KERNEL_NOTE}", requires=REQUIRES, setup=partial(setup, version=2, chatty=True),
    rewrite=kernel_rewrite(NATT_PORT),
    description="IKEv2 as a host with kernel IPsec and no NAT shows it: IKE_SA_INIT on 500, IKE_AUTH, "
                "dead-peer checks and rekeys on 4500, ESP as IP protocol 50.",
))
register(Scenario(
    name="ipsec-ikev1-kernel", number=25, vpn=True, protocol="ipsec-ike", transport="udp", server_port=500,
    notes=f"IKEv1 main mode PSK, dead-peer checks, all on 500; {KERNEL_NOTE}",
    requires=REQUIRES, setup=partial(setup, version=1, mobike=False, chatty=True),
    rewrite=kernel_rewrite(500),
    description="IKEv1 as a host with kernel IPsec and no NAT shows it: main mode, quick mode and dead-peer "
                "checks all on UDP 500, ESP as IP protocol 50.",
))
register(Scenario(
    name="ipsec-ikev2-nomobike-kernel", number=26, vpn=True, protocol="ipsec-ike", transport="udp",
    server_port=500, notes=f"IKEv2 PSK without MOBIKE, dead-peer checks and CHILD_SA rekeys, all on 500; "
                           f"{KERNEL_NOTE}", requires=REQUIRES,
    setup=partial(setup, version=2, mobike=False, chatty=True), rewrite=kernel_rewrite(500),
    description="IKEv2 without MOBIKE as a host with kernel IPsec and no NAT shows it: every IKE exchange "
                "on UDP 500, ESP as IP protocol 50.",
))
