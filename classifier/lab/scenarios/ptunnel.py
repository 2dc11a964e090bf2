"""TCP over ICMP echo (N = 162): ptunnel-ng, a proxy whose packets are pings.

Why: where pings get out and little else does, ptunnel carries TCP connections in ICMP
echo requests and replies: the client wraps the stream's bytes behind a ptunnel header
(a 32-bit magic, the destination, a state, acknowledgement and sequence numbers) in echo
requests to the proxy, which answers with echo replies of its own. The shipped model
learnt ICMP as non-VPN from the lab's pings (no trained tunnel runs over ICMP); the
``icmp-tunnel`` signature names it by its header.

Configuration: ``ptunnel-ng`` (Debian's, 1.41) in proxy mode in the server namespace,
restricted to the server's HTTP service (``-r 198.18.N.1 -R 8080``), the kernel's own
echo replies switched off there (``net.ipv4.icmp_echo_ignore_all``, as ptunnel's manual
asks, or each request would be answered twice); in forwarding mode in the client
namespace, listening on 127.0.0.1:28080. ptunnel-ng's default magic 0xdeadc0de; with
``--vary``, a password (authentication in the tunnel's first exchange) in half the runs.
The default traffic: HTTP fetches through the forward, of a file of at most 16 KiB (ptunnel
is a slow relay: over a rate-limited path a 64 KiB file did not arrive within curl's 5 s).

Held out of training (``training=False``): it measures how the shipped model treats a
tunnel over ICMP, which it has never seen.
"""

from __future__ import annotations

from functools import partial

from classifier.lab.scenarios import Scenario, register
from classifier.lab.session import INNER_HTTP_PORT, Session

LOCAL_PORT = 20000 + INNER_HTTP_PORT
PASSWORD = "vpnid-lab-not-secret"
MAX_BLOB = 16 * 1024


def setup(s: Session) -> None:
    """Start the proxy and the forwarder (127.0.0.1:LOCAL_PORT in the client namespace)."""
    # ptunnel-ng answers in bursts of its 64-packet window, which a rate-limited path drops in
    # part; it resends slowly, so over such paths the larger drawn files outlast curl's 5 s
    s.extra["http"] = s.http_server(s.server_ns, s.server_ip, max_size=MAX_BLOB)
    s.lab.run(s.server_ns, ["sysctl", "-q", "-w", "net.ipv4.icmp_echo_ignore_all=1"])
    auth = ("-P", PASSWORD) if s.profile.seed and s.rng().random() < 0.5 else ()
    target = (f"-r{s.server_ip}", f"-R{INNER_HTTP_PORT}")  # optional arguments: attached, no space
    proxy = s.lab.spawn(s.server_ns, ["ptunnel-ng", *target, *auth, "-v", "1"], "ptunnel-proxy")
    client = s.lab.spawn(s.client_ns, ["ptunnel-ng", "-p", s.server_ip, "-l", str(LOCAL_PORT), *target, *auth,
                                       "-v", "1"], "ptunnel-client")
    s.lab.wait_port(s.client_ns, LOCAL_PORT, procs=[proxy, client])


register(Scenario(
    name="ptunnel", number=162, vpn=True, protocol="ptunnel", transport="icmp", server_port=None,
    notes="ptunnel-ng 1.41, magic 0xdeadc0de, password in half the --vary runs; HTTP through the forward",
    requires=("ptunnel-ng",), setup=setup,
    traffic=partial(Session.fetch_blob_loop, host="127.0.0.1", port=LOCAL_PORT), training=False,
    description="ptunnel: TCP relayed in ICMP echo requests and replies; held out of training.",
))
