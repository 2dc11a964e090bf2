"""Short non-VPN flows: a port scan.

Why: a real capture is full of flows of one to a few packets (scans, connection attempts
to closed ports, probes answered by ICMP port unreachable), and a VPN handshake is short
too (an IKE exchange of 2-4 packets, a PPTP control connection). A model that sees short
tunnels but no short negatives takes every lone SYN for a tunnel; this scenario gives it
the short flows a network sees most.

* ``port-scan``: ``nmap`` from the client scans the server: a SYN scan or a connect scan
  of the 20-60 most common TCP ports (nginx listens on 80, everything else answers with a
  reset), or in half of the captures a TCP and UDP scan of the 10-20 most common ports
  (``--top-ports`` counts for both; UDP probes are answered by ICMP port unreachable, or
  not at all), at a capped rate. A few dozen
  flows a capture, like the busiest other scenarios: the threshold counts non-VPN flows,
  and thousands of trivial ones from one scenario would lower it for all the others.
"""

from __future__ import annotations

from classifier.lab.scenarios.negatives import register_negative, start_nginx
from classifier.lab.session import Session


def scan_setup(s: Session) -> None:
    """An open port for the scan to find: nginx on 80."""
    (s.work / "www").mkdir(exist_ok=True)
    (s.work / "www" / "index.html").write_text("<html><body>lab</body></html>\n")
    start_nginx(s, tls=False)


def scan_traffic(s: Session) -> None:
    """nmap from the client against the server, kind, ports and rate drawn per capture."""
    rng = s.rng()
    kind = rng.choice(["-sS", "-sT"]) if s.profile.seed else "-sS"
    ports = rng.choice([20, 40, 60]) if s.profile.seed else 40
    rate = rng.choice([20, 50, 200]) if s.profile.seed else 50
    udp = bool(s.profile.seed) and rng.random() < 0.5
    if udp:  # --top-ports counts for TCP and UDP alike: fewer, so the UDP probes stay within the duration
        ports = rng.choice([10, 20])
    argv = ["nmap", "-n", "-Pn", kind, *(["-sU"] if udp else []), "--top-ports", str(ports),
            "--max-rate", str(rate), "--max-retries", "1", "--host-timeout", f"{max(5, int(s.duration))}s"]
    s.lab.run(s.client_ns, [*argv, s.server_ip], check=False, timeout=s.duration + 30)


register_negative("port-scan", 136, "scan", "tcp", None, ("nmap", "nginx"), scan_setup, scan_traffic,
     "nmap SYN or connect scan of the top 20-60 TCP ports (nginx on 80), or of the top 10-20 TCP and UDP ports",
     "A port scan: dozens of one- and two-packet flows, resets and ICMP port unreachable.")
