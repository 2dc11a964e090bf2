"""An independent, deliberately slow reference for the packet reader and flow meter.

Why it exists: the engine decodes headers in compiled kernels and keeps flows in a
hash table of numpy arrays; a bug there would be invisible if the tests only compared
the engine with itself. This module reads captures record by record, decodes headers
with dpkt, and builds flows in a plain dict, one Python object per packet, following
the flow rules of ``classifier/flows/config.py`` as documented in docs/schema.md:

- key: IP protocol, outermost VLAN id and the two (address, port) endpoints, unordered;
  protocols without ports use port 0 and report no ports;
- initiator: the sender of the first packet of the flow;
- a packet starts a new flow when the flow was idle for more than ``idle_s``, began
  more than ``active_s`` ago, or was closed (RST, or FIN in both directions) and the
  packet is a new SYN or arrives more than ``linger_s`` after the last one;
- IPv4 and IPv6 later fragments take the ports of the first fragment of the same
  (source, destination, protocol, identification);
- sizes are IP datagram bytes: IPv4 total length, IPv6 40 + payload length.

A packet counts when its IP header and, for TCP/UDP/SCTP/UDP-Lite first fragments, its
transport header are complete in the captured bytes and consistent with the packet
(IHL >= 20, IHL <= total length <= the frame's wire length after the link header, TCP
data offset within the IP payload). Everything else (ARP, truncated or lying headers)
is not part of any flow.

dpkt decodes the record headers (``dpkt.pcap`` / ``dpkt.pcapng`` header classes), the
link layers it knows (Ethernet with VLAN/QinQ/MPLS/PPPoE, SLL, SLL2, BSD loopback, PPP),
IPv4, the IPv6 extension headers, TCP, UDP and SCTP. NFLOG has no dpkt decoder; its TLVs
are walked by hand here (a dozen lines), and dpkt takes over at the IP header. dpkt's
Ethernet decoder stops after two VLAN tags, which is all QinQ needs.
"""

from __future__ import annotations

import gzip
import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dpkt
import dpkt.ethernet
import dpkt.ip
import dpkt.ip6
import dpkt.loopback
import dpkt.pcap
import dpkt.pcapng
import dpkt.ppp
import dpkt.pppoe
import dpkt.sctp
import dpkt.sll
import dpkt.sll2
import dpkt.tcp
import dpkt.udp

NS = 1_000_000_000
PORTED = (6, 17, 132, 136)  # TCP, UDP, SCTP, UDP-Lite
MAX_RECORD = 1 << 18


@dataclass(frozen=True)
class Record:
    """One capture record: timestamp (ns), link type, captured bytes and wire length."""

    ts: int
    linktype: int
    data: bytes
    wire_len: int
    offset: int


@dataclass(frozen=True)
class RefPacket:
    """The fields of one IP packet that the flow rules need."""

    ts: int
    vlan: int  # -1 untagged
    version: int
    src: int  # address as an int (IPv4 mapped to ::ffff:a.b.c.d, like the engine's 128-bit key)
    dst: int
    proto: int
    sport: int
    dport: int
    has_ports: bool
    ip_len: int
    payload_len: int
    tcp_flags: int
    frag: int  # 0 none, 1 first fragment, 2 later fragment
    frag_id: int
    truncated: bool  # snap length shorter than the wire length

    @property
    def src_str(self) -> str:
        return addr_str(self.src)

    @property
    def dst_str(self) -> str:
        return addr_str(self.dst)


def addr_str(a: int) -> str:
    v6 = ipaddress.IPv6Address(a)
    return str(v6.ipv4_mapped) if v6.ipv4_mapped is not None else v6.compressed


def _mapped(raw: bytes) -> int:
    if len(raw) == 4:
        return (0xFFFF << 32) | int.from_bytes(raw, "big")
    return int.from_bytes(raw, "big")


# --------------------------------------------------------------------------- records


