"""Cleartext encapsulation: tunnels that are not VPNs, because anyone on the path can read them.

Why these negatives: 6in4, IP-in-IP, plain GRE, Teredo and VXLAN wrap whole IP packets
just as a VPN does, so a model that has only seen encrypted tunnels calls every wrapper a
VPN (on public captures, 6in4, GRE and Teredo flows were its most confident false alarms).
What sets them apart is that the inner IP header is readable; the flow table's
``inner_header_frac`` measures that, and these captures teach the model what it means.

``vxlan`` is real: the kernel's VXLAN driver between the two namespaces, carrying the
lab's usual inner traffic. The kernel here has no ``sit``, ``ipip`` or ``gre`` driver, so
6in4, IP-in-IP, GRE and Teredo are crafted with scapy like ``crafted.py``'s captures,
around the same ping + bulk inner pattern as the crafted VPN data channels: the two
differ only in what encryption changes.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

from classifier.lab.netns import VETH
from classifier.lab.scenarios import Scenario, register
from classifier.lab.scenarios.crafted import Wrap, crafter, outer_frame
from classifier.lab.session import Session

VXLAN_PORT = 4789
TEREDO_PORT = 3544


def vxlan_setup(s: Session) -> None:
    """A VXLAN segment (VNI = scenario number) between the namespaces, inner /24 10.N.0.0."""
    ifname = f"vx{s.n}{s.lab.tag}"[:15]
    for ns, local, remote, addr in ((s.server_ns, s.server_ip, s.client_ip, s.inner_server),
                                    (s.client_ns, s.client_ip, s.server_ip, s.inner_client)):
        s.lab.run(ns, ["ip", "link", "add", ifname, "type", "vxlan", "id", str(s.n), "local", local,
                       "remote", remote, "dstport", str(VXLAN_PORT), "dev", VETH])
        s.lab.run(ns, ["ip", "addr", "add", f"{addr}/24", "dev", ifname])
        s.lab.run(ns, ["ip", "link", "set", ifname, "up"])
    s.lab.wait_ping(s.client_ns, s.inner_server)


def _unchanging(wrap: Wrap) -> Callable[[random.Random], Wrap]:
    """A cleartext wrapper draws nothing per capture (no keys, no ids): the same wrap every time."""
    return lambda rng: wrap


def _six_in_four(n: int, fc: bool, inner: bytes, i: int) -> bytes:
    """RFC 4213: the IPv6 packet is the IPv4 payload, protocol 41."""
    return outer_frame(n, fc, 41, inner, ident=i)


def _ipip(n: int, fc: bool, inner: bytes, i: int) -> bytes:
    """RFC 2003: the IPv4 packet is the IPv4 payload, protocol 4."""
    return outer_frame(n, fc, 4, inner, ident=i)


def _gre(n: int, fc: bool, inner: bytes, i: int) -> bytes:
    """RFC 2784 GRE, protocol 47: 4-byte header (no checksum, key or sequence), type 0x0800."""
    return outer_frame(n, fc, 47, struct.pack(">HH", 0, 0x0800) + inner, ident=i)


def _teredo(n: int, fc: bool, inner: bytes, i: int) -> bytes:
    """RFC 4380 Teredo: the IPv6 packet is the UDP payload, relay port 3544."""
    return outer_frame(n, fc, None, inner, udp_ports=(40000 + n, TEREDO_PORT), ident=i)


register(Scenario(
    name="vxlan", number=126, vpn=False, protocol="vxlan", transport="udp", server_port=VXLAN_PORT,
    notes="kernel VXLAN (VNI = scenario number), unencrypted", setup=vxlan_setup,
    description="A VXLAN overlay carrying pings and HTTP: a UDP tunnel whose inner headers anyone can read.",
))
for _name, _number, _protocol, _transport, _port, _ipv6, _wrap, _what in (
    ("6in4-crafted", 127, "6in4", "6in4", None, True, _six_in_four, "IPv6 in IPv4 (protocol 41)"),
    ("ipip-crafted", 128, "ipip", "ipip", None, False, _ipip, "IPv4 in IPv4 (protocol 4)"),
    ("gre-crafted", 129, "gre", "gre", None, False, _gre, "plain GRE carrying IPv4"),
    ("teredo-crafted", 130, "teredo", "udp", TEREDO_PORT, True, _teredo, "Teredo: IPv6 in UDP"),
):
    register(Scenario(
        name=_name, number=_number, vpn=False, protocol=_protocol, transport=_transport, server_port=_port,
        notes=f"crafted with scapy: kernel has no driver; {_what}, unencrypted",
        craft=crafter(_name, _unchanging(_wrap), _ipv6),
        description=f"{_what} with the crafted VPN channels' inner pattern, unencrypted.",
    ))
