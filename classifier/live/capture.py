"""Reading frames from a network interface with AF_PACKET, in batches, with drop counters.

Two ways, same result (a decoded ``PacketBatch`` per call of ``read``):

- ``RingCapture`` (default): a TPACKET_V3 ring shared with the kernel through mmap.
  The kernel fills blocks of frames and hands over a whole block at a time; a block is
  walked and copied by compiled code, so no Python runs per frame, and a burst of
  traffic waits in the ring instead of being dropped.
- ``SocketCapture``: a plain packet socket with a large receive buffer, one
  ``recvmsg`` per frame. The fallback for kernels or sandboxes without packet rings.

Either way the kernel counts what it had to drop (``PACKET_STATISTICS``); those
counters reset on every read, so they are accumulated here.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifier.errors import UsageError, VpnidError
from classifier.live import bpf
from classifier.live.frames import (
    BLOCK_STATUS,
    TP_STATUS_KERNEL,
    TP_STATUS_USER,
    TP_STATUS_VLAN_TPID_VALID,
    TP_STATUS_VLAN_VALID,
    FrameBuffer,
    walk_block,
)
from classifier.packets import linktypes
from classifier.packets.batch import PacketBatch

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_AUXDATA = 8
PACKET_VERSION = 10
TPACKET_V3 = 2
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
PACKET_OUTGOING = 4

ARPHRD_ETHER, ARPHRD_LOOPBACK = 1, 772
#: Interface types whose packet-socket frames start at the IP header.
_ARPHRD_RAW_IP = {512, 768, 769, 776, 778, 823, 65534}  # PPP, tunnels, GRE, sit, ip6gre, none (tun)

DEFAULT_SNAPLEN = 262144


@dataclass
class KernelStats:
    """Frames the kernel offered the socket and how many it dropped (ring or buffer full)."""

    packets: int = 0  # accepted by the filter, including those dropped
    drops: int = 0
    freeze_q: int = 0  # TPACKET_V3: times the ring was full and the queue frozen

    def as_dict(self) -> dict[str, int]:
        return {"kernel_packets": self.packets, "kernel_drops": self.drops, "kernel_freeze_q": self.freeze_q}


@dataclass
class CaptureOptions:
    """How to capture: interface, filter, snap length, ring/buffer sizes, batching."""

    interface: str
    bpf: str | None = None
    snaplen: int = DEFAULT_SNAPLEN
    promisc: bool = True
    method: str = "auto"  # auto (ring, else socket) | ring | socket
    buffer_mb: int = 64
    block_kb: int = 1024
    batch_ms: int = 20  # a ring block not full after this long is handed over anyway
    max_frames: int = 1 << 16  # frames per decoded batch


def interface_linktype(name: str) -> tuple[int, bool]:
    """(LINKTYPE of the frames a packet socket gives on ``name``, is it loopback)."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        raise UsageError(f"--interface {name}: no such network interface") from None
    try:
        arphrd = int(Path(f"/sys/class/net/{name}/type").read_text())
    except (OSError, ValueError):
        arphrd = ARPHRD_ETHER
    if arphrd in (ARPHRD_ETHER, ARPHRD_LOOPBACK):
        return linktypes.ETHERNET, arphrd == ARPHRD_LOOPBACK
    if arphrd in _ARPHRD_RAW_IP:
        return linktypes.RAW, False
    raise UsageError(f"--interface {name}: hardware type {arphrd} is not supported (Ethernet, loopback, "
                     "PPP and IP tunnels are)")


def _packet_socket(opts: CaptureOptions, linktype: int) -> socket.socket:
    """A packet socket that receives nothing until bound (so the filter is in place first)."""
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except PermissionError:
        raise UsageError("capturing needs root or CAP_NET_RAW (AF_PACKET socket refused)") from None
    insns = (bpf.compile_bpf(opts.bpf, linktype, opts.snaplen) if opts.bpf
             else bpf.snap_only(opts.snaplen))
    bpf.attach(sock, insns)
    return sock


