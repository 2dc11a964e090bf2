"""Plain encapsulation: GRE, IP-in-IP, VXLAN, Geneve, GTP-U, Teredo.

These carry other traffic unencrypted and are not VPNs: their verdicts have
``is_vpn = False`` and end up in the ``tunnel`` column. One exception is checked
here: IP-in-IP whose inner packet is PPTP's enhanced GRE is reported as ``pptp``.
Each label needs every payload packet of the flow to have the encapsulation's
header with a plausible inner packet (inner IP version, ethertype, length).
"""

from __future__ import annotations

import numpy as np

from classifier.signatures._base import UDP, BatchView, Flow, Packet, Verdict, be16
from classifier.signatures.pptp import gre_v1_ppp

NAME = "tunnels"
GRE, IPIP, IPV6 = 47, 4, 41
_ETHERTYPES = {0x0800: "IPv4", 0x86DD: "IPv6", 0x0806: "ARP", 0x8100: "802.1Q", 0x6558: "Ethernet",
               0x880B: "PPP", 0x8847: "MPLS", 0x88BE: "ERSPAN", 0x22EB: "ERSPAN III", 0x88A8: "802.1ad"}


def candidates(v: BatchView) -> np.ndarray:
    ipx = np.isin(v.proto, (GRE, IPIP, IPV6))
    b0, w2 = v.b(0), v.be16(2)
    vxlan = (b0 == 0x08) & (v.b(1) == 0) & (v.b(2) == 0) & (v.b(3) == 0) & (v.b(7) == 0) & (v.lens >= 22)
    geneve = ((b0 >> 6) == 0) & ((v.b(1) & 0x3F) == 0) & np.isin(w2, (0x6558, 0x0800, 0x86DD)) & (v.b(7) == 0)
    gtp = ((b0 & 0xF0) == 0x30) & (v.b(1) == 0xFF) & (w2 == v.lens - 8)
    teredo = ((b0 >> 4) == 6) & (v.be16(4) + 40 == v.lens)
    teredo_oi = (v.be16(0) == 0) & ((v.b(8) >> 4) == 6) & (v.be16(12) + 48 == v.lens)
    return ipx | (v.udp & v.any_slot(vxlan | geneve | gtp | teredo | teredo_oi))


def inner_ip(d: bytes, length: int, fills: bool = False) -> str | None:
    """Version of a plausible inner IP packet at the start of ``d`` (``length`` bytes on the wire
    from there): its length field does not pass the end by more than 4 bytes and, with ``fills``,
    leaves at most 4 (padding) uncovered, as when the inner packet is the whole payload."""
    if len(d) < 20:
        return None
    if d[0] >> 4 == 4 and d[0] & 0x0F >= 5:
        kind, stated = "IPv4", be16(d, 2)
    elif len(d) >= 40 and d[0] >> 4 == 6:
        kind, stated = "IPv6", be16(d, 4) + 40
    else:
        return None
    if stated > length + 4 or (fills and not length - 4 <= stated <= length):
        return None
    return kind


def _gre_v0(p: Packet) -> str | None:
    d = p.data
    if len(d) < 4 or d[0] & 0x07 or d[1] & 0xF8 or d[1] & 0x07:
        return None
    return _ETHERTYPES.get(be16(d, 2))


def check(f: Flow) -> Verdict | None:
    pk = f.packets
    if not pk:
        return None
    if f.proto == GRE:
        inner = {_gre_v0(p) for p in pk}
        if None in inner:
            return None
        return Verdict("gre", 0.95, f"gre version 0 tunnel: {len(pk)} packets carrying {'/'.join(sorted(inner))}",
                       is_vpn=False)
    if f.proto in (IPIP, IPV6):
        kinds = set()
        pptp = 0
        for p in pk:
            k = inner_ip(p.data, p.len)
            if k is None:
                return None
            kinds.add(k)
            if k == "IPv4" and p.data[9] == GRE:
                ihl = (p.data[0] & 0x0F) * 4
                pptp += gre_v1_ppp(p.data[ihl:], p.len - ihl) is not None
        if pptp == len(pk):
            return Verdict("pptp", 0.9, f"pptp gre inside ip-in-ip: {pptp} packets of enhanced GRE v1 carrying PPP")
        return Verdict("ipip", 0.95, f"ip-in-ip tunnel (ip proto {f.proto}): {len(pk)} packets with an inner "
                       f"{'/'.join(sorted(kinds))} header", is_vpn=False)
    if f.proto != UDP:
        return None
    for label, test in (("vxlan", _vxlan), ("geneve", _geneve), ("gtp-u", _gtp), ("teredo", _teredo)):
        results = [test(p) for p in pk]
        if all(results) and label == "gtp-u" and all(r.endswith("/ESP") for r in results):
            return Verdict("ipsec-esp", 0.6, f"ipsec-esp inside gtp-u: {len(pk)} GTP-U packets whose inner IP "
                           "packet is ESP (SPI/sequence not checked inside the tunnel)")
        results = [r.removesuffix("/ESP") if r else r for r in results]
        if all(results):
            inner = "/".join(sorted(set(results)))
            return Verdict(label, 0.9 if len(pk) >= 2 else 0.8,
                           f"{label} tunnel: {len(pk)} packets with a valid {label} header carrying {inner}",
                           is_vpn=False)
    return None


def _vxlan(p: Packet) -> str | None:
    d = p.data
    if len(d) < 22 or d[0] != 0x08 or d[1:4] != b"\0\0\0" or d[7] != 0:
        return None
    return _ETHERTYPES.get(be16(d, 20))


def _geneve(p: Packet) -> str | None:
    d = p.data
    if len(d) < 8 or d[0] >> 6 or d[1] & 0x3F or d[7]:
        return None
    off = 8 + (d[0] & 0x3F) * 4
    proto = be16(d, 2)
    if proto == 0x6558:
        return _ETHERTYPES.get(be16(d, off + 12)) if len(d) >= off + 14 else "Ethernet"
    if proto in (0x0800, 0x86DD):
        return inner_ip(d[off:], p.len - off) if len(d) >= off + 20 else _ETHERTYPES[proto]
    return None


def _gtp(p: Packet) -> str | None:
    d = p.data
    if len(d) < 8 or d[0] & 0xF0 != 0x30 or d[1] != 0xFF or be16(d, 2) != p.len - 8:
        return None
    off = 12 if d[0] & 0x07 else 8
    if d[0] & 0x04 and len(d) > off - 1:  # extension headers: skip the chain
        while off < len(d) and d[off - 1]:
            ln = d[off] * 4
            if ln == 0:
                return None
            off += ln
    if off >= len(d):
        return "(inner not stored)"
    inner = d[off:]
    kind = inner_ip(inner, p.len - off) if len(d) >= off + 20 else "(inner not stored)"
    nxt = inner[9] if kind == "IPv4" else inner[6] if kind == "IPv6" else None
    return f"{kind}/ESP" if nxt == 50 else kind


def _teredo(p: Packet) -> str | None:
    d = p.data
    off = 0
    if len(d) >= 8 and be16(d, 0) == 0:  # origin indication
        off = 8
    elif len(d) >= 13 and be16(d, 0) == 1:  # authentication header
        off = 4 + d[2] + d[3] + 9
    if len(d) < off + 8 or d[off] >> 4 != 6 or be16(d, off + 4) + 40 != p.len - off:
        return None
    return "IPv6"
