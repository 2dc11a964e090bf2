"""Byte statistics of the payload heads: how random a flow's first payload looks.

Why: a fully encrypted protocol (Shadowsocks, VMess, obfs4, WireGuard, OpenVPN with
tls-crypt) starts with bytes indistinguishable from random, while almost everything
else starts with a header a person could read or a parser could name (HTTP and SSH
banners, TLS and DTLS records, DNS, RTP). Wu et al. (USENIX Security 2023) show the
Great Firewall of China finds fully encrypted proxies from exactly this: the mean
number of set bits per byte of the first payload (random bytes: 4) and how much of it
is printable ASCII. These numbers let the model see it without any payload byte
leaving the engine: the heads stay in memory, only the statistics go to the flow table.

The heads also show whether a tunnel hides what it carries. A cleartext encapsulation
(6in4, IP-in-IP, plain GRE, Teredo, AYIYA, VXLAN) puts the inner packet's IP header a few
bytes into every payload, readable, with a length field that matches the bytes that
follow; an encrypting tunnel (ESP, WireGuard, OpenVPN, PPTP's MPPE) never does.

Everything is vectorized over all heads of a batch (``n x 16 x 64`` bytes).
"""

from __future__ import annotations

import numpy as np

from classifier.flows.batch import HEAD_PACKETS_PER_DIR, PayloadHeads
from classifier.flows.schema import BURSTS, HEAD_STAT_COLUMNS, HEAD_STAT_MIN_PACKETS

#: set bits of every byte value
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)
#: printable ASCII (space to tilde)
_PRINTABLE = np.zeros(256, np.uint8)
_PRINTABLE[0x20:0x7F] = 1