def _bind(sock: socket.socket, opts: CaptureOptions) -> None:
    try:
        sock.bind((opts.interface, ETH_P_ALL))
    except OSError as exc:
        raise UsageError(f"--interface {opts.interface}: cannot capture: {exc.strerror or exc}") from None
    if opts.promisc:
        mreq = struct.pack("iHH8s", socket.if_nametoindex(opts.interface), PACKET_MR_PROMISC, 0, b"")
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)


class CaptureError(VpnidError):
    """The interface stopped delivering (it went down or was removed)."""


class _Base:
    linktype: int
    sock: socket.socket
    poller: select.poll
    interface: str

    def __init__(self) -> None:
        self.kernel = KernelStats()
        self.frames = 0  # frames handed out in batches

    def _wait(self, timeout_s: float) -> None:
        """Wait for frames; an error on the socket (interface down or gone) ends the capture."""
        for _fd, events in self.poller.poll(max(0, int(timeout_s * 1000))):
            if events & select.POLLERR:
                err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise CaptureError(f"--interface {self.interface}: capture stopped: {os.strerror(err)}")

    def stats(self) -> KernelStats:
        """Cumulative kernel counters (reading them resets the kernel's copy, so sum here)."""
        with contextlib.suppress(OSError):
            raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
            packets, drops = struct.unpack_from("II", raw)
            self.kernel.packets += packets  # the kernel's tp_packets already includes the drops
            self.kernel.drops += drops
            if len(raw) >= 12:
                self.kernel.freeze_q += struct.unpack_from("I", raw, 8)[0]
        return self.kernel


