"""Shared machinery of the signature stage: batch views, per-flow views, verdicts.

Why two views: the whole batch is screened with numpy over the payload heads
(:class:`BatchView`), and only the few candidate rows that survive reach the
per-flow Python logic, which reads them through :class:`Flow`. Protocol modules
expose ``candidates(view) -> bool array`` and ``check(flow) -> Verdict | None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise

import numpy as np
import pyarrow as pa

from classifier.flows.batch import FlowBatch

TCP, UDP = 6, 17
_SYN = 0x02
#: A DNS message's fixed header; its question (the first label's length byte) follows. DNS
#: tunnels (iodine, dns2tcp) and encrypted DNS's certificate lookup are read from there.
DNS_HEADER = 12


@dataclass(slots=True)
class Verdict:
    """What a signature concluded about one flow."""

    protocol: str
    confidence: float
    evidence: str
    midflow: bool = False
    is_vpn: bool = True


@dataclass(slots=True)
class Packet:
    """One payload-carrying packet of a flow's heads (stored bytes only)."""

    dir: int
    len: int  # payload length on the wire
    data: bytes  # stored leading bytes (<= HEAD_BYTES)
    ts: int
    seq: int

    @property
    def complete(self) -> bool:
        return len(self.data) >= self.len


def be16(b: bytes, off: int) -> int:
    return int.from_bytes(b[off : off + 2], "big")


def be32(b: bytes, off: int) -> int:
    return int.from_bytes(b[off : off + 4], "big")


def slots_be16(data: np.ndarray, off: int) -> np.ndarray:
    """The big-endian 16-bit field at ``off`` of every slot of heads ``data`` (rows, slots, bytes);
    a module that screens a few rows (ICMP's) passes just those."""
    return (data[:, :, off].astype(np.int32) << 8) | data[:, :, off + 1]


def one_question(m: bytes) -> bool:
    """``m`` may be a DNS message with exactly one question (QDCOUNT, bytes 4-5, is 1), as every
    query and answer of a DNS tunnel is."""
    return len(m) > DNS_HEADER and be16(m, 4) == 1


def le64(b: bytes, off: int) -> int:
    return int.from_bytes(b[off : off + 8], "little")


def increasing(values: list[int], max_step: int = 64) -> bool:
    """True when the values climb strictly, by steps of at most ``max_step``.

    Why a step limit: a real counter (ESP sequence number, WireGuard counter,
    OpenVPN packet id) advances by one per packet, a few more when packets are
    lost or not captured; a random field would not stay inside such a window.
    """
    return len(values) >= 2 and all(0 < b - a <= max_step for a, b in pairwise(values))


class BatchView:
    """Numpy views of a FlowBatch for the vectorized pre-filters."""

    def __init__(self, batch: FlowBatch) -> None:
        t = batch.table
        h = batch.heads
        self.n = len(batch)
        self.proto = np.asarray(t.column("ip_proto").to_numpy(zero_copy_only=False), np.int32)
        self.sport = self._port(t, "src_port")
        self.dport = self._port(t, "dst_port")
        if "first_tcp_flags" in t.column_names:
            flags = t.column("first_tcp_flags").fill_null(0).to_numpy(zero_copy_only=False)
            self.first_flags = np.asarray(flags, np.int32)
        else:
            self.first_flags = np.zeros(self.n, np.int32)
        self.count = h.count.astype(np.int32)
        self.dirs = h.dirs
        self.lens = h.lens
        self.caps = h.caps
        self.data = h.data
        self.ts = h.ts
        self.seq = h.seq
        k = h.dirs.shape[1] if h.dirs.ndim == 2 else 0
        self.valid = np.arange(k)[None, :] < self.count[:, None]

    @staticmethod
    def _port(t, name: str) -> np.ndarray:
        if name not in t.column_names:
            return np.full(t.num_rows, -1, np.int32)
        col = t.column(name).cast(pa.int32()).fill_null(-1)
        return np.asarray(col.to_numpy(zero_copy_only=False), np.int32)

    @cached_property
    def udp(self) -> np.ndarray:
        return self.proto == UDP

    @cached_property
    def tcp(self) -> np.ndarray:
        return self.proto == TCP

    def b(self, off: int) -> np.ndarray:
        """Byte ``off`` of every slot, (n, K) int32 (0 where not stored)."""
        return self.data[:, :, off].astype(np.int32)

    def be16(self, off: int) -> np.ndarray:
        return slots_be16(self.data, off)

    def be32(self, off: int) -> np.ndarray:
        d = self.data[:, :, off : off + 4].astype(np.uint32)
        return (d[:, :, 0] << 24) | (d[:, :, 1] << 16) | (d[:, :, 2] << 8) | d[:, :, 3]

    def starts_with(self, prefix: bytes, at: int = 0) -> np.ndarray:
        """(n, K) bool: the slot's stored bytes hold ``prefix`` at offset ``at`` (0: they begin with it).

        The prefix's first byte screens every slot; the rest is compared only in the slots
        that pass (about one in 256 of random payloads), so a long prefix costs what one byte does.
        """
        p = np.frombuffer(prefix, np.uint8)
        end = at + len(p)
        m = (self.data[:, :, at] == p[0]) & (self.caps >= end) & self.valid
        if len(p) > 1:
            rows, slots = np.nonzero(m)
            m[rows, slots] = (self.data[rows, slots, at + 1:end] == p[1:]).all(axis=1)
        return m

    def one_question(self) -> np.ndarray:
        """(n, K) bool: the slot may hold a DNS message with exactly one question (``one_question``):
        two bytes screen out all but about one in 65,536 random payloads."""
        return (self.data[:, :, 4] == 0) & (self.data[:, :, 5] == 1) & (self.caps > DNS_HEADER) & self.valid

    def any_slot(self, mask: np.ndarray) -> np.ndarray:
        return (mask & self.valid).any(axis=1)

    def nth_slot(self, direction: int, k: int) -> np.ndarray:
        """Index of the ``k``-th (0-based) slot of ``direction`` per row, -1 if absent."""
        m = self.valid & (self.dirs == direction)
        c = np.cumsum(m, axis=1)
        hit = m & (c == k + 1)
        idx = hit.argmax(axis=1)
        return np.where(hit.any(axis=1), idx, -1)

    def slot_bytes(self, idx: np.ndarray, start: int, stop: int) -> np.ndarray:
        """(n, stop-start) bytes of slot ``idx[i]`` of each row (zeros where idx < 0)."""
        safe = np.where(idx < 0, 0, idx)
        out = self.data[np.arange(self.n), safe, start:stop]
        return np.where((idx < 0)[:, None], 0, out)


