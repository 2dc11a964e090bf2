"""Compiled flow-meter kernel: a hash table of open flows updated packet by packet.

Assigning packets to flows with timeouts is a sequential scan (whether a packet starts
a new flow depends on the flow's state when it arrives), so it runs as one numba loop
over a whole PacketBatch with all flow state in preallocated arrays (see
``classifier.flows.state``). Python only sees flows when they end.

The table is open addressing with linear probing and backward-shift deletion over an
index of slot numbers; slots come from a free stack. Ended flows are appended to a
``done`` list, in an order that depends only on the packets (never on chunking): at a
packet, or at a sweep in flow-id order.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from classifier.flows.state import (
    ACTIVE,
    BIMAX,
    BIMIN,
    BY0,
    C_ACTIVE_N,
    C_DONE_N,
    C_FREE_TOP,
    C_NEXT_ID,
    C_NEXT_SWEEP,
    C_NOW,
    CLOSED,
    END,
    F_BIM2,
    F_BIMEAN,
    F_IM2_0,
    F_IMEAN0,
    F_SM2_0,
    F_SMEAN0,
    FIRST,
    FIRSTFLAGS,
    FLOW_ID,
    FN,
    FRAGS,
    FSEEN0,
    HAS_PORTS,
    HD0,
    HEADN,
    IMAX0,
    IMIN0,
    INIT_LOW,
    IPVER,
    LAST,
    LTS0,
    N_HIST,
    PAYLOAD_HIST_EDGES,
    PHIST0,
    PK0,
    PL0,
    PPK0,
    PROTO,
    REASON_ACTIVE,
    REASON_EOF,
    REASON_FIN,
    REASON_IDLE,
    REASON_RST,
    SMAX0,
    SMIN0,
    TCP0,
    TRUNC,
    VLAN,
)

_EDGES = PAYLOAD_HIST_EDGES
NEED_SPACE = 1
DONE = 0
_BIG = np.int64(1) << np.int64(62)
_FC_MASK = (1 << 12) - 1


@nb.njit(cache=True, inline="always")
def _mix(h, k):
    h ^= k
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    return h


@nb.njit(cache=True, inline="always")
def _hash5(k0, k1, k2, k3, k4):
    h = np.uint64(0x9E3779B97F4A7C15)
    h = _mix(h, k0)
    h = _mix(h, k1)
    h = _mix(h, k2)
    h = _mix(h, k3)
    h = _mix(h, k4)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(29)
    return h


@nb.njit(cache=True)
def _lookup(index, keys, hashes, h, k0, k1, k2, k3, k4):
    mask = np.uint64(index.shape[0] - 1)
    pos = np.int64(h & mask)
    m = index.shape[0] - 1
    while True:
        e = index[pos]
        if e == 0:
            return -1, pos
        s = e - 1
        if hashes[s] == h and keys[s, 0] == k0 and keys[s, 1] == k1 and keys[s, 2] == k2 \
                and keys[s, 3] == k3 and keys[s, 4] == k4:
            return s, pos
        pos = (pos + 1) & m


@nb.njit(cache=True)
def _delete(index, hashes, s):
    m = index.shape[0] - 1
    i = np.int64(hashes[s] & np.uint64(m))
    while index[i] != s + 1:
        i = (i + 1) & m
    while True:
        j = i
        while True:
            j = (j + 1) & m
            if index[j] == 0:
                index[i] = 0
                return
            k = np.int64(hashes[index[j] - 1] & np.uint64(m))
            if i <= j:
                if i < k <= j:
                    continue
            elif k > i or k <= j:
                continue
            index[i] = index[j]
            i = j
            break


@nb.njit(cache=True)
def _evict(s, reason, si, index, hashes, done, ctl):
    si[s, END] = reason
    si[s, ACTIVE] = 0
    _delete(index, hashes, s)
    done[ctl[C_DONE_N]] = s
    ctl[C_DONE_N] += 1
    ctl[C_ACTIVE_N] -= 1


@nb.njit(cache=True)
def _closed_reason(si, s):
    return REASON_RST if si[s, CLOSED] == 2 else REASON_FIN


@nb.njit(cache=True)
def sweep(now, si, index, hashes, done, ctl, idle, active, linger, everything):
    """End idle, too-old and closed-and-lingered flows (all flows when ``everything``), in flow-id order."""
    cap = si.shape[0]
    cand = np.empty(ctl[C_ACTIVE_N], np.int64)
    ids = np.empty(ctl[C_ACTIVE_N], np.int64)
    reasons = np.empty(ctl[C_ACTIVE_N], np.int64)
    c = 0
    for s in range(cap):
        if si[s, ACTIVE] == 0:
            continue
        last = si[s, LAST]
        r = -1
        if si[s, CLOSED] != 0 and (everything or now - last > linger):
            r = _closed_reason(si, s)
        elif now - last > idle:
            r = REASON_IDLE
        elif now - si[s, FIRST] > active:
            r = REASON_ACTIVE
        elif everything:
            r = REASON_EOF
        if r >= 0:
            cand[c] = s
            ids[c] = si[s, FLOW_ID]
            reasons[c] = r
            c += 1
    order = np.argsort(ids[:c])
    for j in order:
        _evict(cand[j], reasons[j], si, index, hashes, done, ctl)
    return c


@nb.njit(cache=True)
def rebuild_index(index, keys, hashes, si):
    index[:] = 0
    m = index.shape[0] - 1
    for s in range(si.shape[0]):
        if si[s, ACTIVE]:
            pos = np.int64(hashes[s] & np.uint64(m))
            while index[pos] != 0:
                pos = (pos + 1) & m
            index[pos] = s + 1


@nb.njit(cache=True, inline="always")
def _observe(si, sf, s, x, n, cmin, cmax, cmean, cm2):
    """Add sample ``x`` (the ``n``-th) to a min/max pair in ``si`` and a Welford mean/M2 pair in ``sf``."""
    if x < si[s, cmin]:
        si[s, cmin] = x
    if x > si[s, cmax]:
        si[s, cmax] = x
    delta = x - sf[s, cmean]
    sf[s, cmean] += delta / n
    sf[s, cm2] += delta * (x - sf[s, cmean])


@nb.njit(cache=True)
def run(start, n, buf, status, ts, ip_ver, ip_proto, src_hi, src_lo, dst_hi, dst_lo, sport, dport,
        has_ports, tcp_flags, tcp_seq, ip_len, payload_off, payload_len, payload_cap, vlan, frag, frag_id,
        cap_len, wire_len,
        keys, hashes, si, sf, fsize, fdir, fts, hdir, hlen, hcap, hts, hseq, hdata,
        index, free, done, ctl, fc_key, fc_val, idle, active, linger, sweep_every, heads_per_dir):
    """Feed packets ``start..n`` to the table; returns (next packet, DONE or NEED_SPACE)."""
    n_first = fsize.shape[1]
    n_heads = hdir.shape[1]
    head_bytes = hdata.shape[2]
    for i in range(start, n):
        if status[i] != 0:
            continue
        t = ts[i]
        if t > ctl[C_NOW]:
            ctl[C_NOW] = t
        now = ctl[C_NOW]
        if ctl[C_NEXT_SWEEP] == 0:
            ctl[C_NEXT_SWEEP] = now + sweep_every
        elif now >= ctl[C_NEXT_SWEEP]:
            sweep(now, si, index, hashes, done, ctl, idle, active, linger, False)
            ctl[C_NEXT_SWEEP] = now + sweep_every
        proto = ip_proto[i]
        sp = np.uint64(sport[i])
        dp = np.uint64(dport[i])
        hp = has_ports[i]
        fr = frag[i]
        if fr != 0:  # later fragments carry no ports: take them from the first fragment
            fk0 = src_lo[i] ^ (src_hi[i] * np.uint64(3))
            fk1 = dst_lo[i] ^ (dst_hi[i] * np.uint64(5))
            fk2 = (np.uint64(proto) << np.uint64(32)) | np.uint64(frag_id[i])
            slot = np.int64(_hash5(fk0, fk1, fk2, np.uint64(0), np.uint64(0)) & np.uint64(_FC_MASK))
            if fr == 1 and hp:
                fc_key[slot, 0] = fk0
                fc_key[slot, 1] = fk1
                fc_key[slot, 2] = fk2
                fc_val[slot] = np.int64((sp << np.uint64(16)) | dp) + 1
            elif fr == 2 and fc_val[slot] != 0 and fc_key[slot, 0] == fk0 and fc_key[slot, 1] == fk1 \
                    and fc_key[slot, 2] == fk2:
                v = fc_val[slot] - 1
                sp = np.uint64(v >> 16)
                dp = np.uint64(v & 0xFFFF)
                hp = 1
        a_hi, a_lo, b_hi, b_lo = src_hi[i], src_lo[i], dst_hi[i], dst_lo[i]
        sender_low = (a_hi < b_hi) or (a_hi == b_hi and (a_lo < b_lo or (a_lo == b_lo and sp <= dp)))
        meta_hi = (np.uint64(proto) << np.uint64(56)) | (np.uint64(vlan[i] + 1) << np.uint64(40)) \
            | (np.uint64(ip_ver[i]) << np.uint64(32))
        if sender_low:
            k0, k1, k2, k3 = a_hi, a_lo, b_hi, b_lo
            k4 = meta_hi | (sp << np.uint64(16)) | dp
        else:
            k0, k1, k2, k3 = b_hi, b_lo, a_hi, a_lo
            k4 = meta_hi | (dp << np.uint64(16)) | sp
        h = _hash5(k0, k1, k2, k3, k4)
        s, pos = _lookup(index, keys, hashes, h, k0, k1, k2, k3, k4)
        flags = tcp_flags[i]
        if s >= 0:
            last = si[s, LAST]
            reason = -1
            if si[s, CLOSED] != 0 and ((flags & 0x02 and not flags & 0x10) or t - last > linger):
                reason = _closed_reason(si, s)
            elif t - last > idle:
                reason = REASON_IDLE
            elif t - si[s, FIRST] > active:
                reason = REASON_ACTIVE
            if reason >= 0:
                _evict(s, reason, si, index, hashes, done, ctl)
                s, pos = _lookup(index, keys, hashes, h, k0, k1, k2, k3, k4)
        if s < 0:
            if ctl[C_FREE_TOP] == 0:
                return i, NEED_SPACE
            ctl[C_FREE_TOP] -= 1
            s = free[ctl[C_FREE_TOP]]
            keys[s, 0] = k0
            keys[s, 1] = k1
            keys[s, 2] = k2
            keys[s, 3] = k3
            keys[s, 4] = k4
            hashes[s] = h
            index[pos] = s + 1
            si[s, :] = 0
            sf[s, :] = 0.0
            si[s, FIRST] = t
            si[s, LAST] = t
            si[s, ACTIVE] = 1
            si[s, INIT_LOW] = 1 if sender_low else 0
            si[s, FLOW_ID] = ctl[C_NEXT_ID]
            ctl[C_NEXT_ID] += 1
            ctl[C_ACTIVE_N] += 1
            si[s, IPVER] = ip_ver[i]
            si[s, VLAN] = vlan[i]
            si[s, PROTO] = proto
            si[s, HAS_PORTS] = hp
            si[s, SMIN0] = _BIG
            si[s, SMIN0 + 1] = _BIG
            si[s, IMIN0] = _BIG
            si[s, IMIN0 + 1] = _BIG
            si[s, BIMIN] = _BIG
            si[s, FIRSTFLAGS] = flags if (proto == 6 and fr != 2) else -1
            hdata[s, :, :] = 0
        d = 0 if (1 if sender_low else 0) == si[s, INIT_LOW] else 1
        if k0 == k2 and k1 == k3 and (k4 >> np.uint64(16)) & np.uint64(0xFFFF) == k4 & np.uint64(0xFFFF):
            d = 0  # both endpoints identical: direction cannot be told
        size = ip_len[i]
        pk = si[s, PK0 + d] + 1
        si[s, PK0 + d] = pk
        si[s, BY0 + d] += size
        si[s, PL0 + d] += payload_len[i]
        _observe(si, sf, s, size, pk, SMIN0 + d, SMAX0 + d, F_SMEAN0 + d, F_SM2_0 + d)
        if pk > 1:
            _observe(si, sf, s, max(t - si[s, LTS0 + d], 0), pk - 1, IMIN0 + d, IMAX0 + d, F_IMEAN0 + d, F_IM2_0 + d)
        si[s, LTS0 + d] = t
        tot = si[s, PK0] + si[s, PK0 + 1]
        if tot > 1:
            _observe(si, sf, s, max(t - si[s, LAST], 0), tot - 1, BIMIN, BIMAX, F_BIMEAN, F_BIM2)
        if t > si[s, LAST]:
            si[s, LAST] = t
        fn = si[s, FN]
        if fn < n_first:
            fsize[s, fn] = size
            fdir[s, fn] = d
            fts[s, fn] = t
            si[s, FN] = fn + 1
        pl = payload_len[i]
        if pl > 0:
            si[s, PPK0 + d] += 1
            b = N_HIST - 1
            while pl < _EDGES[b]:
                b -= 1
            si[s, PHIST0 + d * N_HIST + b] += 1
        if pl > 0 and si[s, HD0 + d] < heads_per_dir and si[s, HEADN] < n_heads:
            hn = si[s, HEADN]
            c = min(payload_cap[i], head_bytes)
            hdir[s, hn] = d
            hlen[s, hn] = pl
            hcap[s, hn] = c
            hts[s, hn] = t
            hseq[s, hn] = tcp_seq[i]
            off = payload_off[i]
            for j in range(c):
                hdata[s, hn, j] = buf[off + j]
            si[s, HEADN] = hn + 1
            si[s, HD0 + d] += 1
        if cap_len[i] < wire_len[i]:
            si[s, TRUNC] += 1
        if fr != 0:
            si[s, FRAGS] += 1
        if proto == 6 and fr != 2:
            for bit in range(8):
                if flags & (1 << bit):
                    si[s, TCP0 + bit] += 1
            si[s, FSEEN0 + d] |= flags
            if flags & 0x04:
                si[s, CLOSED] = 2
            elif si[s, CLOSED] == 0 and (si[s, FSEEN0] & 0x01) and (si[s, FSEEN0 + 1] & 0x01):
                si[s, CLOSED] = 1
    return n, DONE


@nb.njit(cache=True)
def flush_all(si, index, hashes, done, ctl, idle, active, linger):
    """End every flow: those past a timeout at the last packet with that reason, the rest ``eof``."""
    return sweep(ctl[C_NOW], si, index, hashes, done, ctl, idle, active, linger, True)


