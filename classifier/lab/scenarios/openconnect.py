"""OpenConnect (AnyConnect protocol) with ocserv: CSTP over TLS on TCP 443 plus DTLS on UDP 443.

Configuration: ocserv with certificate authentication (the client certificate's CN is the
user name) from the run's EC PKI, pool 10.N.0.0/24 (the server's tun takes 10.N.0.1),
DPD and keepalive short; the client is ``openconnect --non-inter`` with a small
``--script`` that only puts the assigned address on the tun and routes 10.N.0.0/24 through
it (the stock vpnc-script would also rewrite the shared /etc/resolv.conf).
"""

from __future__ import annotations

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
tls-priorities = "NORMAL:%SERVER_PRECEDENCE"
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


def setup(s: Session) -> None:
    pki = s.pki()
    conf = s.file("ocserv.conf", OCSERV_CONF.format(ip=s.server_ip, work=s.work, cert=pki.server_cert,
                                                    key=pki.server_key, ca=pki.ca, n=s.n))
    script = s.file("oc-script.sh", CLIENT_SCRIPT.format(n=s.n), mode=0o700)
    srv = s.lab.spawn(s.server_ns, ["ocserv", "-f", "-c", str(conf)], "ocserv")
    s.lab.wait_port(s.server_ns, 443, procs=[srv])
    cli = s.lab.spawn(s.client_ns, ["openconnect", "--non-inter", "--cafile", str(pki.ca),
                                    "-c", str(pki.client_cert), "-k", str(pki.client_key),
                                    "--script", str(script), f"https://{s.server_ip}:443/"], "openconnect")
    s.lab.wait_ping(s.client_ns, s.inner_server, timeout=25, procs=[srv, cli])


register(Scenario(
    name="openconnect", number=30, vpn=True, protocol="openconnect", transport="tcp", server_port=443,
    notes="ocserv + openconnect, certificate auth; CSTP on TCP 443 and DTLS on UDP 443",
    requires=("ocserv", "openconnect", "openssl"), setup=setup,
    description="OpenConnect/AnyConnect: TLS control and data on TCP 443, DTLS data on UDP 443.",
))
