"""Tunnels in ICMP echo: ptunnel's TCP relay, and IP packets carried as ping payloads.

Why: where pings get out and little else does, tools carry traffic in ICMP echo requests
and replies. The model learnt ICMP as non-VPN from the lab's pings (no trained tunnel runs
over ICMP) and scored the public corpus's ICMP tunnel near zero; both kinds below show
their framing in every packet, so a signature names them.

What is checked, in echo requests and replies (ICMP types 8 and 0, ICMPv6 128 and 129);
the stored head starts with the 8-byte ICMP header (type, code, checksum, identifier,
sequence number):

* **ptunnel** (ptunnel 0.72, ptunnel-ng; the lab's ``ptunnel``): after the ICMP header a
  28-byte header, a 32-bit magic (0xd5200880 in ptunnel, 0xdeadc0de by default in
  ptunnel-ng, any value with ``--magic``), the destination address and port, a state word
  (0x40000000 from the client, 0x80000000 from the proxy, plus start, ack, data, close or
  authenticate: 0-4), an acknowledgement, the data length, a sequence number and the
  tunnel id, which is also the ICMP identifier. Named when at least two packets carry one
  magic, a valid state, a data length that fits, and their ICMP identifier again as the
  tunnel id (random pings do all of that once in 2^48 or less);
* **IP in echo** (icmptunnel and the like; the public corpus's ``icmp-tunnel.pcap``): the
  echo payload is an IPv4 or IPv6 packet whose length field matches the payload. Named
  when at least three echo packets, and most of the flow's, carry one.

Not seen: tunnels that encrypt the echo payload (Hans, some ptunnel forks), which keep no
readable framing; ICMP tunnels over other message types.
"""

from __future__ import annotations

import numpy as np

from classifier.signatures._base import BatchView, Flow, Packet, Verdict, be16, be32, plural, slots_be16
from classifier.signatures.tunnels import inner_ip

ICMP, ICMPV6 = 1, 58
ECHO = {ICMP: (0, 8), ICMPV6: (128, 129)}  # reply, request
ICMP_HEADER = 8
PTUNNEL_HEADER = 28
PTUNNEL_MAGICS = {0xD5200880: "ptunnel's", 0xDEADC0DE: "ptunnel-ng's default"}
FROM_CLIENT, FROM_PROXY = 0x40000000, 0x80000000
PTUNNEL_STATES = ("start", "ack", "data", "close", "authenticate")
START = PTUNNEL_STATES.index("start")
MIN_PTUNNEL, MIN_IP = 2, 3


def candidates(v: BatchView) -> np.ndarray:
    """ICMP flows with an echo packet whose bytes 4-5 (identifier) recur at 34-35 (ptunnel's
    tunnel id) or whose payload opens with an IPv4 or IPv6 header whose length field fills it.
    Only the batch's ICMP rows are read: most batches hold few."""
    hit = np.zeros(v.n, bool)
    rows = np.flatnonzero((v.proto == ICMP) | (v.proto == ICMPV6))
    d, caps = v.data[rows], v.caps[rows]
    echo = np.isin(d[:, :, 0], [t for types in ECHO.values() for t in types]) & v.valid[rows]
    tunnel_id = ICMP_HEADER + 26
    ident = (d[:, :, 4] == d[:, :, tunnel_id]) & (d[:, :, 5] == d[:, :, tunnel_id + 1]) & \
        (caps >= ICMP_HEADER + PTUNNEL_HEADER)
    version = d[:, :, ICMP_HEADER] >> 4
    stated = np.where(version == 4, slots_be16(d, ICMP_HEADER + 2), slots_be16(d, ICMP_HEADER + 4) + 40)
    unfilled = v.lens[rows].astype(np.int64) - ICMP_HEADER - stated
    ip = np.isin(version, (4, 6)) & (unfilled >= 0) & (unfilled <= 4) & (caps >= ICMP_HEADER + 20)
    hit[rows] = (echo & (ident | ip)).any(axis=1)
    return hit


def _echo(f: Flow) -> list[Packet]:
    types = ECHO.get(f.proto, ())
    return [p for p in f.packets if len(p.data) >= ICMP_HEADER and p.data[0] in types]


def _ptunnel(p: Packet) -> tuple[int, int, int] | None:
    """(magic, sender flag, state) of a ptunnel packet, or None."""
    d = p.data
    if len(d) < ICMP_HEADER + PTUNNEL_HEADER:
        return None
    state = be32(d, ICMP_HEADER + 12)
    sender, kind = state & 0xC0000000, state & 0x3FFFFFFF
    data_len = be32(d, ICMP_HEADER + 20)
    if sender not in (FROM_CLIENT, FROM_PROXY) or kind >= len(PTUNNEL_STATES):
        return None
    if ICMP_HEADER + PTUNNEL_HEADER + data_len > p.len or be16(d, ICMP_HEADER + 26) != be16(d, 4):
        return None
    return be32(d, ICMP_HEADER), sender, kind


def check(f: Flow) -> Verdict | None:
    echo = _echo(f)
    if not echo:
        return None
    relay = [h for h in map(_ptunnel, echo) if h is not None]
    magics = {m for m, _, _ in relay}
    if len(relay) >= MIN_PTUNNEL and len(magics) == 1:
        (magic,) = magics
        known = PTUNNEL_MAGICS.get(magic)
        sides = {s for _, s, _ in relay}
        kinds = sorted({k for _, _, k in relay})
        states = [PTUNNEL_STATES[k] for k in kinds]
        evidence = (f"ptunnel tcp over icmp echo: {plural(len(relay), 'packet')} behind a ptunnel header, magic "
                    f"{magic:#010x}" + (f" ({known})" if known else "") + ", the ICMP identifier repeated as the "
                    f"tunnel id, states {'/'.join(states)}, from "
                    + ("client and proxy" if len(sides) == 2 else "client" if FROM_CLIENT in sides else "proxy"))
        return Verdict("ptunnel", 0.95 if len(sides) == 2 else 0.9, evidence, midflow=START not in kinds)
    found = [k for k in (inner_ip(p.data[ICMP_HEADER:], p.len - ICMP_HEADER, fills=True) for p in echo) if k]
    if len(found) >= MIN_IP and 2 * len(found) > len(f.packets):
        return Verdict("icmp-tunnel", 0.9, f"ip over icmp echo: {len(found)} of {plural(len(f.packets), 'packet')} "
                       f"carry an {'/'.join(sorted(set(found)))} packet as their echo payload, its length "
                       "field matching", midflow=False)
    return None
