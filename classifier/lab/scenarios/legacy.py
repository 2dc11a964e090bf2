"""L2TP and PPTP control channels from real daemons (xl2tpd, pptpd and the pptp client).

Configuration: the kernel here has no PPP, so pppd cannot start and no PPP data can flow;
only the control channels are real. xl2tpd as LNS on the server and as LAC (autodial,
redial) on the client: SCCRQ/SCCRP/SCCCN, incoming-call set-up, then the call is torn down
when pppd fails and the LAC dials again. pptpd on TCP 1723 with the ``pptp`` client in
``--nolaunchpppd`` mode: start-control-connection and outgoing-call exchanges, then the
client forwards the PPP frames written to its standard input as GRE (enhanced GRE,
protocol 47) packets; the server's pppd cannot start, so GRE flows one way only. Complete
L2TP and PPTP data packets are crafted instead (``crafted.py``).
"""

from __future__ import annotations

import subprocess
import time

from classifier.lab.scenarios import Scenario, register
from classifier.lab.session import Session

XL2TPD_SERVER = """\
[global]
listen-addr = {ip}
port = 1701
access control = no
[lns default]
ip range = 10.{n}.0.2-10.{n}.0.9
local ip = 10.{n}.0.1
require authentication = no
length bit = yes
pppoptfile = {work}/ppp-options
"""
XL2TPD_CLIENT = """\
[global]
listen-addr = {cip}
port = 1701
[lac lab]
lns = {ip}
autodial = yes
redial = yes
redial timeout = 1
max redials = 100
require authentication = no
length bit = yes
pppoptfile = {work}/ppp-options
"""


def l2tp_setup(s: Session) -> None:
    s.file("ppp-options", "noauth\n")
    sconf = s.file("xl2tpd-server.conf", XL2TPD_SERVER.format(ip=s.server_ip, n=s.n, work=s.work))
    cconf = s.file("xl2tpd-client.conf", XL2TPD_CLIENT.format(ip=s.server_ip, cip=s.client_ip, work=s.work))
    for side, ns, conf in (("server", s.server_ns, sconf), ("client", s.client_ns, cconf)):
        proc = s.lab.spawn(ns, ["xl2tpd", "-D", "-c", str(conf), "-p", f"{s.work}/xl2tpd-{side}.pid",
                                "-C", f"{s.work}/xl2tpd-{side}.control"], f"xl2tpd-{side}")
        s.lab.wait_port(ns, 1701, "udp", procs=[proc])


def idle_traffic(s: Session) -> None:
    """Let the daemons talk among themselves for the duration (control channels only)."""
    time.sleep(s.duration)


def lcp_configure_request(ident: int) -> bytes:
    """An HDLC-framed PPP LCP Configure-Request (magic number option), as pppd would write it."""
    body = bytes([0xFF, 0x03, 0xC0, 0x21, 0x01, ident, 0x00, 0x0A, 0x05, 0x06]) + ident.to_bytes(4, "big")
    fcs = 0xFFFF
    for b in body:  # PPP FCS-16 (RFC 1662)
        fcs ^= b
        for _ in range(8):
            fcs = (fcs >> 1) ^ 0x8408 if fcs & 1 else fcs >> 1
    fcs ^= 0xFFFF
    frame = body + fcs.to_bytes(2, "little")
    escaped = bytearray()
    for b in frame:
        if b < 0x20 or b in (0x7E, 0x7D):
            escaped += bytes([0x7D, b ^ 0x20])
        else:
            escaped.append(b)
    return b"\x7e" + bytes(escaped) + b"\x7e"


PPTPD_CONF = """\
option {work}/pptpd-options
localip 10.{n}.0.1
remoteip 10.{n}.0.2-9
listen {ip}
"""


def pptp_setup(s: Session) -> None:
    s.file("pptpd-options", "noauth\n")
    conf = s.file("pptpd.conf", PPTPD_CONF.format(work=s.work, n=s.n, ip=s.server_ip))
    srv = s.lab.spawn(s.server_ns, ["pptpd", "-f", "-c", str(conf), "-p", f"{s.work}/pptpd.pid"], "pptpd")
    s.lab.wait_port(s.server_ns, 1723, procs=[srv])


def pptp_traffic(s: Session) -> None:
    """pptp clients set up calls and send LCP Configure-Requests as GRE, one after another.

    pptpd drops each control connection when its pppd fails, so a new client is started
    whenever the previous one has exited.
    """
    deadline = time.monotonic() + s.duration
    ident = run = 0
    while time.monotonic() < deadline:
        run += 1
        cli = s.lab.spawn(s.client_ns, ["pptp", s.server_ip, "--nolaunchpppd", "--nohostroute", "--debug"],
                          f"pptp-client-{run}", stdin=subprocess.PIPE)
        while time.monotonic() < deadline and cli.alive():
            time.sleep(0.25)
            ident = ident % 255 + 1
            try:
                cli.popen.stdin.write(lcp_configure_request(ident))
                cli.popen.stdin.flush()
            except BrokenPipeError:
                break
        s.lab.stop(cli)


register(Scenario(
    name="l2tp-control", number=40, vpn=True, protocol="l2tp", transport="udp", server_port=1701,
    notes="xl2tpd LNS + LAC; control channel only: kernel has no PPP", requires=("xl2tpd",),
    setup=l2tp_setup, traffic=idle_traffic,
    description="L2TPv2 control messages between two xl2tpd; calls fail because pppd cannot run.",
))
register(Scenario(
    name="pptp-control", number=41, vpn=True, protocol="pptp", transport="tcp", server_port=1723,
    notes="pptpd + pptp client; control channel plus one-way GRE with LCP: kernel has no PPP",
    requires=("pptpd", "pptp"), setup=pptp_setup, traffic=pptp_traffic,
    description="PPTP control connection on TCP 1723 and outgoing call; client-to-server GRE only.",
))
