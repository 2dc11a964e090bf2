"""IPsec with strongSwan's charon: IKEv2 and IKEv1 with a pre-shared key.

Configuration: the kernel here has no ESP transform, so charon uses its userspace data
path, the ``kernel-libipsec`` plugin (listed before ``kernel-netlink``), which always sends
ESP in UDP 4500 (NAT-T framing); plain ESP (IP protocol 50) cannot be produced and is
crafted instead (``crafted.py``). With MOBIKE (IKEv2 default) IKE moves from 500 to 4500
after IKE_SA_INIT. The two charons would collide on ``/run/charon.pid`` and the vici
socket, so each runs in its own mount namespace with a private directory bound on /run;
``swanctl`` talks to it through that directory's vici socket. Traffic selectors are the
single inner addresses 10.N.0.1/32 and 10.N.0.2/32, put on ``lo``; charon routes them
through its ``ipsec0`` tun device (routing table 220).
"""

from __future__ import annotations

from functools import partial

from classifier.lab.netns import Proc
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
  install_routes = yes
  retransmit_tries = 3
  filelog {{ stderr {{ default = 1 }} }}
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
    local_addrs = {local}
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
      }}
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


def _start_charon(s: Session, side: str, version: int, mobike: bool, proposals: str) -> tuple[Proc, str, str]:
    """Start one charon in its own mount namespace; return (process, vici URI, config path)."""
    server = side == "server"
    d = s.work / f"ipsec-{side}"
    run = d / "run"
    run.mkdir(parents=True, exist_ok=True)
    conf = s.file(f"ipsec-{side}/strongswan.conf", STRONGSWAN_CONF.format(plugins=PLUGINS))
    swanctl = s.file(f"ipsec-{side}/swanctl.conf", SWANCTL_CONF.format(
        version=version, mobike="yes" if mobike else "no", proposals=proposals,
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
    s.lab.run(ns, ["swanctl", "--load-all", "--file", str(swanctl), "--uri", uri],
              env={"STRONGSWAN_CONF": str(conf)})
    return proc, uri, str(conf)


def setup(s: Session, version: int, mobike: bool = True, ke_retry: bool = False) -> None:
    """Start both charons, initiate the CHILD_SA from the client, wait for a ping through it.

    ``ke_retry``: the client's first proposal guesses the X25519 group, the server accepts
    only MODP-2048, so the server answers INVALID_KE_PAYLOAD and the client sends its
    IKE_SA_INIT again with the group asked for: four packets on UDP 500 before IKE moves on,
    as real clients show whenever their guess of the server's group is wrong.
    """
    server_proposals, client_proposals = (("aes128-sha256-modp2048", "aes128-sha256-x25519-modp2048")
                                          if ke_retry else (PROPOSALS, PROPOSALS))
    srv, _, _ = _start_charon(s, "server", version, mobike, server_proposals)
    cli, uri, conf = _start_charon(s, "client", version, mobike, client_proposals)
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
