"""Coalesce TCP segments as a capture made on an end host shows them.

Why: a capture taken on one of the hosts of a connection (Wireshark or tcpdump on a laptop,
a server, a VPN client) sees TCP before the NIC cuts what the host sends into segments
(TSO/GSO) and after the NIC or the kernel merged what it received (GRO/LRO): bulk data shows
as packets of up to 64 KB, not MTU-sized ones, and with fewer ACKs between them. A tap or
a mirror port sees the wire. The lab captures the wire (docs/lab.md), so a model trained
on it meets a host's captures only through this transform, which merges what GRO would
merge: consecutive data segments of one direction of one connection, in sequence, close in
time, up to 64 KB, the run ending at a segment that carries PSH (GRO flushes there).

It works on decoded packet columns (``classifier.packets.batch.COLUMNS``), one batch at a
time, without reading payload bytes: a merged packet keeps the first segment's bytes (its
payload head) and takes the sizes of all of them, as a host capture's packet does.
"""

from __future__ import annotations

import numpy as np

from classifier.packets.batch import PacketStatus

#: Largest IP datagram GRO builds (the IPv4 total length field's limit).
MAX_MERGED = 65535
#: Segments further apart than this are not merged: a NIC hands the kernel what arrived in
#: one interrupt, tens of microseconds at most (and a TSO burst leaves back to back).
DEFAULT_GAP_NS = 100_000

_SYN_FIN_RST_URG = 0x02 | 0x01 | 0x04 | 0x20
_PSH = 0x08


def coalesce_segments(cols: dict[str, np.ndarray], gap_ns: int = DEFAULT_GAP_NS) -> np.ndarray:
    """Merge TCP data segments as GRO would, in place; return the indices of the rows kept.

    ``cols`` are one batch's decoded columns. A merged row is its run's first segment with
    the run's payload (``payload_len``, ``ip_len``, ``wire_len`` grown by the others'
    payload, and ``cap_len`` too unless a snapshot length had cut the first segment), the
    run's TCP flags ORed, and the first segment's time and payload head (``payload_cap``:
    the flow engine reads no byte beyond the head).
    The caller takes the returned rows of every column (packets that are not data segments,
    and segments that start a run, in capture order).
    """
    n = len(cols["ts"])
    if n == 0:
        return np.arange(0)
    flags = cols["tcp_flags"].astype(np.int64)
    data = ((cols["ip_proto"] == 6) & (cols["payload_len"] > 0) & ((flags & _SYN_FIN_RST_URG) == 0)
            & (cols["status"] == PacketStatus.OK) & (cols["frag"] == 0))
    seg = np.flatnonzero(data)
    if len(seg) < 2:
        return np.arange(n)
    keys = [cols[k][seg] for k in ("src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport", "vlan")]
    ts = cols["ts"][seg].astype(np.int64)
    order = np.lexsort([ts, *keys[::-1]])  # by connection direction, then time
    seg = seg[order]
    ts = ts[order]
    same_dir = np.ones(len(seg) - 1, dtype=bool)
    for k in keys:
        ks = k[order]
        same_dir &= ks[1:] == ks[:-1]
    plen = cols["payload_len"][seg].astype(np.int64)
    seq = cols["tcp_seq"][seg].astype(np.int64)
    in_order = (seq[:-1] + plen[:-1]) % (1 << 32) == seq[1:]
    joins = (same_dir & in_order & (ts[1:] - ts[:-1] <= gap_ns)
             & ((flags[seg[:-1]] & _PSH) == 0))
    run = np.concatenate([[0], np.cumsum(~joins)])
    # cap a merged datagram at MAX_MERGED bytes: a run is cut into pieces of ``room`` bytes of
    # payload, counted from where each segment starts, so a piece ends at most one segment past it
    header = (cols["ip_len"][seg] - cols["payload_len"][seg]).astype(np.int64)
    starts = np.flatnonzero(np.concatenate([[True], ~joins]))
    room = MAX_MERGED - header[starts] - np.maximum.reduceat(plen, starts)
    before = np.cumsum(plen) - plen  # payload before each segment, over all runs
    within = before - before[starts][run]
    piece = within // np.maximum(room[run], 1)
    group = np.concatenate([[0], np.cumsum((run[1:] != run[:-1]) | (piece[1:] != piece[:-1]))])
    heads = np.flatnonzero(np.concatenate([[True], group[1:] != group[:-1]]))
    if len(heads) == len(seg):
        return np.arange(n)
    added = np.add.reduceat(plen, heads) - plen[heads]
    merged_flags = np.bitwise_or.reduceat(flags[seg], heads)
    rows = seg[heads]
    whole = cols["cap_len"][rows] == cols["wire_len"][rows]  # a host captures merged frames whole
    for name in ("payload_len", "ip_len", "wire_len"):
        cols[name][rows] = (cols[name][rows] + added).astype(cols[name].dtype)
    cols["cap_len"][rows[whole]] = cols["wire_len"][rows[whole]]
    cols["tcp_flags"][rows] = merged_flags.astype(cols["tcp_flags"].dtype)
    keep = np.ones(n, dtype=bool)
    keep[seg] = False
    keep[rows] = True
    return np.flatnonzero(keep)