def tls_record_start(data: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Slots whose payload starts with a TLS (type 20-23, version 3.0-3.4) or DTLS (fe fd / fe ff) record header."""
    t, v0, v1 = data[..., 0], data[..., 1], data[..., 2]
    content = (t >= 20) & (t <= 23)
    tls = (v0 == 3) & (v1 <= 4)
    dtls = (v0 == 0xFE) & ((v1 == 0xFD) | (v1 == 0xFF))
    return (caps >= 3) & content & (tls | dtls)


#: Largest offset at which an inner IP header is looked for. Encapsulation headers in use
#: are short: 0 (6in4, IP-in-IP, Teredo), 4 to 16 (GRE and its options, L2TP with PPP),
#: 22 (VXLAN/Geneve: 8 + an Ethernet header), 44 (AYIYA with an IPv6 identity).
MAX_INNER_OFFSET = 48


#: PPP protocol numbers of IPv4 (0x0021) and IPv6 (0x0057); with protocol-field compression
#: (RFC 1661) only their low byte is sent.
PPP_IP_PROTOCOLS = (0x21, 0x57)


def _inner_ip_header(data: np.ndarray, lens: np.ndarray, caps: np.ndarray,
                     valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Valid slots whose payload holds a cleartext IPv4 or IPv6 header that accounts for the rest of it,
    and which of those put a PPP protocol field right before it.

    At some offset ``o``: an IPv4 header (first byte 0x45-0x4f: version 4, at least 20
    bytes of header) whose total length is the payload's wire length minus ``o``, or an
    IPv6 header whose payload length is that minus 40. Random bytes pass by chance with
    probability about 1e-6 per offset, so one match per packet is evidence enough. The
    length bytes must be stored.

    PPP framing (the byte before the inner header is 0x21 or 0x57, and the one before that,
    when there is one, 0x00 or the PPP control byte 0x03) is what L2TP and PPTP carry: a
    dial-up style tunnel of the VPN family, where cleartext encapsulation that is not a
    VPN (VXLAN, GRE, Teredo, 6in4) puts an EtherType or nothing there.

    Cost: only offsets whose version byte and high length byte fit (about one in 400 of
    random data) are looked at further, in one gather, rather than every offset of every slot.
    """
    found = np.zeros(caps.shape, bool)
    ppp = np.zeros(caps.shape, bool)
    slots = np.flatnonzero(valid.reshape(-1))
    if slots.size == 0:
        return found, ppp
    span = min(MAX_INNER_OFFSET + 1, data.shape[-1] - 5)
    heads = data.reshape(-1, data.shape[-1])[slots]
    wire = lens.reshape(-1)[slots].astype(np.int64)
    high = np.minimum(wire >> 8, 255).astype(np.uint8)[:, None]  # length fields cannot exceed it
    first = heads[:, :span]
    v4 = (first >= 0x45) & (first <= 0x4F) & (heads[:, 2:span + 2] <= high)
    v6 = ((first >> 4) == 6) & (heads[:, 4:span + 4] <= high)
    row, off = np.nonzero(v4 | v6)
    b0 = heads[row, off]
    total4 = heads[row, off + 2].astype(np.int64) << 8 | heads[row, off + 3]
    payload6 = heads[row, off + 4].astype(np.int64) << 8 | heads[row, off + 5]
    rest = wire[row] - off
    stored = caps.reshape(-1)[slots][row].astype(np.int64) - off
    match = np.where(b0 < 0x50, (total4 == rest) & (stored >= 4), (payload6 + 40 == rest) & (stored >= 6))
    found.reshape(-1)[slots[row[match]]] = True
    proto = np.where(off >= 1, heads[row, np.maximum(off - 1, 0)], 0)
    before = np.where(off >= 2, heads[row, np.maximum(off - 2, 0)], 0)
    framed = match & np.isin(proto, PPP_IP_PROTOCOLS) & ((off == 1) | (before == 0x00) | (before == 0x03))
    ppp.reshape(-1)[slots[row[framed]]] = True
    return found, ppp


#: STUN's magic cookie (RFC 5389), bytes 4-7 of every STUN message.
STUN_COOKIE = bytes.fromhex("2112a442")
#: Where a STUN message may start in a payload: 0 (bare, over UDP or TURN over TCP), 2
#: (behind RFC 4571's length: ICE over TCP), 4 (inside a TURN ChannelData frame).
STUN_OFFSETS = (0, 2, 4)


def _stun_message(data: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Slots whose payload holds a STUN message header at one of ``STUN_OFFSETS``: the
    first two bits zero and the magic cookie in place.

    Why: calls (ICE connectivity and consent checks, TURN relays) put STUN messages on
    the very flow that carries their encrypted media, so a call framed like a tunnel
    still shows one now and then; a VPN tunnel never carries STUN in the clear. Random
    bytes match with probability 2^-34 per offset.
    """
    found = np.zeros(caps.shape, bool)
    for o in STUN_OFFSETS:
        # only heads whose byte o+4 opens the cookie (one in 256 random ones) are read further
        flow, slot = np.nonzero(data[..., o + 4] == STUN_COOKIE[0])
        heads = data[flow, slot]
        hit = ((heads[:, o] >> 6) == 0) & (caps[flow, slot] >= o + 20)
        for i in range(1, len(STUN_COOKIE)):
            hit &= heads[:, o + 4 + i] == STUN_COOKIE[i]
        found[flow[hit], slot[hit]] = True
    return found


#: Offsets at which a 16-bit length field is looked for: 0 (OpenVPN over TCP, PPTP
#: control), 2 (TURN ChannelData), 3 (TLS records), 4 (OpenConnect's CSTP), up to 8.
MAX_LENGTH_OFFSET = 8
#: Bytes a length field may fall short of the rest of the packet: stream framings pad
#: to 4 bytes (TURN over TCP) or count a short fixed header after the field (CSTP: 2).
LENGTH_SLACK = 3


def _length_field(data: np.ndarray, lens: np.ndarray, caps: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per slot and offset ``o`` (0..``MAX_LENGTH_OFFSET``): does the big-endian 16-bit field at
    ``o`` count the bytes after it, to within ``LENGTH_SLACK``? Shape ``(n, k, offsets)``.

    Why: where a framing puts its length field tells framings apart that are otherwise
    alike, each a small header before encrypted bytes: OpenVPN over TCP at 0, a TURN
    relay's ChannelData at 2 (a relayed call, not a VPN), TLS records at 3, CSTP at 4.
    Random bytes match at one offset about once in 16,000 packets. At least 4 bytes must
    follow the field, so that empty and tiny packets do not match by their zeros.
    """
    span = min(MAX_LENGTH_OFFSET + 1, data.shape[-1] - 1)  # heads are HEAD_BYTES (64) wide
    off = np.arange(span, dtype=np.int32)
    field = data[..., :span].astype(np.int32) << 8 | data[..., 1:span + 1]  # slices, not a gather
    rest = lens.astype(np.int32)[..., None] - off - 2
    gap = (rest - field).view(np.uint32)  # a negative gap wraps to a huge one: one comparison
    return (gap <= LENGTH_SLACK) & (rest >= 4) & (caps.astype(np.int32)[..., None] >= off + 2) & valid[..., None]


#: Leading bytes of each payload head searched for repeated fields and counters: tunnel
#: headers are short (ESP 8, WireGuard 16, OpenVPN 8 to 12, DTLS 13, GRE 16).
FRAME_BYTES = 32


#: Flows per step of ``_framing``: its temporaries (about 4 KiB a flow) stay a few tens of
#: MiB when a whole flow table is finalised at once at the end of a capture.
FRAME_CHUNK = 8192


def _framing(data: np.ndarray, caps: np.ndarray, dirs: np.ndarray, valid: np.ndarray) -> dict[int, tuple]:
    """``_framing_rows`` over the flows in steps of ``FRAME_CHUNK`` (bounded memory)."""
    parts = [_framing_rows(data[i:i + FRAME_CHUNK], caps[i:i + FRAME_CHUNK], dirs[i:i + FRAME_CHUNK],
                           valid[i:i + FRAME_CHUNK]) for i in range(0, max(len(dirs), 1), FRAME_CHUNK)]
    return {side: tuple(np.concatenate([p[side][j] for p in parts]) for j in range(3)) for side in (0, 1)}


def _framing_rows(data: np.ndarray, caps: np.ndarray, dirs: np.ndarray, valid: np.ndarray) -> dict[int, tuple]:
    """Per direction: repeating byte positions and the best counter share among its heads.

    Both look at pairs of one direction's heads that follow each other among the heads
    with the same first byte (the message type of most framed protocols), positions <
    ``FRAME_BYTES`` stored in both: a protocol that mixes message kinds counts within
    each kind, so WireGuard's handshake messages do not break the run of its data
    messages' counter, nor a call's STUN checks that of its RTP packets. ``repeat``:
    positions whose byte is the same as in the previous head of its kind in at least half
    of the pairs (a majority, so that the handshake packets before a tunnel's data packets
    do not hide its header). ``counter``: the largest share, over positions, of pairs in
    which the byte grows by exactly one (mod 256); ``offset``: the first position with
    that share, when it is at least half (else NaN). Where a counter sits tells a
    tunnel's header (ESP's sequence number ends at byte 7, WireGuard's counter starts at
    byte 8) from a media header (RTP's sequence number ends at byte 3). Random payloads
    rarely share a first byte, so they make few pairs and show neither. They need two or
    three heads (the caller marks too few invalid: ``HEAD_STAT_MIN_PACKETS``).

    One pass for both directions: the slots are sorted by (direction, first byte,
    arrival), so consecutive heads of one kind become neighbours, and each direction's
    pair counts are one batched matrix product over the pair axis.
    Returns ``{direction: (repeat, counter, offset)}``.
    """
    n, k = dirs.shape
    w = min(FRAME_BYTES, data.shape[-1])
    rows = np.arange(n)[:, None]
    side_of = np.where(valid, dirs, 2).astype(np.int64)  # 2: an empty slot, sorted last
    kind = np.where(caps > 0, data[:, :, 0], 0).astype(np.int64)  # the first byte
    order = np.argsort((side_of * 256 + kind) * k + np.arange(k)[None, :], axis=1, kind="stable")
    heads = data[rows, order, :w]  # (n, k, w)
    d = side_of[rows, order]
    kind = kind[rows, order]
    stored = caps[rows, order][:, :, None] > np.arange(w)[None, None, :]
    both = stored[:, 1:, :] & stored[:, :-1, :]
    same = ((heads[:, 1:, :] == heads[:, :-1, :]) & both).astype(np.float32)
    step = (((heads[:, 1:, :] - heads[:, :-1, :]) == 1) & both).astype(np.float32)  # uint8 wraps 0xff -> 0x00
    out: dict[int, tuple] = {}
    for side in (0, 1):
        pairs = ((d[:, 1:] == side) & (d[:, :-1] == side) & (kind[:, 1:] == kind[:, :-1]))
        pairs = pairs.astype(np.float32)[:, None, :]  # (n, 1, k-1)
        n_pairs = pairs.sum(axis=2).astype(np.float64)  # (n, 1): whole numbers below 16, exact in float32
        same_n = np.matmul(pairs, same)[:, 0, :]  # (n, w): pairs in which each position repeats
        grow_n = np.matmul(pairs, step)[:, 0, :]
        repeat = ((2 * same_n >= n_pairs) & (same_n > 0)).sum(axis=1).astype(np.float64)
        counter = grow_n.max(axis=1).astype(np.float64) / np.maximum(n_pairs[:, 0], 1)
        offset = np.where(counter >= 0.5, grow_n.argmax(axis=1), np.nan)
        out[side] = (repeat, counter, offset)
    return out


def head_statistics(heads: PayloadHeads) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per flow and direction: ``{column: (values, valid)}`` for the schema's ``HEAD_STAT_COLUMNS``.

    * ``first_payload_bits``: set bits per stored byte of the direction's first
      payload-carrying packet (random data: 4.0; text: about 3.3; zero padding: low);
    * ``first_payload_printable``: fraction of those bytes that are printable ASCII
      (random data: 0.37);
    * ``payload_bits``: set bits per byte over all of the direction's stored heads;
    * ``tls_record_frac``: fraction of the direction's stored heads that begin with a
      TLS or DTLS record header;
    * ``inner_header_frac``: fraction of the direction's stored heads that carry a cleartext
      inner IP header (``_inner_ip_header``): near 1 for cleartext encapsulation;
    * ``inner_ppp_frac``: fraction of the direction's stored heads whose inner header
      follows a PPP protocol field (L2TP and PPTP without encryption);
    * ``repeat_bytes``, ``counter_frac``, ``counter_offset``: the direction's framing
      (``_framing``): byte positions that repeat from head to head, how steadily one of
      them counts up, and where it sits;
    * ``stun_frac``: fraction of the direction's stored heads that hold a STUN message
      (``_stun_message``): checks and relay control on a call's media flow;
    * ``length_frac``, ``length_offset``: how many of the direction's heads carry a length
      field counting the rest of the packet at one offset, and which (``_length_field``).

    A direction without stored payload is invalid (null in the flow table); the framing
    columns need more payload packets of the direction (``HEAD_STAT_MIN_PACKETS``), and a
    statistic with no value (NaN: no counter) is null as well.
    """
    n, k = heads.dirs.shape
    slot_ok = (np.arange(k)[None, :] < heads.count[:, None]) & (heads.caps > 0)
    # the heads are zero padded (PayloadHeads), and a zero byte has no set bit and is not
    # printable, so whole slots can be summed without masking the padding
    bits = _POPCOUNT[heads.data].sum(axis=2, dtype=np.int64)
    printable = _PRINTABLE[heads.data].sum(axis=2, dtype=np.int64)
    caps = heads.caps.astype(np.int64)
    tls = tls_record_start(heads.data, heads.caps)
    inner, inner_ppp = _inner_ip_header(heads.data, heads.lens, heads.caps, slot_ok)
    framing = _framing(heads.data, heads.caps, heads.dirs, slot_ok)
    length = _length_field(heads.data, heads.lens, heads.caps, slot_ok)
    stun = _stun_message(heads.data, heads.caps)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rows = np.arange(n)
    for d, name in ((0, "src2dst"), (1, "dst2src")):
        m = slot_ok & (heads.dirs == d)
        first = np.argmax(m, axis=1)
        first_caps = np.maximum(caps[rows, first], 1)
        repeat, counter, offset = framing[d]
        n_bytes = (caps * m).sum(axis=1)
        n_slots = m.sum(axis=1)
        length_n = (length & m[..., None]).sum(axis=1)  # (n, offsets)
        length_frac = length_n.max(axis=1, initial=0) / np.maximum(n_slots, 1)
        values = {
            "first_payload_bits": bits[rows, first] / first_caps,
            "first_payload_printable": printable[rows, first] / first_caps,
            "payload_bits": (bits * m).sum(axis=1) / np.maximum(n_bytes, 1),
            "tls_record_frac": (tls & m).sum(axis=1) / np.maximum(n_slots, 1),
            "inner_header_frac": (inner & m).sum(axis=1) / np.maximum(n_slots, 1),
            "inner_ppp_frac": (inner_ppp & m).sum(axis=1) / np.maximum(n_slots, 1),
            "repeat_bytes": repeat,
            "counter_frac": counter,
            "counter_offset": offset,
            "stun_frac": (stun & m).sum(axis=1) / np.maximum(n_slots, 1),
            "length_frac": length_frac,
            "length_offset": np.where(length_frac >= 0.5, length_n.argmax(axis=1), np.nan),
        }
        out.update({f"{name}_{col}": (values[col], (n_slots >= HEAD_STAT_MIN_PACKETS[col]) & ~np.isnan(values[col]))
                    for col in HEAD_STAT_COLUMNS})
    return out


def payload_bursts(heads: PayloadHeads, payload_packets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The flow's first payload bursts: ``(values, count)``, ``values`` (n, ``BURSTS``) int32.

    A burst is a run of payload-carrying packets in one direction; its value is their
    payload bytes, positive from the initiator, negative from the responder. Why: a
    handshake is a few bursts of telling sizes (a TLS ClientHello of 500-2000 bytes, the
    server's certificate flight, the client's short Finished), and a proxy or tunnel that
    carries TLS shows a second such sequence right after its own (Xue et al., USENIX
    Security 2024, "encapsulated TLS handshakes"). Bursts, unlike packets, do not depend
    on how TCP cut the stream into segments or where ACKs fell.

    Only bursts the heads show in full are listed. The heads keep
    ``HEAD_PACKETS_PER_DIR`` payload packets per direction; ``payload_packets`` (n, 2)
    says how many each direction sent. A direction that sent more has packets the
    heads never saw, so the order is known only up to the slot of its last head, and
    the burst holding that slot may go on past it: it is left out, and all after it.
    """
    n, k = heads.dirs.shape
    slot = np.arange(k)[None, :]
    valid = slot < heads.count[:, None]
    d = heads.dirs.astype(np.int64)
    cut = np.full(n, k, np.int64)
    for side in (0, 1):
        mine = valid & (d == side)
        last_head = (np.cumsum(mine, axis=1) == HEAD_PACKETS_PER_DIR) & mine
        unseen = last_head.any(axis=1) & (payload_packets[:, side] > HEAD_PACKETS_PER_DIR)
        cut = np.where(unseen, np.minimum(cut, np.argmax(last_head, axis=1)), cut)
    prefix = valid & (slot <= cut[:, None])
    starts = prefix.copy()
    starts[:, 1:] &= d[:, 1:] != d[:, :-1]
    burst = np.cumsum(starts, axis=1) - 1
    n_bursts = burst.max(axis=1, where=prefix, initial=-1) + 1
    count = np.clip(n_bursts - (cut < k), 0, BURSTS)
    take = prefix & (burst < BURSTS)
    flat = np.broadcast_to(np.arange(n)[:, None] * BURSTS, (n, k))[take] + burst[take]
    signed = np.where(d == 0, 1, -1) * heads.lens.astype(np.int64)
    values = np.bincount(flat, weights=signed[take], minlength=n * BURSTS).reshape(n, BURSTS)
    return values.astype(np.int32), count.astype(np.int32)