def _open(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data


def iter_records(path: str | Path) -> Iterator[Record]:
    """Records of a pcap or pcapng file (optionally gzip), stopping quietly at damage."""
    data = _open(Path(path))
    if len(data) < 4:
        return
    magic = data[:4]
    if magic == b"\x0a\x0d\x0d\x0a":
        yield from _pcapng_records(data)
    elif magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        yield from _pcap_records(data)


def _pcap_records(data: bytes) -> Iterator[Record]:
    fh = dpkt.pcap.FileHdr(data[:24])
    le = fh.magic in (dpkt.pcap.PMUDPCT_MAGIC, dpkt.pcap.PMUDPCT_MAGIC_NANO)
    if le:
        fh = dpkt.pcap.LEFileHdr(data[:24])
    nanos = fh.magic in (dpkt.pcap.TCPDUMP_MAGIC_NANO, dpkt.pcap.PMUDPCT_MAGIC_NANO)
    hdr_cls = dpkt.pcap.LEPktHdr if le else dpkt.pcap.PktHdr
    linktype = fh.linktype & 0x0FFFFFFF
    limit = max(fh.snaplen, MAX_RECORD)
    pos = 24
    while pos + 16 <= len(data):
        h = hdr_cls(data[pos:pos + 16])
        if h.caplen > limit or pos + 16 + h.caplen > len(data):
            return
        ts = h.tv_sec * NS + h.tv_usec * (1 if nanos else 1000)
        yield Record(ts, linktype, data[pos + 16:pos + 16 + h.caplen], max(h.len, h.caplen), pos)
        pos += 16 + h.caplen


@dataclass
class _Iface:
    linktype: int
    snaplen: int
    base: int = 10
    exp: int = 6
    offset_s: int = 0


def _pcapng_records(data: bytes) -> Iterator[Record]:
    pos = 0
    le = True
    ifaces: list[_Iface] = []
    last_ts = 0
    while pos + 12 <= len(data):
        btype_raw = data[pos:pos + 4]
        if btype_raw == b"\x0a\x0d\x0d\x0a":
            le = data[pos + 8:pos + 12] == b"\x4d\x3c\x2b\x1a"
            ifaces = []
        fmt = "<" if le else ">"
        btype, blen = struct.unpack(fmt + "II", data[pos:pos + 8])
        if blen < 12 or blen % 4 or pos + blen > len(data):
            return
        block = data[pos:pos + blen]
        if btype == dpkt.pcapng.PCAPNG_BT_IDB:
            idb = (dpkt.pcapng.InterfaceDescriptionBlockLE if le else dpkt.pcapng.InterfaceDescriptionBlock)(block)
            iface = _Iface(idb.linktype, idb.snaplen)
            for opt in idb.opts:
                if opt.code == dpkt.pcapng.PCAPNG_OPT_IF_TSRESOL:
                    v = opt.data[0]
                    iface.base, iface.exp = (2, v & 0x7F) if v & 0x80 else (10, v)
                elif opt.code == dpkt.pcapng.PCAPNG_OPT_IF_TSOFFSET:
                    iface.offset_s = struct.unpack(fmt + "q", opt.data[:8])[0]
            ifaces.append(iface)
        elif btype in (dpkt.pcapng.PCAPNG_BT_EPB, dpkt.pcapng.PCAPNG_BT_PB):
            if btype == dpkt.pcapng.PCAPNG_BT_EPB:
                b = (dpkt.pcapng.EnhancedPacketBlockLE if le else dpkt.pcapng.EnhancedPacketBlock)(block)
                if_id = b.iface_id
            else:
                b = (dpkt.pcapng.PacketBlockLE if le else dpkt.pcapng.PacketBlock)(block)
                if_id = b.iface_id
            if if_id >= len(ifaces):
                return
            iface = ifaces[if_id]
            raw = (b.ts_high << 32) | b.ts_low
            ts = raw * NS // iface.base ** iface.exp + iface.offset_s * NS
            last_ts = ts
            yield Record(ts, iface.linktype, bytes(b.pkt_data), max(b.pkt_len, b.caplen), pos)
        elif btype == dpkt.pcapng.PCAPNG_BT_SPB:
            # dpkt has no simple-packet-block class: 4-byte original length, then the data.
            if not ifaces:
                return
            wire = struct.unpack(fmt + "I", block[8:12])[0]
            cap = min(wire, blen - 16)
            if ifaces[0].snaplen:
                cap = min(cap, ifaces[0].snaplen)
            yield Record(last_ts, ifaces[0].linktype, block[12:12 + cap], wire, pos)
        pos += blen


# --------------------------------------------------------------------------- headers


def _ether_payload(frame: bytes) -> tuple[int, int, int] | None:
    """(offset of the network header, ethertype, outer vlan) of an Ethernet frame."""
    if len(frame) < 14:
        return None
    eth = dpkt.ethernet.Ethernet(frame)
    if eth.type <= 1500:
        return None
    tags = getattr(eth, "vlan_tags", None) or []
    labels = getattr(eth, "mpls_labels", None) or []
    vlan = tags[0].id if tags else -1
    off = 14 + 4 * len(tags) + 4 * len(labels)
    etype = tags[-1].type if tags else eth.type
    if labels:
        if off >= len(frame):
            return None
        nib = frame[off] >> 4
        etype = {4: 0x0800, 6: 0x86DD}.get(nib, 0)
    if etype == dpkt.ethernet.ETH_TYPE_PPPoE:
        if off + 8 > len(frame):
            return None
        # 6-byte PPPoE session header, then PPP without address/control (dpkt.pppoe.PPP)
        ppp = dpkt.pppoe.PPPoE(frame[off:]).data
        if not isinstance(ppp, dpkt.ppp.PPP):
            return None
        off += 6 + (1 if frame[off + 6] & 1 else 2)
        etype = {dpkt.ppp.PPP_IP: 0x0800, dpkt.ppp.PPP_IP6: 0x86DD}.get(ppp.p, 0)
    return off, etype, vlan


def _link(linktype: int, frame: bytes) -> tuple[int, int, int] | None:
    """(offset of the IP header, IP version by link type or 0 = by nibble, vlan) or None."""
    try:
        if linktype == 1:
            r = _ether_payload(frame)
            if r is None:
                return None
            off, etype, vlan = r
            ver = {0x0800: 4, 0x86DD: 6}.get(etype)
            return (off, ver, vlan) if ver else None
        if linktype in (113, 276):
            hl = 16 if linktype == 113 else 20
            if len(frame) < hl:
                return None
            hdr = dpkt.sll.SLL(frame[:hl]) if linktype == 113 else dpkt.sll2.SLL2(frame[:hl])
            etype, vlan, off = hdr.ethtype, -1, hl
            if etype == dpkt.ethernet.ETH_TYPE_8021Q and off + 4 <= len(frame):
                tag = dpkt.ethernet.VLANtag8021Q(frame[off:off + 4])
                vlan, etype, off = tag.id, tag.type, off + 4
            ver = {0x0800: 4, 0x86DD: 6}.get(etype)
            return (off, ver, vlan) if ver else None
        if linktype in (0, 108):
            if len(frame) < 4:
                return None
            # The family is in the capturing host's byte order (network order for 108);
            # dpkt's Loopback would also decode the rest, which ``decode`` does itself.
            fam = struct.unpack("<I" if linktype == 0 else ">I", frame[:4])[0]
            if fam > 0xFFFF:
                fam = struct.unpack(">I" if linktype == 0 else "<I", frame[:4])[0]
            ver = 4 if fam == 2 else (6 if fam in (10, 24, 28, 30) else 0)
            return (4, ver, -1) if ver else None
        if linktype in (9, 50):
            if frame[:2] == b"\xff\x03":
                ppp = dpkt.ppp.PPP(frame)
                off = 4 if frame[2] & 1 == 0 else 3
            else:
                ppp = dpkt.pppoe.PPP(frame)
                off = 2 if frame[0] & 1 == 0 else 1
            ver = {dpkt.ppp.PPP_IP: 4, dpkt.ppp.PPP_IP6: 6}.get(ppp.p)
            return (off, ver, -1) if ver else None
        if linktype == 239:  # NFLOG: no dpkt decoder; walk the TLVs (little-endian length, type)
            off = 4
            while off + 4 <= len(frame):
                tlen, ttype = struct.unpack("<HH", frame[off:off + 4])
                if tlen < 4:
                    return None
                if ttype == 9:
                    return off + 4, 0, -1
                off += (tlen + 3) & ~3
            return None
        if linktype in (12, 14, 101, 228, 229):
            return 0, 0, -1
    except (dpkt.UnpackError, struct.error, IndexError):
        return None
    return None


class _IP6Fixed(dpkt.ip6.IP6):
    """The 40-byte IPv6 header alone; the extension chain is walked by ``decode`` below."""

    def unpack(self, buf: bytes) -> None:
        dpkt.Packet.unpack(self, buf)


_EXT = {0, 43, 44, 60}  # hop-by-hop, routing, fragment, destination options


def decode(rec: Record) -> RefPacket | None:
    """The IP packet of a record, or None when it is not one the flow rules count."""
    r = _link(rec.linktype, rec.data)
    if r is None:
        return None
    off, ver, vlan = r
    raw = rec.data[off:]
    if not raw:
        return None
    nib = raw[0] >> 4
    if ver == 0:
        ver = nib
    if nib != ver or ver not in (4, 6):
        return None
    wire_avail = rec.wire_len - off
    frag, frag_id = 0, 0
    try:
        if ver == 4:
            if len(raw) < 20:
                return None
            ip = dpkt.ip.IP(raw)
            hl = ip.hl * 4
            total = ip.len or wire_avail
            if hl < 20 or total < hl or total > wire_avail:
                return None
            if ip.offset:
                frag = 2
            elif ip.mf:
                frag = 1
            frag_id = ip.id
            src, dst, proto = _mapped(ip.src), _mapped(ip.dst), ip.p
            l4 = raw[hl:total]
            l4_len = total - hl
        else:
            if len(raw) < 40:
                return None
            ip6 = _IP6Fixed(raw[:40])
            total = 40 + ip6.plen if ip6.plen else wire_avail
            if total > wire_avail:
                return None
            src, dst = _mapped(ip6.src), _mapped(ip6.dst)
            nh, q = ip6.nxt, 40
            while nh in _EXT:
                if q + 8 > len(raw):
                    return None
                ext = dpkt.ip6.EXT_HDRS_CLS[nh](raw[q:])
                q += ext.length
                nh = ext.nxt
                if isinstance(ext, dpkt.ip6.IP6FragmentHeader):
                    frag_id = ext.id
                    if ext.frag_off:
                        frag = 2
                        break
                    if ext.m_flag:
                        frag = 1
            if q > total:
                return None
            proto = nh
            l4 = raw[q:total]
            l4_len = total - q
    except (dpkt.UnpackError, struct.error, IndexError):
        return None
    sport = dport = 0
    has_ports = False
    flags = 0
    payload = l4_len
    if frag != 2 and proto in PORTED:
        try:
            if proto == 6:
                if len(l4) < 20 and l4_len >= 20:
                    return None  # cut by the snap length
                tcp = dpkt.tcp.TCP(l4)
                doff = tcp.off * 4
                if doff < 20 or doff > l4_len:
                    return None
                sport, dport, flags = tcp.sport, tcp.dport, tcp.flags
                payload = l4_len - doff
            elif proto == 132:
                s = dpkt.sctp.SCTP(l4[:12])
                sport, dport = s.sport, s.dport
                payload = l4_len - 12
            else:
                u = dpkt.udp.UDP(l4[:8])
                sport, dport = u.sport, u.dport
                payload = l4_len - 8
        except (dpkt.UnpackError, struct.error):
            return None
        has_ports = True
    return RefPacket(rec.ts, vlan, ver, src, dst, proto, sport, dport, has_ports, total, payload, flags,
                     frag, frag_id, len(rec.data) < rec.wire_len)


def read_packets(path: str | Path) -> list[RefPacket]:
    return [p for p in (decode(r) for r in iter_records(path)) if p is not None]


# --------------------------------------------------------------------------- flows


@dataclass
class RefFlow:
    """A flow and the packets it holds (``dirs[i]`` 0 = sent by the initiator)."""

    proto: int
    vlan: int
    version: int
    src: int
    dst: int
    sport: int
    dport: int
    has_ports: bool
    first: int
    last: int
    end_reason: str = "eof"
    packets: list[RefPacket] = field(default_factory=list)
    dirs: list[int] = field(default_factory=list)
    fin_seen: list[bool] = field(default_factory=lambda: [False, False])
    closed: str = ""  # "", "fin" or "rst"

    def count(self, d: int) -> int:
        return sum(1 for x in self.dirs if x == d)

    def bytes(self, d: int) -> int:
        return sum(p.ip_len for p, x in zip(self.packets, self.dirs, strict=True) if x == d)

    def summary(self) -> tuple:
        """What the corpus comparison checks: endpoints, key, first packet, per-direction counts."""
        return (addr_str(self.src), addr_str(self.dst), self.sport if self.has_ports else None,
                self.dport if self.has_ports else None, self.proto, None if self.vlan < 0 else self.vlan,
                self.first, self.count(0), self.bytes(0), self.count(1), self.bytes(1))


def _expired(flow: RefFlow, now: int, idle: int, active: int, linger: int) -> str:
    if flow.closed and now - flow.last > linger:
        return flow.closed
    if now - flow.last > idle:
        return "idle"
    if now - flow.first > active:
        return "active"
    return ""


def build_flows(packets: list[RefPacket], idle_s: float = 120.0, active_s: float = 1800.0,
                linger_s: float = 5.0, sweep_s: float = 1.0) -> list[RefFlow]:
    """Flows of a packet list in order of their first packet.

    Timeouts are checked in two ways, as the flow rules say: when a packet of the flow
    arrives (against that packet's timestamp), and by a sweep of all open flows against
    the capture clock (the latest timestamp so far) whenever that clock has moved on by
    ``sweep_s`` since the last sweep. The two differ only for captures whose timestamps
    go backwards (merged files).
    """
    idle, active, linger, every = int(idle_s * NS), int(active_s * NS), int(linger_s * NS), int(sweep_s * NS)
    table: dict[tuple, RefFlow] = {}
    frag_ports: dict[tuple, tuple[int, int]] = {}
    flows: list[RefFlow] = []
    now = 0
    next_sweep = None
    for p in packets:
        now = max(now, p.ts)
        if next_sweep is None:
            next_sweep = now + every
        elif now >= next_sweep:
            for key, flow in list(table.items()):
                reason = _expired(flow, now, idle, active, linger)
                if reason:
                    flow.end_reason = reason
                    del table[key]
            next_sweep = now + every
        sport, dport, has_ports = p.sport, p.dport, p.has_ports
        fkey = (p.src, p.dst, p.proto, p.frag_id)
        if p.frag == 1 and has_ports:
            frag_ports[fkey] = (sport, dport)
        elif p.frag == 2 and fkey in frag_ports:
            sport, dport = frag_ports[fkey]
            has_ports = True
        key = (p.proto, p.vlan, p.version, frozenset({(p.src, sport), (p.dst, dport)}))
        flow = table.get(key)
        if flow is not None:
            reason = ""
            if flow.closed and ((p.tcp_flags & 0x12) == 0x02 or p.ts - flow.last > linger):
                reason = flow.closed
            elif p.ts - flow.last > idle:
                reason = "idle"
            elif p.ts - flow.first > active:
                reason = "active"
            if reason:
                flow.end_reason = reason
                del table[key]
                flow = None
        if flow is None:
            flow = RefFlow(p.proto, p.vlan, p.version, p.src, p.dst, sport, dport, has_ports, p.ts, p.ts)
            table[key] = flow
            flows.append(flow)
        d = 0 if (p.src, sport) == (flow.src, flow.sport) else 1
        flow.packets.append(p)
        flow.dirs.append(d)
        flow.last = max(flow.last, p.ts)
        if p.proto == 6 and p.frag != 2:
            if p.tcp_flags & 0x01:
                flow.fin_seen[d] = True
            if p.tcp_flags & 0x04:
                flow.closed = "rst"
            elif all(flow.fin_seen) and not flow.closed:
                flow.closed = "fin"
    for flow in table.values():  # end of input: closed, past a timeout at the last packet, or still open
        flow.end_reason = flow.closed or _expired(flow, now, idle, active, linger) or "eof"
    return flows


def reference_flows(path: str | Path, **kw: float) -> list[RefFlow]:
    return build_flows(read_packets(path), **kw)
