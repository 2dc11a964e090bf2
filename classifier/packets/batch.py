"""PacketBatch: decoded packet headers of one chunk, as numpy columns.

No Python object exists per packet: a chunk of a capture is one byte buffer plus
arrays of offsets and decoded fields, all of length ``n``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

#: Leading payload bytes of a packet that the flow engine reads (its payload heads,
#: ``classifier.flows.batch.HEAD_BYTES``). A capture whose snapshot length keeps fewer
#: leaves the payload statistics of its flows incomplete.
PAYLOAD_HEAD_BYTES = 64

#: How many bytes longer IPv6's fixed header is than IPv4's (40 against 20, no options):
#: sizes are IP bytes, so the same tunnel over IPv6 would show every packet 20 bytes
#: larger. The features count sizes as over IPv4 (``ip_version`` is read for that alone),
#: so a model trained on the lab's IPv4 captures scores a tunnel over IPv6 the same (before
#: feature version 12 it missed over IPv6 flows it found over IPv4; docs/model.md), and the
#: reader judges a packet's length against the MTU the same way.
IPV6_EXTRA_HEADER = 20


class PacketStatus:
    """Per-packet decode status (``PacketBatch.status``)."""

    OK = 0
    NOT_IP = 1  # ARP, STP, LLDP, ...: not a flow, counted only
    TRUNCATED = 2  # the snap length cut the headers a flow key needs
    BAD_IP = 3  # IP header lengths lie (IHL, total length, payload length)
    BAD_L4 = 4  # TCP data offset or UDP header does not fit the IP payload
    BAD_LINK = 5  # link header inconsistent

    MESSAGES: ClassVar[dict[int, str]] = {
        BAD_IP: "IP header length fields do not fit the packet (IHL, total or payload length lie)",
        BAD_L4: "transport header does not fit the IP payload (TCP data offset or UDP length lies)",
        BAD_LINK: "link-layer header is inconsistent",
    }


#: (name, dtype) of every decoded column; all have one entry per packet.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("record_off", "i8"),  # byte offset of the record in the (decompressed) file, for messages
    ("data_off", "i8"),  # offset of the packet's first byte in ``buf``
    ("cap_len", "i4"),  # bytes captured
    ("wire_len", "i4"),  # bytes on the wire (original length)
    ("linktype", "i4"),
    ("ts", "i8"),  # ns since the epoch, UTC
    ("status", "u1"),  # PacketStatus
    ("ip_ver", "u1"),
    ("ip_proto", "u1"),
    ("src_hi", "u8"),  # address as 128 bits; IPv4 as ::ffff:a.b.c.d
    ("src_lo", "u8"),
    ("dst_hi", "u8"),
    ("dst_lo", "u8"),
    ("sport", "u2"),
    ("dport", "u2"),
    ("has_ports", "u1"),
    ("tcp_flags", "u1"),
    ("tcp_seq", "u4"),
    ("ip_len", "i4"),  # IP datagram bytes on the wire (Ethernet padding excluded)
    ("payload_off", "i8"),  # offset in ``buf`` of the transport payload
    ("payload_len", "i4"),  # payload bytes on the wire
    ("payload_cap", "i4"),  # payload bytes present in ``buf``
    ("vlan", "i4"),  # outermost 802.1Q id, -1 when untagged
    ("frag", "u1"),  # 0 not a fragment, 1 first fragment, 2 later fragment
    ("frag_id", "u4"),  # IP identification of a fragment
)


@dataclass
class PacketBatch:
    """One chunk of packets: the byte buffer and per-packet columns.

    The columns belong to the batch; ``buf`` is the reader's buffer and is reused for the
    next chunk, so payload bytes must be consumed (the flow meter copies the heads it
    keeps) before the next batch is read.
    """

    buf: np.ndarray
    cols: dict[str, np.ndarray]
    n: int

    @classmethod
    def allocate(cls, buf: np.ndarray, n: int) -> PacketBatch:
        return cls(buf, {name: np.empty(n, dtype) for name, dtype in COLUMNS}, n)

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.__dict__["cols"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __len__(self) -> int:
        return self.n

    def head(self, n: int) -> PacketBatch:
        return PacketBatch(self.buf, {k: v[:n] for k, v in self.cols.items()}, n)
