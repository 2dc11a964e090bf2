"""TCP over DNS (N = 163): dns2tcp, a relay whose bytes travel in DNS TXT queries and answers.

Why: the other DNS tunnel beside iodine. dns2tcp carries TCP connections, not IP packets:
the client encodes the stream in the names of TXT queries to a domain the server answers
for, and the server's bytes come back in the TXT records. A relay like kcptun or
Shadowsocks, over DNS like iodine; the model never saw it.

Configuration: ``dns2tcpd`` (Debian's, 0.5.2) in the server namespace on UDP 53 of its
address, answering for ``t.lab.example`` and offering one resource, ``http``, the
server's HTTP service; ``dns2tcpc -z t.lab.example -r http -l 28080`` in the client
namespace, the server's address given as the resolver, a pre-shared key in half the
``--vary`` runs. The default traffic: HTTP fetches of a file of at most 2 KiB through the
relay: one query in flight, a few hundred bytes per answer, so over a path with a long
round trip a larger file outlasted curl's 5 s (half the path runs fetched nothing with 16
KiB).

Held out of training (``training=False``): it measures how the shipped model treats a
DNS relay it never saw.
"""

from __future__ import annotations

from functools import partial

from classifier.lab.scenarios import Scenario, register
from classifier.lab.session import INNER_HTTP_PORT, Session

PORT = 53
LOCAL_PORT = 20000 + INNER_HTTP_PORT
DOMAIN = "t.lab.example"
KEY = "vpnid-lab-not-secret"
MAX_BLOB = 2 * 1024
SERVER_CONF = """\
listen = {ip}
port = {port}
user = nobody
chroot = {root}
domain = {domain}
resources = http:{ip}:{http}
{key}"""


def setup(s: Session) -> None:
    """Start dns2tcpd and the client's relay; return once the relay listens."""
    s.extra["http"] = s.http_server(s.server_ns, s.server_ip, max_size=MAX_BLOB)
    keyed = bool(s.profile.seed) and s.rng().random() < 0.5
    conf = s.file("dns2tcpd.conf", SERVER_CONF.format(ip=s.server_ip, port=PORT, root=s.work, domain=DOMAIN,
                                                       http=INNER_HTTP_PORT, key=f"key = {KEY}\n" if keyed else ""))
    server = s.lab.spawn(s.server_ns, ["dns2tcpd", "-F", "-f", str(conf)], "dns2tcpd")
    s.lab.wait_port(s.server_ns, PORT, "udp", procs=[server])
    client = s.lab.spawn(s.client_ns, ["dns2tcpc", "-z", DOMAIN, "-r", "http", "-l", str(LOCAL_PORT),
                                       *(("-k", KEY) if keyed else ()), s.server_ip], "dns2tcpc")
    s.lab.wait_port(s.client_ns, LOCAL_PORT, procs=[server, client])


register(Scenario(
    name="dns2tcp", number=163, vpn=True, protocol="dns2tcp", transport="udp", server_port=PORT,
    notes="dns2tcp 0.5.2, TXT queries, a key in half the --vary runs; HTTP through the relay",
    requires=("dns2tcpd", "dns2tcpc"), setup=setup,
    traffic=partial(Session.fetch_blob_loop, host="127.0.0.1", port=LOCAL_PORT), training=False,
    description="dns2tcp: TCP relayed in DNS TXT queries and answers on UDP 53; held out of training.",
))
