"""Compiled header decoder: link, IP and transport headers of a whole chunk at once.

One pass per packet over a few header bytes, writing into preallocated numpy columns
(``classifier.packets.batch.COLUMNS``). Every read is bounds-checked against the
captured length, so a packet shorter than its headers is marked TRUNCATED instead of
crashing, and length fields that contradict the packet are marked BAD_*.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from classifier.packets import linktypes as lt_
from classifier.packets.batch import PacketStatus

_ETH, _PPP, _PPP_HDLC, _RAW, _RAW12, _RAW14 = lt_.ETHERNET, lt_.PPP, lt_.PPP_HDLC, lt_.RAW, lt_.RAW_12, lt_.RAW_14
OK, NOT_IP, TRUNCATED = PacketStatus.OK, PacketStatus.NOT_IP, PacketStatus.TRUNCATED
BAD_IP, BAD_L4, BAD_LINK = PacketStatus.BAD_IP, PacketStatus.BAD_L4, PacketStatus.BAD_LINK
_NULL, _LOOP, _SLL, _SLL2, _V4, _V6, _NFLOG = lt_.NULL, lt_.LOOP, lt_.LINUX_SLL, lt_.LINUX_SLL2, lt_.IPV4, lt_.IPV6, lt_.NFLOG


@nb.njit(cache=True, inline="always")
def _be16(b, p):
    return (np.int64(b[p]) << 8) | b[p + 1]


@nb.njit(cache=True, inline="always")
def _be32(b, p):
    return (np.int64(b[p]) << 24) | (np.int64(b[p + 1]) << 16) | (np.int64(b[p + 2]) << 8) | b[p + 3]


@nb.njit(cache=True, inline="always")
def _be64(b, p):
    return (np.uint64(_be32(b, p)) << np.uint64(32)) | np.uint64(_be32(b, p + 4))


@nb.njit(cache=True, inline="always")
def _ethertype_version(et):
    return 4 if et == 0x0800 else (6 if et == 0x86DD else 0)


@nb.njit(cache=True, inline="always")
def _ip_start(p, ver, vlan):
    """The result of ``_link``: IP starts at ``p`` (version 4 or 6), or the frame is not IP (0)."""
    return p, ver, vlan, (OK if ver != 0 else NOT_IP)


@nb.njit(cache=True)
def _link(b, p, end, linktype):
    """Return (ip_start, ethertype_or_version, vlan, status) for one packet's link header."""
    vlan = -1
    if linktype == _ETH:
        if p + 14 > end:
            return p, 0, vlan, TRUNCATED
        et = _be16(b, p + 12)
        p += 14
        while et == 0x8100 or et == 0x88A8 or et == 0x9100 or et == 0x9200:
            if p + 4 > end:
                return p, 0, vlan, TRUNCATED
            if vlan < 0:
                vlan = _be16(b, p) & 0xFFF
            et = _be16(b, p + 2)
            p += 4
        if et == 0x8847 or et == 0x8848:  # MPLS: pop labels to the bottom of the stack
            while True:
                if p + 4 > end:
                    return p, 0, vlan, TRUNCATED
                bos = b[p + 2] & 1
                p += 4
                if bos:
                    break
            if p >= end:
                return p, 0, vlan, TRUNCATED
            nib = b[p] >> 4
            et = 0x0800 if nib == 4 else (0x86DD if nib == 6 else 0)
        elif et == 0x8864:  # PPPoE session
            if p + 8 > end:
                return p, 0, vlan, TRUNCATED
            proto = _be16(b, p + 6)
            p += 8
            et = 0x0800 if proto == 0x21 else (0x86DD if proto == 0x57 else 0)
        return _ip_start(p, _ethertype_version(et), vlan)
    if linktype == _SLL or linktype == _SLL2:
        hl = 16 if linktype == _SLL else 20
        if p + hl > end:
            return p, 0, vlan, TRUNCATED
        et = _be16(b, p + 14) if linktype == _SLL else _be16(b, p)
        p += hl
        if et == 0x8100 and p + 4 <= end:
            vlan = _be16(b, p) & 0xFFF
            et = _be16(b, p + 2)
            p += 4
        return _ip_start(p, _ethertype_version(et), vlan)
    if linktype == _NULL or linktype == _LOOP:
        if p + 4 > end:
            return p, 0, vlan, TRUNCATED
        fam = _be32(b, p)
        if linktype == _NULL and fam > 0xFFFF:  # host byte order of the capturing machine
            fam = (np.int64(b[p + 3]) << 24) | (np.int64(b[p + 2]) << 16) | (np.int64(b[p + 1]) << 8) | b[p]
        p += 4
        return _ip_start(p, 4 if fam == 2 else (6 if fam == 10 or fam == 24 or fam == 28 or fam == 30 else 0), vlan)
    if linktype == _PPP or linktype == _PPP_HDLC:
        if p + 2 <= end and b[p] == 0xFF and b[p + 1] == 0x03:
            p += 2
        if p + 2 > end:
            return p, 0, vlan, TRUNCATED
        proto = _be16(b, p)
        p += 2
        return _ip_start(p, 4 if proto == 0x21 else (6 if proto == 0x57 else 0), vlan)
    if linktype == _NFLOG:
        if p + 4 > end:
            return p, 0, vlan, TRUNCATED
        p += 4
        while p + 4 <= end:
            tlen = (np.int64(b[p + 1]) << 8) | b[p]
            ttype = (np.int64(b[p + 3]) << 8) | b[p + 2]
            if tlen < 4:
                return p, 0, vlan, BAD_LINK
            if ttype == 9:  # NFULA_PAYLOAD
                p += 4
                if p >= end:
                    return p, 0, vlan, TRUNCATED
                nib = b[p] >> 4
                return p, (4 if nib == 4 else (6 if nib == 6 else 0)), vlan, (OK if nib == 4 or nib == 6 else NOT_IP)
            p += (tlen + 3) & ~3
        return p, 0, vlan, NOT_IP
    if linktype == _RAW or linktype == _RAW12 or linktype == _RAW14 or linktype == _V4 or linktype == _V6:
        if p >= end:
            return p, 0, vlan, TRUNCATED
        nib = b[p] >> 4
        if nib == 4 or nib == 6:
            return p, nib, vlan, OK
        return p, 0, vlan, NOT_IP
    return p, 0, vlan, BAD_LINK


