"""Capture files -> PacketBatch chunks, streaming, with clear errors for bad input.

Why chunks: a capture larger than memory must stream. The file is read in blocks of
``chunk_bytes``; compiled scanners find whole records in the block, the decoder fills
the packet columns, and the incomplete record at the end of the block is carried into
the next read. Memory therefore depends on the chunk size, not on the file size.

Formats are recognised by their magic bytes, never by the file name: classic pcap
(either byte order, micro- or nanosecond timestamps), pcapng (byte order per section,
several interfaces with their own link types and timestamp resolutions), and either of
them gzip-compressed.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from classifier.errors import ErrorLog
from classifier.packets import _scan, linktypes
from classifier.packets._decode import decode
from classifier.packets.batch import COLUMNS, IPV6_EXTRA_HEADER, PAYLOAD_HEAD_BYTES, PacketBatch, PacketStatus

CHUNK_BYTES = 32 << 20
_READ_STEP = 1 << 18
MAX_PACKETS_PER_BATCH = 1 << 19

#: Classic pcap magic numbers: (big endian, nanosecond timestamps).
PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": (False, False),  # little endian, microseconds
    b"\xa1\xb2\xc3\xd4": (True, False),
    b"\x4d\x3c\xb2\xa1": (False, True),  # nanoseconds
    b"\xa1\xb2\x3c\x4d": (True, True),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_GZIP = b"\x1f\x8b"


@dataclass
class InputStats:
    """What reading one input found, for metadata and the terminal summary."""

    path: str
    packets: int = 0
    bytes_read: int = 0
    not_ip: int = 0
    truncated: int = 0
    malformed: int = 0
    #: decoded packets that carry payload, and those of them whose snapshot length kept
    #: fewer than CUT_HEAD_BYTES of their payload (fewer than all of it, if shorter)
    payload_packets: int = 0
    payload_cut: int = 0
    #: decoded TCP packets that carry payload, and those of them longer than a 1500-byte
    #: MTU carries: segments merged by a host's offloads (or a jumbo-frame link)
    tcp_payload_packets: int = 0
    tcp_merged: int = 0
    linktypes: set[int] = field(default_factory=set)
    ok: bool = True


class _Source:
    """A binary file (plain or gzip) read into a reusable numpy buffer, with carry-over."""

    def __init__(self, fh: BinaryIO, chunk_bytes: int) -> None:
        self.fh = fh
        self.buf = np.empty(chunk_bytes, np.uint8)
        self.start = 0  # valid data is buf[start:end]
        self.end = 0
        self.base = 0  # file offset of buf[0]
        self.eof = False
        self.error: Exception | None = None  # why reading stopped early (corrupt or cut gzip stream)

    def fill(self, need: int = 0) -> None:
        """Move the unread tail to the front and read more (growing for huge blocks)."""
        keep = self.end - self.start
        if need > len(self.buf):
            grown = np.empty(max(need, 2 * len(self.buf)), np.uint8)
            grown[:keep] = self.buf[self.start:self.end]
            self.buf = grown
        elif self.start:
            self.buf[:keep] = self.buf[self.start:self.end]
        self.base += self.start
        self.start, self.end = 0, keep
        view = memoryview(self.buf)
        while self.end < len(self.buf):
            # Read in steps so that a gzip stream that is cut or corrupt keeps everything
            # decompressed before the damage (a failed readinto reports nothing it read).
            try:
                got = self.fh.readinto(view[self.end:self.end + _READ_STEP])
            except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
                self.error = exc
                got = 0
            if not got:
                self.eof = True
                break
            self.end += got

    def read_exact(self, n: int) -> bytes | None:
        if self.end - self.start < n and not self.eof:
            self.fill(n)
        if self.end - self.start < n:
            return None
        data = bytes(self.buf[self.start:self.start + n])
        self.start += n
        return data

    @property
    def offset(self) -> int:
        return self.base + self.start


def _open(path: Path) -> BinaryIO:
    fh = open(path, "rb")  # noqa: SIM115 - closed by the caller
    magic = fh.read(2)
    fh.seek(0)
    if magic == _GZIP:
        return gzip.GzipFile(fileobj=fh, mode="rb")  # type: ignore[return-value]
    return fh


def iter_packet_batches(
    path: str | Path,
    log: ErrorLog | None = None,
    stats: InputStats | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[PacketBatch]:
    """Yield decoded packet chunks of one capture; problems go to ``log``, never raise.

    Packets whose status is not OK stay in the batch (flows skip them); malformed ones
    are reported with their byte offset. ``on_progress(n)`` is called with the number of
    raw file bytes consumed since the last call.
    """
    log = log if log is not None else ErrorLog()
    stats = stats if stats is not None else InputStats(str(path))
    name = str(path)
    try:
        fh = _open(Path(path))
    except OSError as exc:
        log.add(name, None, f"cannot open: {exc.strerror or exc}")
        stats.ok = False
        return
    raw = fh.fileobj if isinstance(fh, gzip.GzipFile) else fh  # type: ignore[attr-defined]
    last_raw = 0

    def progress() -> None:
        nonlocal last_raw
        if on_progress is not None:
            pos = raw.tell()
            on_progress(pos - last_raw)
            last_raw = pos

    try:
        src = _Source(fh, chunk_bytes)
        try:
            src.fill()
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            log.add(name, 0, f"cannot read: {exc}")
            stats.ok = False
            return
        if src.end == 0:
            log.add(name, 0, f"cannot read: {src.error}" if src.error else "empty file: not a capture")
            stats.ok = False
            return
        magic = bytes(src.buf[:4])
        if magic in PCAP_MAGICS:
            reader = _read_pcap(src, name, log, stats, progress)
        elif magic == _PCAPNG_SHB:
            reader = _read_pcapng(src, name, log, stats, progress)
        else:
            log.add(name, 0, f"not a pcap or pcapng capture (magic bytes {magic.hex()})")
            stats.ok = False
            return
        for batch in reader:
            _count(batch, stats, name, log)
            yield batch
        _warn_cut_by_snaplen(stats, name, log)
        _warn_merged_by_a_host(stats, name, log)
        if src.error is not None and stats.ok:  # the damage fell on a record boundary
            log.add(name, src.base + src.end, f"compressed data is cut or corrupt: {src.error}")
            stats.ok = False
        progress()
    except (OSError, EOFError, gzip.BadGzipFile, zlib_error()) as exc:
        log.add(name, None, f"read error after {stats.packets} packets: {exc}")
        stats.ok = False
    finally:
        fh.close()
        if raw is not fh:
            raw.close()


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error


def _count(batch: PacketBatch, stats: InputStats, name: str, log: ErrorLog) -> None:
    st = batch.status
    stats.packets += batch.n
    stats.bytes_read += int(batch.wire_len.sum())
    counts = np.bincount(st, minlength=6)
    stats.not_ip += int(counts[PacketStatus.NOT_IP])
    stats.truncated += int(counts[PacketStatus.TRUNCATED])
    carries = (st == PacketStatus.OK) & (batch.cols["payload_len"] > 0)
    stats.payload_packets += int(np.count_nonzero(carries))
    head = np.minimum(batch.cols["payload_len"], CUT_HEAD_BYTES)
    stats.payload_cut += int(np.count_nonzero(carries & (batch.cols["payload_cap"] < head)))
    tcp = carries & (batch.cols["ip_proto"] == 6)
    stats.tcp_payload_packets += int(np.count_nonzero(tcp))
    ip_len = batch.cols["ip_len"]
    long = np.flatnonzero(tcp & (ip_len > WIRE_MTU))  # few: only these need the IPv6 header's allowance
    over_ipv4 = ip_len[long] - IPV6_EXTRA_HEADER * (batch.cols["ip_ver"][long] == 6)
    stats.tcp_merged += int(np.count_nonzero(over_ipv4 > WIRE_MTU))
    bad = np.flatnonzero((st == PacketStatus.BAD_IP) | (st == PacketStatus.BAD_L4) | (st == PacketStatus.BAD_LINK))
    stats.malformed += len(bad)
    for i in bad[:50]:
        log.add(name, int(batch.record_off[i]), f"packet skipped: {PacketStatus.MESSAGES[int(st[i])]}",
                fatal=False)
    if len(bad) > 50:
        log.add(name, None, f"{len(bad) - 50} more malformed packets in this chunk skipped", fatal=False)


#: Payload bytes a packet must keep not to count as cut: three quarters of the heads the
#: flow engine reads (PAYLOAD_HEAD_BYTES). Tunnel framing reads the first 32 and most
#: signatures the first 40; a cut beyond 48 takes only the tail of the byte statistics, as
#: a 128-byte snapshot length does to an IPv4 TCP segment with timestamps (62 bytes kept).
CUT_HEAD_BYTES = 3 * PAYLOAD_HEAD_BYTES // 4
#: Share of payload-carrying packets cut short above which a capture is reported as headers-only.
CUT_PAYLOAD_WARN_SHARE = 0.1
#: Share of packets whose IP or transport headers were cut (no flow) above which a capture is
#: reported: lower, since those packets are lost to every stage, not only to the byte statistics.
CUT_HEADERS_WARN_SHARE = 0.01


#: Largest IP datagram an Ethernet link without jumbo frames carries (an IPv6 packet counts
#: as over IPv4: ``IPV6_EXTRA_HEADER``, as the features count it).
WIRE_MTU = 1500
#: Share of TCP packets carrying payload that are longer than WIRE_MTU above which a capture
#: is reported as made on a host, and the fewest such packets that count.
MERGED_WARN_SHARE = 0.01
MERGED_WARN_MIN = 10


def _warn_merged_by_a_host(stats: InputStats, name: str, log: ErrorLog) -> None:
    """Say so when TCP segments come merged as a capture made on one of the hosts shows them.

    A host's NIC cuts what the host sends after the capture saw it and merges what it receives
    before (segmentation and receive offloads), so bulk data shows as packets of up to 64 KB.
    Sizes, counts and gaps are then not the wire's, and the default model, trained on the
    wire's, finds fewer tunnels (docs/model.md, Captures made on a host).
    """
    merged, of = stats.tcp_merged, stats.tcp_payload_packets
    if merged >= MERGED_WARN_MIN and merged > MERGED_WARN_SHARE * of:
        log.warn(name, f"{merged} of the {of} TCP packets carrying payload are longer than a {WIRE_MTU}-byte MTU "
                       "allows: the capture was made on one of the hosts, whose offloads merge TCP segments into "
                       "packets of up to 64 KB (or on a link with jumbo frames); sizes and counts are not the "
                       "wire's and the default model finds fewer tunnels; --model host-capture is trained for "
                       "captures made on a host (docs/model.md, Captures made on a host)",
                 kind="TCP segments merged by a host")


def _warn_cut_by_snaplen(stats: InputStats, name: str, log: ErrorLog) -> None:
    """Say so when the snapshot length kept too little of the packets for what reads them.

    Why warnings and not errors: a capture made so is what its maker asked for. Cut
    payloads leave flows, sizes and timing whole and only the statistics read from the
    first payload bytes (randomness, TLS records, tunnel framing) partial, so the default
    model finds fewer tunnels (docs/model.md, Headers-only captures). Cut IP or transport
    headers (IPv6 TCP needs 74 bytes a frame, IPv4 TCP 54) leave a packet with no flow at all.
    """
    if stats.payload_packets and stats.payload_cut > CUT_PAYLOAD_WARN_SHARE * stats.payload_packets:
        log.warn(name, f"{stats.payload_cut / stats.payload_packets:.0%} of the {stats.payload_packets} packets "
                       f"carrying payload kept fewer than {CUT_HEAD_BYTES} of their first {PAYLOAD_HEAD_BYTES} "
                       "payload bytes (the capture's snapshot length cut them): payload statistics are partial, "
                       "signatures see less and the default model finds fewer tunnels; --model headers-only is "
                       "trained for such captures (docs/model.md, Headers-only captures)",
                 kind="payloads cut by the snapshot length")
    if stats.packets and stats.truncated > CUT_HEADERS_WARN_SHARE * stats.packets:
        log.warn(name, f"{stats.truncated} of the {stats.packets} packets lost part of the headers a flow needs to "
                       "the capture's snapshot length and belong to no flow (TCP over IPv6 needs 74 bytes a frame, "
                       "over IPv4 54)", kind="headers cut by the snapshot length")


def _decode(src: _Source, n: int, scanned: dict[str, np.ndarray]) -> PacketBatch:
    """Decode the ``n`` records just scanned into fresh columns (the buffer is shared and reused)."""
    batch = PacketBatch.allocate(src.buf, n)
    for k in _SCAN_COLS:
        batch.cols[k][:] = scanned[k][:n]
    _decode_columns(batch)
    return batch


def _decode_columns(batch: PacketBatch) -> None:
    c = batch.cols
    decode(batch.buf, batch.n, c["data_off"], c["cap_len"], c["wire_len"], c["linktype"],
           c["status"], c["ip_ver"], c["ip_proto"], c["src_hi"], c["src_lo"], c["dst_hi"], c["dst_lo"],
           c["sport"], c["dport"], c["has_ports"], c["tcp_flags"], c["tcp_seq"], c["ip_len"],
           c["payload_off"], c["payload_len"], c["payload_cap"], c["vlan"], c["frag"], c["frag_id"])


_SCAN_COLS = ("record_off", "data_off", "cap_len", "wire_len", "ts", "linktype")


def _alloc_cols(n: int) -> dict[str, np.ndarray]:
    return {name: np.zeros(n, dtype) for name, dtype in COLUMNS if name in _SCAN_COLS}


def _read_more(src: _Source, name: str, log: ErrorLog, stats: InputStats, unit: str, progress) -> bool:
    """The scanner needs more bytes: read them; False at end of file (a leftover is a truncated last unit)."""
    if src.eof:
        if src.end > src.start:
            log.add(name, src.offset, f"truncated last {unit} ({src.end - src.start} bytes left)")
            stats.ok = False
        return False
    src.fill(src.end - src.start + 65536 + 16)
    progress()
    return True


def _read_pcap(src: _Source, name: str, log: ErrorLog, stats: InputStats, progress) -> Iterator[PacketBatch]:
    header = src.read_exact(24)
    if header is None:
        log.add(name, 0, "truncated pcap file header (need 24 bytes)")
        stats.ok = False
        return
    big, nanos = PCAP_MAGICS[header[:4]]
    fmt = ">" if big else "<"
    _vmaj, _vmin, _tz, _sig, snaplen, network = struct.unpack(fmt + "HHiIII", header[4:24])
    linktype = network & 0x0FFFFFFF
    stats.linktypes.add(linktype)
    if linktype not in linktypes.SUPPORTED:
        log.warn(name, f"unsupported {linktypes.describe(linktype)}: file skipped")
        return
    cols = _alloc_cols(MAX_PACKETS_PER_BATCH)
    while True:
        pos, n, status = _scan.scan_pcap(
            src.buf, src.start, src.end, big, nanos, snaplen, src.base, linktype,
            cols["record_off"], cols["data_off"], cols["cap_len"], cols["wire_len"], cols["ts"],
            cols["linktype"], MAX_PACKETS_PER_BATCH)
        if n:
            yield _decode(src, n, cols)
        src.start = pos
        if status == _scan.FULL:
            continue
        if status == _scan.BAD_LENGTH:
            caplen = struct.unpack(fmt + "I", bytes(src.buf[pos + 8:pos + 12]))[0]
            log.add(name, src.offset, f"record length {caplen} is absurd (snap length {snaplen}); "
                    "the rest of the file cannot be read")
            stats.ok = False
            return
        if not _read_more(src, name, log, stats, "record", progress):  # NEED_MORE
            return


@dataclass
class _Iface:
    linktype: int
    mode: int = 0  # 0: 10^-exp seconds, 1: 2^-exp
    exp: int = 6
    offset_s: int = 0
    snaplen: int = 0


def _read_pcapng(src: _Source, name: str, log: ErrorLog, stats: InputStats, progress) -> Iterator[PacketBatch]:
    cols = _alloc_cols(MAX_PACKETS_PER_BATCH)
    big = False
    ifaces: list[_Iface] = []
    skip_ifaces: set[int] = set()
    last_ts = 0

    def iface_arrays():
        return (np.array([i.linktype for i in ifaces], np.int64), np.array([i.mode for i in ifaces], np.int64),
                np.array([i.exp for i in ifaces], np.int64), np.array([i.offset_s for i in ifaces], np.int64),
                np.array([i.snaplen for i in ifaces], np.int64))

    arrays = iface_arrays()
    while True:
        pos, n, status, last_ts = _scan.scan_pcapng(
            src.buf, src.start, src.end, big, src.base, *arrays, last_ts,
            cols["record_off"], cols["data_off"], cols["cap_len"], cols["wire_len"], cols["ts"],
            cols["linktype"], MAX_PACKETS_PER_BATCH)
        if n:
            batch = _decode(src, n, cols)
            if skip_ifaces:
                unsupported = ~np.isin(batch.linktype, list(linktypes.SUPPORTED))
                batch.status[unsupported] = PacketStatus.NOT_IP
            yield batch
        src.start = pos
        if status == _scan.FULL:
            continue
        if status == _scan.NEED_MORE:
            if not _read_more(src, name, log, stats, "block", progress):
                return
            continue
        if status == _scan.BAD_LENGTH:
            log.add(name, src.offset, "pcapng block with a bad length (not a multiple of 4, too short, "
                    "or its trailing copy differs); the rest of the file cannot be read")
            stats.ok = False
            return
        if status == _scan.BAD_IFACE:
            log.add(name, src.offset, "packet block names an interface that no interface description defined")
            stats.ok = False
            return
        # BLOCK: a section header or an interface description
        head = src.read_exact(12)
        if head is None:
            log.add(name, src.offset, "truncated block header")
            stats.ok = False
            return
        btype = head[:4]
        block_off = src.offset - 12
        if btype == _PCAPNG_SHB:
            bom = head[8:12]
            if bom == b"\x4d\x3c\x2b\x1a":
                big = False
            elif bom == b"\x1a\x2b\x3c\x4d":
                big = True
            else:
                log.add(name, block_off, f"section header with unknown byte-order magic {bom.hex()}")
                stats.ok = False
                return
        fmt = ">" if big else "<"
        blen = struct.unpack(fmt + "I", head[4:8])[0]
        if blen < 12 or blen % 4 or blen > (1 << 24):
            log.add(name, block_off, f"pcapng block with a bad length {blen}")
            stats.ok = False
            return
        body = src.read_exact(blen - 12)
        if body is None:
            log.add(name, block_off, "truncated last block")
            stats.ok = False
            return
        if struct.unpack(fmt + "I", body[-4:])[0] != blen:
            log.add(name, block_off, "pcapng block whose trailing length differs from its leading length")
            stats.ok = False
            return
        if btype == _PCAPNG_SHB:
            ifaces = []
            skip_ifaces = set()
        else:  # interface description block
            if blen < 20:
                log.add(name, block_off, f"interface description block too short ({blen} bytes)")
                stats.ok = False
                return
            iface = _parse_idb(head[8:] + body[:-4], fmt)
            stats.linktypes.add(iface.linktype)
            if iface.linktype not in linktypes.SUPPORTED:
                log.warn(name, f"interface {len(ifaces)} has unsupported {linktypes.describe(iface.linktype)}: "
                         "its packets are skipped")
                skip_ifaces.add(len(ifaces))
            ifaces.append(iface)
        arrays = iface_arrays()


def _parse_idb(body: bytes, fmt: str) -> _Iface:
    linktype, _reserved, snaplen = struct.unpack(fmt + "HHI", body[:8])
    iface = _Iface(linktype=linktype, snaplen=snaplen)
    p = 8
    while p + 4 <= len(body):
        code, length = struct.unpack(fmt + "HH", body[p:p + 4])
        value = body[p + 4:p + 4 + length]
        if code == 0:
            break
        if code == 9 and length >= 1:  # if_tsresol
            iface.mode, iface.exp = (1, value[0] & 0x7F) if value[0] & 0x80 else (0, value[0])
        elif code == 14 and length >= 8:  # if_tsoffset, seconds
            iface.offset_s = struct.unpack(fmt + "q", value[:8])[0]
        p += 4 + ((length + 3) & ~3)
    return iface


def batch_from_buffer(buf: np.ndarray, offs: np.ndarray, caps: np.ndarray, wires: np.ndarray,
                      ts_ns: np.ndarray, linktype: int) -> PacketBatch:
    """Decode frames that already sit in one buffer (a live ring block, joined frames).

    ``offs``/``caps``/``wires``/``ts_ns`` give each frame's offset in ``buf``, captured and
    wire length, and timestamp; decoding runs as one kernel call over the whole batch,
    exactly as for a capture file.
    """
    n = len(offs)
    batch = PacketBatch.allocate(buf, n)
    c = batch.cols
    c["record_off"][:] = offs
    c["data_off"][:] = offs
    c["cap_len"][:] = caps
    c["wire_len"][:] = np.maximum(wires, caps)
    c["ts"][:] = ts_ns
    c["linktype"][:] = linktype
    _decode_columns(batch)
    return batch


def batch_from_frames(frames: list[bytes], ts_ns: np.ndarray, linktype: int,
                      wire_lens: np.ndarray | None = None) -> PacketBatch:
    """Decode frames captured elsewhere (a socket, a test) into a PacketBatch."""
    n = len(frames)
    lens = np.fromiter((len(f) for f in frames), np.int64, n)
    offs = np.zeros(n, np.int64)
    if n:
        np.cumsum(lens[:-1], out=offs[1:])
    buf = np.frombuffer(b"".join(frames), np.uint8) if n else np.zeros(0, np.uint8)
    return batch_from_buffer(buf, offs, lens, lens if wire_lens is None else wire_lens, ts_ns, linktype)
