"""IPsec data plane: ESP (IP protocol 50), AH (51) and UDP-encapsulated ESP.

ESP (RFC 4303) starts with the SPI and a 32-bit sequence number that starts at 1 and
grows by one per packet (so a first sequence number above 2 means the SA's start was
not captured: mid-flow); each direction uses its own SA, so its own SPI. AH (RFC 4302)
has next header, payload length (in 32-bit words minus 2), two reserved zero bytes,
SPI and sequence number. The protocol number alone proves nothing (anything can be
sent with protocol 50), so a flow matches when its SPI stays constant per direction
while the sequence numbers climb; a flow of a single packet is reported with a low
confidence and says so.

UDP-encapsulated ESP (RFC 3948) mid-flow, when no IKE message was seen on the flow,
is matched by the same SPI + sequence pattern over at least three packets of a direction.
"""

from __future__ import annotations

import numpy as np

from classifier.signatures._base import UDP, BatchView, Flow, Verdict, be32
from classifier.signatures.ike import esp_pattern

NAME = "ipsec-esp"
ESP, AH = 50, 51
_TUNNEL_NEXT = {4: "IPv4", 41: "IPv6"}


def candidates(v: BatchView) -> np.ndarray:
    ipsec = (v.proto == ESP) | (v.proto == AH)
    if v.n == 0:
        return ipsec
    # ESP-in-UDP mid-flow: the first two packets of a direction share 4 bytes (the SPI)
    # and the next 4 bytes (sequence number) grow by a little.
    udp = np.zeros(v.n, bool)
    for d in (0, 1):
        a, b = v.nth_slot(d, 0), v.nth_slot(d, 1)
        ha, hb = v.slot_bytes(a, 0, 8).astype(np.int64), v.slot_bytes(b, 0, 8).astype(np.int64)
        spi_eq = (ha[:, :4] == hb[:, :4]).all(axis=1) & (ha[:, :4] != 0).any(axis=1)
        sa = (ha[:, 4] << 24) | (ha[:, 5] << 16) | (ha[:, 6] << 8) | ha[:, 7]
        sb = (hb[:, 4] << 24) | (hb[:, 5] << 16) | (hb[:, 6] << 8) | hb[:, 7]
        step = sb - sa
        udp |= (a >= 0) & (b >= 0) & spi_eq & (step > 0) & (step <= 64)
    return ipsec | (v.udp & udp)


def check(f: Flow) -> Verdict | None:
    if f.proto == ESP:
        return _esp(f)
    if f.proto == AH:
        return _ah(f)
    if f.proto == UDP:
        return _esp_in_udp(f)
    return None


def _esp(f: Flow) -> Verdict | None:
    pkts = [p for p in f.packets if len(p.data) >= 8]
    if not pkts or len(pkts) < len(f.packets):
        return None
    # Protocol 50 is ESP's own number, so test SPIs in the reserved range 1..255 count.
    ok, run = esp_pattern(pkts, min_spi=1)
    if not ok:
        return None
    spis = len({be32(p.data, 0) for p in pkts})  # SAs seen
    first_seq = min(be32(p.data, 4) for p in pkts)
    if run >= 3:
        conf, how = 0.97, f"SPI constant and sequence rising over {run} packets"
    elif run == 2:
        conf, how = 0.9, "SPI constant and sequence rising over 2 packets"
    else:
        if first_seq == 0 or first_seq > 1 << 24:
            return None
        conf, how = 0.6, f"single packet per direction (sequence {first_seq}), not confirmed by a second"
    dirs = "both directions" if len(f.directions) == 2 else "one direction"
    ev = f"ipsec-esp ip proto 50: {len(pkts)} packets, {spis} SPI{'s' if spis > 1 else ''} ({dirs}), {how}"
    return Verdict(NAME, conf, ev, midflow=first_seq > 2)


def _ah(f: Flow) -> Verdict | None:
    pkts = []
    for p in f.packets:
        d = p.data
        if len(d) < 12 or d[2:4] != b"\0\0":
            return None
        icv_len = (d[1] + 2) * 4 - 12
        if icv_len < 0 or (d[1] + 2) * 4 > p.len:
            return None
        pkts.append(p)
    if not pkts:
        return None
    shifted = [type(p)(p.dir, p.len, p.data[4:12], p.ts, p.seq) for p in pkts]
    ok, run = esp_pattern(shifted, min_spi=1)
    if not ok:
        return None
    seq0 = min(be32(p.data, 8) for p in pkts)
    if run < 2 and (seq0 == 0 or seq0 > 1 << 24):
        return None
    conf = 0.97 if run >= 3 else 0.9 if run == 2 else 0.6
    nxt = {p.data[0] for p in pkts}
    mode = "tunnel mode" if nxt <= set(_TUNNEL_NEXT) else f"next header {'/'.join(map(str, sorted(nxt)))}"
    how = f"SPI constant and sequence rising over {run} packets" if run >= 2 else "single packet per direction"
    ev = f"ipsec-ah ip proto 51: {len(pkts)} packets, reserved zero, {mode}, {how}"
    return Verdict("ipsec-ah", conf, ev, midflow=seq0 > 2)


def _esp_in_udp(f: Flow) -> Verdict | None:
    pkts = [p for p in f.packets if not (p.len == 1 and p.data == b"\xff")]
    if len(pkts) < 3 or any(p.len < 16 or len(p.data) < 8 or p.data.startswith(b"\0\0\0\0") for p in pkts):
        return None
    ok, run = esp_pattern(pkts, max_sas=1)
    if not ok or run < 3:
        return None
    spis = {p.dir: be32(p.data, 0) for p in pkts}
    if len(spis) == 2 and spis[0] == spis[1]:
        return None  # one SPI shared by both directions is not an SA pair
    # The SPI+sequence shape is also the shape of OpenVPN P_DATA_V2 with AEAD (opcode 9,
    # small peer id, packet id): off the NAT-T ports, leave that reading to openvpn.py.
    first = pkts[0].data
    if not f.has_port(4500) and first[0] >> 3 == 9 and first[1] == 0:
        return None
    conf = 0.9 if len(spis) == 2 else 0.85
    seq0 = min(be32(p.data, 4) for p in pkts)
    ev = (f"ipsec-esp udp-encapsulated: {len(pkts)} packets, {len(spis)} SPI{'s' if len(spis) > 1 else ''}, "
          f"sequence rising over {run} packets; no IKE seen on this flow")
    return Verdict(NAME, conf, ev, midflow=seq0 > 2)