class Stream:
    """One direction of a TCP flow rebuilt from its heads, with holes.

    Only the leading bytes of each segment are stored, so the stream is sparse:
    :meth:`read` returns bytes only when one stored segment covers the range.
    Offsets are relative to the first payload byte seen in that direction.
    """

    def __init__(self, packets: list[Packet]) -> None:
        segs: dict[int, Packet] = {}
        if packets:
            base = packets[0].seq
            for p in packets:
                rel = (p.seq - base) & 0xFFFFFFFF
                if rel >= 1 << 31:  # before the first seen byte (reordering): ignore
                    continue
                if rel not in segs or len(p.data) > len(segs[rel].data):
                    segs[rel] = p
        self.segments = sorted(segs.items())

    @property
    def end(self) -> int:
        """Offset just past the last segment seen (on the wire)."""
        return max((off + p.len for off, p in self.segments), default=0)

    def read(self, off: int, n: int) -> bytes | None:
        for start, p in self.segments:
            if start <= off and off + n <= start + len(p.data):
                return p.data[off - start : off - start + n]
        return None

    def read_upto(self, off: int, n: int) -> bytes | None:
        """As many stored bytes (at most ``n``) as one segment holds from ``off``."""
        for start, p in self.segments:
            if start <= off < start + len(p.data):
                return p.data[off - start : off - start + n]
        return None

    def segment_starts(self) -> list[int]:
        return [off for off, _ in self.segments]


@dataclass(slots=True)
class Record:
    """A length-prefixed record found in a TCP stream (OpenVPN, IKE over TCP)."""

    dir: int
    offset: int
    length: int  # body length from the 2-byte prefix
    body: bytes  # stored leading bytes of the body


def framed_records(stream: Stream, direction: int, start: int = 0, limit: int = 64,
                   max_len: int = 65535) -> list[Record]:
    """Walk 2-byte-length-framed records from ``start`` while their headers are stored."""
    out: list[Record] = []
    off = start
    end = stream.end
    while off < end and len(out) < limit:
        head = stream.read(off, 2)
        if head is None:
            break
        length = be16(head, 0)
        if length == 0 or length > max_len:
            break
        body = stream.read_upto(off + 2, length) or b""
        out.append(Record(direction, off, length, body))
        off += 2 + length
    return out


class Flow:
    """Per-flow view for the candidate logic (Python objects, so only for candidates)."""

    def __init__(self, view: BatchView, row: int) -> None:
        self.row = row
        self.proto = int(view.proto[row])
        self.sport = int(view.sport[row])
        self.dport = int(view.dport[row])
        self.first_flags = int(view.first_flags[row])
        n = int(view.count[row])
        self.packets = [
            Packet(
                int(view.dirs[row, j]),
                int(view.lens[row, j]),
                view.data[row, j, : view.caps[row, j]].tobytes(),
                int(view.ts[row, j]),
                int(view.seq[row, j]),
            )
            for j in range(n)
        ]

    def of(self, direction: int) -> list[Packet]:
        return [p for p in self.packets if p.dir == direction]

    @property
    def directions(self) -> set[int]:
        return {p.dir for p in self.packets}

    def has_port(self, *ports: int) -> bool:
        return self.sport in ports or self.dport in ports

    @property
    def tcp_start_seen(self) -> bool:
        """The TCP handshake of the flow was captured (its first packet carried SYN)."""
        return self.proto == TCP and bool(self.first_flags & _SYN)

    @cached_property
    def streams(self) -> tuple[Stream, Stream]:
        return Stream(self.of(0)), Stream(self.of(1))


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
