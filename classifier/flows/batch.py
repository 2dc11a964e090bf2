"""FlowBatch: the unit that crosses from the flow engine to the later stages.

A batch is an Arrow table of finished flows (``FLOW_SCHEMA``) plus, row-aligned, the
first payload bytes of each flow (``PayloadHeads``). The heads live in memory only:
signatures read them, and they are dropped before anything is written, so payload
bytes never reach an output file or a report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from classifier.flows.schema import FLOW_SCHEMA
from classifier.packets.batch import PAYLOAD_HEAD_BYTES

#: Payload-carrying packets kept per direction (so at most 2x this per flow).
HEAD_PACKETS_PER_DIR = 8
HEAD_PACKETS = 2 * HEAD_PACKETS_PER_DIR
#: Leading payload bytes kept per packet.
HEAD_BYTES = PAYLOAD_HEAD_BYTES


@dataclass
class PayloadHeads:
    """Leading payload bytes of the first payload-carrying packets of each flow.

    Packets are stored in arrival order, at most ``HEAD_PACKETS_PER_DIR`` per direction;
    slot ``j`` of row ``i`` is valid for ``j < count[i]``.

    Arrays (``n`` flows, ``K = HEAD_PACKETS``, ``B = HEAD_BYTES``):
        count (n,) uint8    valid slots
        dirs  (n, K) uint8  0 sent by the initiator, 1 by the responder
        lens  (n, K) int32  payload length on the wire (may exceed what was captured)
        caps  (n, K) uint8  bytes stored in ``data`` (<= B; fewer when the snap length cut it)
        ts    (n, K) int64  timestamp, ns since the epoch
        seq   (n, K) uint32 TCP sequence number (0 for other protocols)
        data  (n, K, B) uint8 payload bytes, zero padded
    """

    count: np.ndarray
    dirs: np.ndarray
    lens: np.ndarray
    caps: np.ndarray
    ts: np.ndarray
    seq: np.ndarray
    data: np.ndarray

    @classmethod
    def empty(cls, n: int = 0) -> PayloadHeads:
        k, b = HEAD_PACKETS, HEAD_BYTES
        return cls(
            count=np.zeros(n, np.uint8),
            dirs=np.zeros((n, k), np.uint8),
            lens=np.zeros((n, k), np.int32),
            caps=np.zeros((n, k), np.uint8),
            ts=np.zeros((n, k), np.int64),
            seq=np.zeros((n, k), np.uint32),
            data=np.zeros((n, k, b), np.uint8),
        )

    def __len__(self) -> int:
        return len(self.count)

    def take(self, idx: np.ndarray) -> PayloadHeads:
        return PayloadHeads(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    @classmethod
    def concat(cls, parts: list[PayloadHeads]) -> PayloadHeads:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__))

    def payload(self, row: int, slot: int) -> bytes:
        """The stored bytes of one packet (for signature code and tests, not hot paths)."""
        return bytes(self.data[row, slot, : self.caps[row, slot]])


@dataclass
class FlowBatch:
    """Finished flows: ``table`` (FLOW_SCHEMA) and row-aligned ``heads``."""

    table: pa.Table
    heads: PayloadHeads

    def __post_init__(self) -> None:
        if self.table.num_rows != len(self.heads):
            raise ValueError(f"table has {self.table.num_rows} rows but heads {len(self.heads)}")

    def __len__(self) -> int:
        return self.table.num_rows

    @classmethod
    def empty(cls) -> FlowBatch:
        return cls(FLOW_SCHEMA.empty_table(), PayloadHeads.empty())

    @classmethod
    def concat(cls, parts: list[FlowBatch]) -> FlowBatch:
        if not parts:
            return cls.empty()
        return cls(pa.concat_tables([p.table for p in parts]), PayloadHeads.concat([p.heads for p in parts]))