@nb.njit(cache=True)
def decode(b, n, data_off, cap_len, wire_len, linktype,
           status, ip_ver, ip_proto, src_hi, src_lo, dst_hi, dst_lo, sport, dport, has_ports,
           tcp_flags, tcp_seq, ip_len, payload_off, payload_len, payload_cap, vlan_out, frag, frag_id):
    """Decode ``n`` packets whose bytes start at ``data_off`` in ``b``."""
    v4map = np.uint64(0xFFFF) << np.uint64(32)
    for i in range(n):
        start = data_off[i]
        end = start + cap_len[i]
        p, ver, vlan, st = _link(b, start, end, linktype[i])
        vlan_out[i] = vlan
        has_ports[i] = 0
        frag[i] = 0
        tcp_flags[i] = 0
        tcp_seq[i] = 0
        sport[i] = 0
        dport[i] = 0
        if st != OK:
            status[i] = st
            continue
        wire_avail = wire_len[i] - (p - start)
        if p < end and (b[p] >> 4) != ver:
            status[i] = NOT_IP if ver == 0 else BAD_IP
            continue
        is_later_frag = False
        if ver == 4:
            if p + 20 > end:
                status[i] = TRUNCATED
                continue
            ihl = (b[p] & 0xF) * 4
            total = _be16(b, p + 2)
            if total == 0:  # TSO/GSO capture: length left to the NIC
                total = wire_avail
            if ihl < 20 or total < ihl or total > wire_avail:
                status[i] = BAD_IP
                continue
            proto = b[p + 9]
            fo = _be16(b, p + 6)
            off = fo & 0x1FFF
            mf = fo & 0x2000
            if off != 0:
                frag[i] = 2
                is_later_frag = True
            elif mf != 0:
                frag[i] = 1
            frag_id[i] = _be16(b, p + 4)
            src_hi[i] = 0
            dst_hi[i] = 0
            src_lo[i] = v4map | np.uint64(_be32(b, p + 12))
            dst_lo[i] = v4map | np.uint64(_be32(b, p + 16))
            l4 = p + ihl
            l4_len = total - ihl
        else:
            if p + 40 > end:
                status[i] = TRUNCATED
                continue
            plen = _be16(b, p + 4)
            total = 40 + plen if plen != 0 else wire_avail
            if total > wire_avail:
                status[i] = BAD_IP
                continue
            src_hi[i] = _be64(b, p + 8)
            src_lo[i] = _be64(b, p + 16)
            dst_hi[i] = _be64(b, p + 24)
            dst_lo[i] = _be64(b, p + 32)
            nh = b[p + 6]
            q = p + 40
            trunc = False
            while nh == 0 or nh == 43 or nh == 60 or nh == 44:
                if q + 8 > end:
                    trunc = True
                    break
                if nh == 44:
                    fo = _be16(b, q + 2)
                    frag_id[i] = _be32(b, q + 4)
                    nh = b[q]
                    q += 8
                    if (fo >> 3) != 0:
                        frag[i] = 2
                        is_later_frag = True
                        break
                    if fo & 1:
                        frag[i] = 1
                else:
                    hl = (np.int64(b[q + 1]) + 1) * 8
                    nh = b[q]
                    q += hl
            if trunc:
                status[i] = TRUNCATED
                continue
            if q - p > total:
                status[i] = BAD_IP
                continue
            proto = nh
            l4 = q
            l4_len = total - (q - p)
        ip_ver[i] = ver
        ip_proto[i] = proto
        ip_len[i] = total
        st = OK
        pl_off = l4
        pl_len = l4_len
        if not is_later_frag:
            if proto == 6:
                if l4_len < 20:  # the IP length leaves no room for the header: a lie, not a snap cut
                    st = BAD_L4
                elif l4 + 20 > end:
                    st = TRUNCATED
                else:
                    doff = (b[l4 + 12] >> 4) * 4
                    if doff < 20 or doff > l4_len:
                        st = BAD_L4
                    else:
                        sport[i] = _be16(b, l4)
                        dport[i] = _be16(b, l4 + 2)
                        tcp_seq[i] = _be32(b, l4 + 4)
                        tcp_flags[i] = b[l4 + 13]
                        has_ports[i] = 1
                        pl_off = l4 + doff
                        pl_len = l4_len - doff
            elif proto == 17 or proto == 136 or proto == 132:
                hl = 12 if proto == 132 else 8
                if l4_len < hl:
                    st = BAD_L4
                elif l4 + hl > end:
                    st = TRUNCATED
                else:
                    sport[i] = _be16(b, l4)
                    dport[i] = _be16(b, l4 + 2)
                    has_ports[i] = 1
                    pl_off = l4 + hl
                    pl_len = l4_len - hl
        status[i] = st
        payload_off[i] = pl_off
        payload_len[i] = pl_len
        avail = end - pl_off
        payload_cap[i] = max(0, min(pl_len, avail))
