"""IP over DNS (N = 160, 161): iodine, a VPN whose packets travel in DNS queries and answers.

Why: where only DNS gets out (a captive portal, a filtered network), iodine carries IP
packets in the names of DNS queries and in their answers, through any resolver to a server
that is authoritative for the tunnel's domain. On the wire it is a DNS conversation on UDP
53, long and busy where DNS is short: no other VPN in the lab looks like it, and the model
alone took the public corpus's iodine capture for DNS.

* ``iodine``: the client skips raw mode (``-r``), as when its queries go through a
  resolver: every packet is DNS. The handshake (version, login, the codec and fragment-size
  probes with their fixed test strings) runs in the first queries; the data then rides in
  names encoded with Base32, Base64 or Base128 (8-bit bytes in the labels, when the path
  keeps them) and in answers of type NULL (or the type ``-T`` forces);
* ``iodine-raw``: the client may reach the server directly, so after the DNS handshake it
  switches to raw mode: UDP datagrams to port 53 that open with iodine's 3-byte raw header
  (0x10 0xd1 0x9e) and a command byte, no DNS at all.

Configuration: ``iodined -c -l 198.18.N.1 10.N.0.1/24 t.lab.example`` in the server
namespace (password from ``-P``; the first client gets 10.N.0.2), ``iodine -P … 198.18.N.1
t.lab.example`` in the client namespace, the server's address given as the resolver. With
``--vary`` the client's query type is drawn among iodine's own choice (NULL here), TXT,
CNAME and PRIVATE; the downstream codec follows from it.

Both are held out of training (``training=False``): they measure how the shipped model
treats a tunnel it never saw; the ``iodine`` signature names them.
"""

from __future__ import annotations

from functools import partial

from classifier.lab.scenarios import Scenario, register
from classifier.lab.session import Session

PORT = 53
PASSWORD = "vpnid-lab-not-secret"
TOPDOMAIN = "t.lab.example"
#: ``-T`` choices drawn with --vary; None: iodine autodetects (NULL where the path allows it).
QUERY_TYPES = (None, "TXT", "CNAME", "PRIVATE")


def setup(s: Session, raw: bool) -> None:
    """Start iodined, then the client against it; return once a ping crosses the tunnel."""
    server = s.lab.spawn(s.server_ns, ["iodined", "-f", "-c", "-P", PASSWORD, "-l", s.server_ip,
                                       "-d", f"dns{s.n}s{s.lab.tag}", f"{s.inner_server}/24", TOPDOMAIN],
                         "iodined")
    s.lab.wait_port(s.server_ns, PORT, "udp", procs=[server])
    qtype = s.rng().choice(QUERY_TYPES) if s.profile.seed else None
    client = s.lab.spawn(s.client_ns, ["iodine", "-f", "-P", PASSWORD, "-d", f"dns{s.n}c{s.lab.tag}",
                                       *(() if raw else ("-r",)), *(("-T", qtype) if qtype else ()),
                                       s.server_ip, TOPDOMAIN], "iodine")
    # the handshake probes fragment sizes and codecs in dozens of round trips before the tunnel is up
    s.lab.wait_ping(s.client_ns, s.inner_server, timeout=45, procs=[server, client])


register(Scenario(
    name="iodine", number=160, vpn=True, protocol="iodine", transport="udp", server_port=PORT,
    notes="iodine 0.7 IP over DNS, raw mode skipped (-r): every packet DNS; query type as drawn",
    requires=("iodine", "iodined"), setup=partial(setup, raw=False), training=False,
    description="iodine: IP packets in DNS query names and answers on UDP 53, as through a resolver; held out.",
))
register(Scenario(
    name="iodine-raw", number=161, vpn=True, protocol="iodine", transport="udp", server_port=PORT,
    notes="iodine 0.7, server reachable: DNS handshake, then raw UDP to port 53 behind the 0x10d19e header",
    requires=("iodine", "iodined"), setup=partial(setup, raw=True), training=False,
    description="iodine in raw mode: the DNS handshake, then its own UDP datagrams on port 53; held out.",
))