class RingCapture(_Base):
    """TPACKET_V3 receive ring: blocks of frames handed over by the kernel through mmap."""

    method = "ring"

    def __init__(self, opts: CaptureOptions) -> None:
        super().__init__()
        self.interface = opts.interface
        self.linktype, loopback = interface_linktype(opts.interface)
        self.skip_outgoing = loopback
        self.block_size = max(mmap.PAGESIZE, 1 << (opts.block_kb * 1024 - 1).bit_length())
        self.block_nr = max(2, (opts.buffer_mb << 20) // self.block_size)
        frame_size = 2048
        self.sock = _packet_socket(opts, self.linktype)
        try:
            self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            req = struct.pack("7I", self.block_size, self.block_nr, frame_size,
                              self.block_size // frame_size * self.block_nr, opts.batch_ms, 0, 0)
            self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self.mm = mmap.mmap(self.sock.fileno(), self.block_size * self.block_nr, mmap.MAP_SHARED,
                                mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            self.sock.close()
            raise
        self.ring = np.frombuffer(self.mm, np.uint8)
        self.words = self.ring.view(np.uint32)
        self.cur = 0
        self.blocks = 0  # blocks read so far
        self.batch_ms = opts.batch_ms
        per_block = self.block_size // 64 + 1
        self.max_frames = max(opts.max_frames, per_block)
        self.fb = FrameBuffer(self.max_frames, max(self.block_size * 8, 8 << 20), self.linktype)
        self.poller = select.poll()
        self.poller.register(self.sock.fileno(), select.POLLIN | select.POLLERR)
        _bind(self.sock, opts)

    def _ready(self, block: int) -> bool:
        return bool(self.words[(block * self.block_size + BLOCK_STATUS) // 4] & TP_STATUS_USER)

    def read(self, timeout_s: float) -> PacketBatch | None:
        """Frames of every block ready now (waiting up to ``timeout_s`` for one), decoded."""
        if not self._ready(self.cur):
            self._wait(timeout_s)
        fb = self.fb
        per_block = self.block_size // 64 + 1
        while self._ready(self.cur):
            if fb.n + per_block > fb.max_frames or fb.pos + 2 * self.block_size > len(fb.out):
                break
            off = self.cur * self.block_size
            start = fb.n
            fb.n = int(walk_block(self.ring, off, self.block_size, fb.src_off, fb.cap, fb.wire, fb.ts, fb.vlan,
                                  start, self.skip_outgoing))
            fb.gather_from(self.ring, start, fb.n)
            self.words[(off + BLOCK_STATUS) // 4] = TP_STATUS_KERNEL  # hand the block back
            self.cur = (self.cur + 1) % self.block_nr
            self.blocks += 1
        self.frames += fb.n
        return fb.take()

    def drain(self) -> Iterator[PacketBatch]:
        """What the ring holds, once the kernel has retired the block it is filling.

        Bounded to one turn of the ring, so that stopping ends even while traffic keeps
        arriving. One batch at a time: each must be consumed before the next read reuses
        its buffer.
        """
        time.sleep(2 * self.batch_ms / 1000)
        stop_at = self.blocks + self.block_nr
        while self.blocks < stop_at:
            batch = self.read(0)
            if batch is None:
                return
            yield batch

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.poller.unregister(self.sock.fileno())
        del self.words, self.ring
        with contextlib.suppress(BufferError):  # a view still referenced: the mapping goes with it
            self.mm.close()
        self.sock.close()


class SocketCapture(_Base):
    """A packet socket read one frame per ``recvmsg`` (no ring needed)."""

    method = "socket"

    def __init__(self, opts: CaptureOptions) -> None:
        super().__init__()
        self.interface = opts.interface
        self.linktype, self.skip_outgoing = interface_linktype(opts.interface)
        self.snaplen = opts.snaplen
        self.sock = _packet_socket(opts, self.linktype)
        want = opts.buffer_mb << 20
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, want)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, want)
        self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setblocking(False)
        self.max_frames = opts.max_frames
        self.max_bytes = max(16 << 20, 4 * min(opts.snaplen, 65536))
        self.src = np.zeros(self.max_bytes + opts.snaplen, np.uint8)
        self.view = memoryview(self.src)
        self.fb = FrameBuffer(self.max_frames, len(self.src), self.linktype)
        self.poller = select.poll()
        self.poller.register(self.sock.fileno(), select.POLLIN | select.POLLERR)
        self.cmsg_size = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(16)
        _bind(self.sock, opts)

    def read(self, timeout_s: float) -> PacketBatch | None:
        """Frames queued now (waiting up to ``timeout_s`` for the first), decoded."""
        fb = self.fb
        pos = 0
        waited = False
        while fb.n < self.max_frames and pos < self.max_bytes:
            try:
                nbytes, anc, _flags, addr = self.sock.recvmsg_into(
                    [self.view[pos:pos + self.snaplen]], self.cmsg_size)
            except BlockingIOError:
                if fb.n or waited:
                    break
                self._wait(timeout_s)
                waited = True
                continue
            if self.skip_outgoing and addr[2] == PACKET_OUTGOING:
                continue
            k = fb.n
            wire, vlan, ts = nbytes, -1, 0
            for level, kind, data in anc:
                if level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= 20:
                    status, wire, _snap, _mac, _net, tci, tpid = struct.unpack_from("IIIHHHH", data)
                    if status & TP_STATUS_VLAN_VALID:
                        vlan = ((tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100) << 16) | tci
                elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
                    sec, nsec = struct.unpack_from("qq", data)
                    ts = sec * 1_000_000_000 + nsec
            fb.src_off[k], fb.cap[k], fb.wire[k] = pos, nbytes, wire
            fb.ts[k] = ts or time.time_ns()
            fb.vlan[k] = vlan
            fb.n = k + 1
            pos += nbytes
        fb.gather_from(self.src, 0, fb.n)
        self.frames += fb.n
        return fb.take()

    def drain(self) -> Iterator[PacketBatch]:
        """What the socket has queued (for at most two seconds while traffic keeps arriving).

        One batch at a time: each must be consumed before the next read reuses its buffer.
        """
        until = time.monotonic() + 2.0
        while time.monotonic() < until:
            batch = self.read(0)
            if batch is None:
                return
            yield batch

    def close(self) -> None:
        self.sock.close()


Capture = RingCapture | SocketCapture


def open_capture(opts: CaptureOptions) -> Capture:
    """Open the interface: a packet ring when the kernel allows one, else a plain socket."""
    if opts.method == "socket":
        return SocketCapture(opts)
    try:
        return RingCapture(opts)
    except OSError as exc:
        if opts.method == "ring":
            raise UsageError(f"--interface {opts.interface}: no packet ring: {exc.strerror or exc}") from None
        return SocketCapture(opts)
