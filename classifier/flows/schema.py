"""The flow table schema: one row per bidirectional flow.

This is the contract every later stage reads (signatures, model, registry, reports,
batch, live). Each field carries its description in the Arrow field metadata, and
``docs/schema.md`` documents the same columns (a test keeps the two in step).

Direction: ``src`` is the initiator, the sender of the first packet seen of the flow;
``src2dst`` counts packets it sent, ``dst2src`` those of the responder.
Sizes are IP-layer bytes (the IP datagram as on the wire, link headers and
Ethernet padding excluded); payload bytes are what follows the TCP/UDP/SCTP header,
or the whole IP payload for protocols without ports (ESP, AH, GRE, ICMP, ...).
"""

from __future__ import annotations

import pyarrow as pa

#: Number of first packets whose size, direction and inter-arrival time are kept.
FIRST_PACKETS = 10

#: Payload bursts (runs of payload packets in one direction) listed per flow.
BURSTS = 8

_TS = pa.timestamp("ns", tz="UTC")


def _f(name: str, type_: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


#: Byte statistics of the payload heads per direction (``classifier/flows/head_stats.py``),
#: column suffix -> description; the columns are ``src2dst_<suffix>`` and ``dst2src_<suffix>``.
HEAD_STAT_DOCS: dict[str, str] = {
    "first_payload_bits": "set bits per byte of the first 64 payload bytes of {who}'s first payload packet "
                          "(random: 4.0)",
    "first_payload_printable": "fraction of printable ASCII among the first 64 payload bytes of {who}'s first "
                               "payload packet (random: 0.37)",
    "payload_bits": "set bits per byte over the stored payload heads of {who}'s first 8 payload packets",
    "tls_record_frac": "fraction of {who}'s first 8 payload packets that start with a TLS or DTLS record header",
    "inner_header_frac": "fraction of {who}'s first 8 payload packets that carry a cleartext inner IPv4/IPv6 "
                         "header within their first 48 bytes, its length field matching the rest of the packet "
                         "(cleartext encapsulation: 6in4, GRE, Teredo, VXLAN)",
    "inner_ppp_frac": "fraction of {who}'s first 8 payload packets whose cleartext inner IP header follows a PPP "
                      "protocol field (0x0021 / 0x0057, or compressed 0x21 / 0x57): PPP-framed tunnels of the VPN "
                      "family such as L2TP and PPTP without encryption, not VXLAN, GRE, Teredo or 6in4",
    "repeat_bytes": "byte positions among the first 32 whose value repeats from one of {who}'s first 8 payload "
                    "packets to the next with the same first byte (message kind) in at least half of those "
                    "pairs (a tunnel header's message type, session id or SPI); null below 2 payload packets",
    "counter_frac": "largest share, over the first 32 byte positions, of the pairs of {who}'s first 8 payload "
                    "packets that follow each other among those with the same first byte, in which that byte "
                    "grows by exactly one (a per-packet counter such as ESP's sequence number); null below 3 "
                    "payload packets",
    "counter_offset": "byte position (0-31) of that counter in {who}'s payload packets, when it grows by one in at "
                      "least half of the pairs (ESP 7, WireGuard 8, RTP 3); null otherwise",
    "stun_frac": "fraction of {who}'s first 8 payload packets that hold a STUN message (the magic cookie "
                 "0x2112A442 at bytes 4-7) at offset 0, 2 (ICE over TCP) or 4 (inside TURN ChannelData): a call's "
                 "checks or a relay's control messages",
    "length_frac": "largest share, over the offsets 0-8, of {who}'s first 8 payload packets in which the "
                   "big-endian 16-bit field at that offset counts the bytes after it (up to 3 fewer: padding)",
    "length_offset": "that offset when the share is at least half (OpenVPN over TCP 0, TURN ChannelData 2, "
                     "TLS 3, CSTP 4); null otherwise",
}
HEAD_STAT_COLUMNS: tuple[str, ...] = tuple(HEAD_STAT_DOCS)
#: Payload packets of a direction each head statistic needs (null below): the framing
#: columns compare packets with each other, and one pair of random packets shows a byte
#: that "grows by one" at one of 32 positions one time in eight, two pairs one in 2,000.
HEAD_STAT_MIN_PACKETS: dict[str, int] = {
    **{col: 1 for col in HEAD_STAT_DOCS}, "repeat_bytes": 2, "counter_frac": 3, "counter_offset": 3}


def _head_stats(prefix: str, who: str) -> list[pa.Field]:
    """Byte statistics of the payload heads; null when that direction carried no payload."""
    return [_f(f"{prefix}_{col}", pa.float64(), doc.format(who=who)) for col, doc in HEAD_STAT_DOCS.items()]


def _dir_stats(prefix: str, who: str) -> list[pa.Field]:
    p = f"{prefix}_" if prefix else ""
    return [
        _f(f"{p}size_min", pa.int32(), f"smallest IP packet of {who}, bytes"),
        _f(f"{p}size_max", pa.int32(), f"largest IP packet of {who}, bytes"),
        _f(f"{p}size_mean", pa.float64(), f"mean IP packet size of {who}, bytes"),
        _f(f"{p}size_std", pa.float64(), f"population std of IP packet size of {who}, bytes"),
        _f(f"{p}iat_min_ms", pa.float64(), f"smallest inter-arrival time of {who}, ms (null below 2 packets)"),
        _f(f"{p}iat_max_ms", pa.float64(), f"largest inter-arrival time of {who}, ms"),
        _f(f"{p}iat_mean_ms", pa.float64(), f"mean inter-arrival time of {who}, ms"),
        _f(f"{p}iat_std_ms", pa.float64(), f"population std of inter-arrival time of {who}, ms"),
    ]


FLOW_FIELDS: list[pa.Field] = [
    _f("flow_id", pa.uint64(), "sequence number of the flow in order of first packet, within its capture (vpnid batch: within the dataset)", False),
    _f("capture", pa.string(), "the input the flow was read from, as given on the command line", False),
    _f("src_ip", pa.string(), "initiator address (sender of the first packet seen)", False),
    _f("dst_ip", pa.string(), "responder address", False),
    _f("src_port", pa.uint16(), "initiator port; null for protocols without ports"),
    _f("dst_port", pa.uint16(), "responder port; null for protocols without ports"),
    _f("ip_proto", pa.uint8(), "IP protocol number (6 TCP, 17 UDP, 50 ESP, 47 GRE, ...)", False),
    _f("ip_version", pa.uint8(), "4 or 6", False),
    _f("vlan_id", pa.uint16(), "outermost 802.1Q VLAN id, part of the flow key; null when untagged"),
    _f("first_seen", _TS, "timestamp of the first packet, UTC", False),
    _f("last_seen", _TS, "timestamp of the last packet, UTC", False),
    _f("duration_ms", pa.float64(), "last_seen - first_seen, milliseconds", False),
    _f("end_reason", pa.string(), "why the flow ended: idle, active, fin, rst or eof (still open at end of input)", False),
    _f("packets", pa.int64(), "packets, both directions", False),
    _f("bytes", pa.int64(), "IP bytes, both directions", False),
    _f("src2dst_packets", pa.int64(), "packets sent by the initiator", False),
    _f("src2dst_bytes", pa.int64(), "IP bytes sent by the initiator", False),
    _f("dst2src_packets", pa.int64(), "packets sent by the responder", False),
    _f("dst2src_bytes", pa.int64(), "IP bytes sent by the responder", False),
    _f("src2dst_payload_bytes", pa.int64(), "transport payload bytes sent by the initiator", False),
    _f("dst2src_payload_bytes", pa.int64(), "transport payload bytes sent by the responder", False),
    _f("src2dst_payload_packets", pa.int64(), "packets of the initiator that carry transport payload", False),
    _f("dst2src_payload_packets", pa.int64(), "packets of the responder that carry transport payload", False),
    _f("src2dst_payload_hist", pa.list_(pa.int64()),
       "initiator's payload-carrying packets by payload size, one count per bin of PAYLOAD_HIST_EDGES "
       "(1, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1280+ bytes)", False),
    _f("dst2src_payload_hist", pa.list_(pa.int64()),
       "responder's payload-carrying packets by payload size, bins as src2dst_payload_hist", False),
    *_head_stats("src2dst", "the initiator"),
    *_head_stats("dst2src", "the responder"),
    _f("truncated_packets", pa.int64(), "packets cut by the snap length (counted with their wire length)", False),
    _f("fragments", pa.int64(), "IP fragments (first and later) in the flow", False),
    *_dir_stats("", "both directions"),
    *_dir_stats("src2dst", "the initiator"),
    *_dir_stats("dst2src", "the responder"),
    _f("tcp_syn", pa.int64(), "TCP segments with SYN", False),
    _f("tcp_ack", pa.int64(), "TCP segments with ACK", False),
    _f("tcp_fin", pa.int64(), "TCP segments with FIN", False),
    _f("tcp_rst", pa.int64(), "TCP segments with RST", False),
    _f("tcp_psh", pa.int64(), "TCP segments with PSH", False),
    _f("tcp_urg", pa.int64(), "TCP segments with URG", False),
    _f("tcp_ece", pa.int64(), "TCP segments with ECE", False),
    _f("tcp_cwr", pa.int64(), "TCP segments with CWR", False),
    _f("first_tcp_flags", pa.uint8(), "TCP flags of the first packet; null for non-TCP flows"),
    _f("first_sizes", pa.list_(pa.int32()), f"IP sizes of the first {FIRST_PACKETS} packets", False),
    _f("first_dirs", pa.list_(pa.int8()), f"directions of the first {FIRST_PACKETS} packets: 0 initiator, 1 responder", False),
    _f("first_iats_ms", pa.list_(pa.float64()), f"inter-arrival times of the first {FIRST_PACKETS} packets, ms (first is 0)", False),
    _f("payload_bursts", pa.list_(pa.int32()),
       f"payload bytes of the first {BURSTS} bursts (runs of payload-carrying packets in one direction), positive "
       "from the initiator, negative from the responder; only bursts seen in full (the first 8 payload packets of "
       "each direction)", False),
]

FLOW_SCHEMA = pa.schema(FLOW_FIELDS)
FLOW_COLUMNS = [f.name for f in FLOW_FIELDS]

#: Columns that ``vpnid classify`` adds to the flow table.
CLASSIFY_FIELDS: list[pa.Field] = [
    _f("is_vpn", pa.bool_(), "the flow is a VPN tunnel", False),
    _f("vpn_protocol", pa.string(), "wireguard, openvpn, ipsec-ike, ipsec-esp, l2tp, pptp, ...; null when not VPN"),
    _f("confidence", pa.float64(), "confidence of the verdict in [0, 1] (for model verdicts the calibrated probability)"),
    _f("detection", pa.string(), "signature, model, endpoint (the model on the flows of its client and server "
       "port together), or null when nothing claimed the flow"),
    _f("evidence", pa.string(), "short human-checkable sentence explaining the verdict; never payload bytes"),
    _f("midflow", pa.bool_(), "the flow's start was not seen (capture began mid-flow)", False),
    _f("tunnel", pa.string(), "non-VPN encapsulation recognised in the flow (gre, ipip, vxlan, teredo, ...); null otherwise"),
]
CLASSIFY_SCHEMA = pa.schema(FLOW_FIELDS + CLASSIFY_FIELDS)

#: Columns that the registered-IP check adds (``--registry``).
REGISTRY_FIELDS: list[pa.Field] = [
    _f("registered", pa.bool_(), "a VPN flow with an endpoint on the registered-IP list; null for non-VPN flows"),
    _f("registration_id", pa.string(), "registration id of the matching entry"),
    _f("organization", pa.string(), "organization of the matching entry"),
    _f("matched_endpoint", pa.string(), "src, dst or null: which endpoint matched"),
]
REPORT_SCHEMA = pa.schema(FLOW_FIELDS + CLASSIFY_FIELDS + REGISTRY_FIELDS)
