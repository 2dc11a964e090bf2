"""OpenConnect (AnyConnect protocol) with ocserv: CSTP over TLS on TCP 443 plus DTLS on UDP 443.

``openconnect-tcp`` (N = 36) is the same tunnel with every packet on the TLS connection
(``openconnect --no-dtls``), as where UDP is blocked, and the server's TLS version drawn
per run: TLS 1.2 with AES-GCM in half the runs (each record then carries its sequence
number as an 8-byte explicit nonce), TLS 1.2 with AES-CBC in one run of five (a random
IV per record), TLS 1.3 in the rest. That is the shape of the SSL VPNs a capture meets
besides AnyConnect (FortiClient's, Pulse's, Microsoft's SSTP): one long TLS 1.2 stream
whose records mirror the inner packets, both ways. The main scenario's TLS connection
carries only control and keepalives once DTLS is up.

Configuration: ocserv with certificate authentication (the client certificate's CN is the
user name) from the run's EC PKI, pool 10.N.0.0/24 (the server's tun takes 10.N.0.1),
DPD and keepalive short; the client is ``openconnect --non-inter`` with a small
``--script`` that only puts the assigned address on the tun and routes 10.N.0.0/24 through
it (the stock vpnc-script would also rewrite the shared /etc/resolv.conf).
"""

from __future__ import annotations

from functools import partial

from classifier.lab.scenarios import Scenario, register
from classifier.lab.session import Session

OCSERV_CONF = """\
auth = "certificate"
listen-host = {ip}
tcp-port = 443
udp-port = 443
run-as-user = root
run-as-group = root
socket-file = {work}/ocserv.sock
pid-file = {work}/ocserv.pid
server-cert = {cert}
server-key = {key}
ca-cert = {ca}
cert-user-oid = 2.5.4.3
isolate-workers = false
max-clients = 4
max-same-clients = 4
keepalive = 30
dpd = 10
mobile-dpd = 10
try-mtu-discovery = false
tls-priorities = "{priorities}"
auth-timeout = 30
cookie-timeout = 300
deny-roaming = false
device = vpns
predictable-ips = true
ipv4-network = 10.{n}.0.0
ipv4-netmask = 255.255.255.0
route = 10.{n}.0.0/255.255.255.0
"""

CLIENT_SCRIPT = """\
#!/bin/sh
# Minimal openconnect --script: address on the tun and a route for the lab's inner /24.
case "$reason" in
  connect)
    ip link set dev "$TUNDEV" up mtu "${{INTERNAL_IP4_MTU:-1300}}"
    ip addr add "$INTERNAL_IP4_ADDRESS/32" dev "$TUNDEV"
    ip route replace 10.{n}.0.0/24 dev "$TUNDEV"
    ;;
esac
exit 0
"""


#: ocserv's GnuTLS priorities: the defaults (TLS 1.3 preferred), what ``openconnect`` uses.
PRIORITIES = "NORMAL:%SERVER_PRECEDENCE"
#: ``openconnect-tcp``'s draws: (share of runs, priorities).
TLS_DRAWS = ((0.5, f"{PRIORITIES}:-VERS-TLS1.3"),
             (0.2, f"{PRIORITIES}:-VERS-TLS1.3:-AES-128-GCM:-AES-256-GCM:-CHACHA20-POLY1305:-AES-128-CCM:-AES-256-CCM"),
             (0.3, PRIORITIES))


def tls_priorities(s: Session) -> str:
    """The run's TLS versions and ciphers for ``openconnect-tcp``, drawn from its profile seed."""
    import random

    draw = random.Random(f"openconnect-tls:{s.profile.seed}").random()  # apart from s.rng()'s sequence
    for share, priorities in TLS_DRAWS:
        if draw < share:
            return priorities
        draw -= share
    return TLS_DRAWS[-1][1]


def setup(s: Session, dtls: bool = True) -> None:
    pki = s.pki()
    priorities = PRIORITIES if dtls else tls_priorities(s)
    conf = s.file("ocserv.conf", OCSERV_CONF.format(ip=s.server_ip, work=s.work, cert=pki.server_cert,
                                                    key=pki.server_key, ca=pki.ca, n=s.n, priorities=priorities))
    script = s.file("oc-script.sh", CLIENT_SCRIPT.format(n=s.n), mode=0o700)
    srv = s.lab.spawn(s.server_ns, ["ocserv", "-f", "-c", str(conf)], "ocserv")
    s.lab.wait_port(s.server_ns, 443, procs=[srv])
    cli = s.lab.spawn(s.client_ns, ["openconnect", "--non-inter", "--cafile", str(pki.ca),
                                    "-c", str(pki.client_cert), "-k", str(pki.client_key),
                                    *(() if dtls else ("--no-dtls",)),
                                    "--script", str(script), f"https://{s.server_ip}:443/"], "openconnect")
    s.lab.wait_ping(s.client_ns, s.inner_server, timeout=25, procs=[srv, cli])


register(Scenario(
    name="openconnect", number=30, vpn=True, protocol="openconnect", transport="tcp", server_port=443,
    notes="ocserv + openconnect, certificate auth; CSTP on TCP 443 and DTLS on UDP 443",
    requires=("ocserv", "openconnect", "openssl"), setup=setup,
    description="OpenConnect/AnyConnect: TLS control and data on TCP 443, DTLS data on UDP 443.",
))
register(Scenario(
    name="openconnect-tcp", number=36, vpn=True, protocol="openconnect", transport="tcp", server_port=443,
    notes="ocserv + openconnect --no-dtls: every packet in CSTP over TLS on TCP 443; TLS 1.2 (GCM or CBC) "
          "in 7 runs of 10, else TLS 1.3",
    requires=("ocserv", "openconnect", "openssl"), setup=partial(setup, dtls=False),
    description="An SSL VPN with no UDP: OpenConnect's tunnel entirely inside one TLS stream, mostly TLS 1.2.",
))
