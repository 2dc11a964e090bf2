"""Captured frames -> PacketBatch without a Python step per frame.

Why compiled kernels: at line rate a Python loop per frame would cost more than the
whole flow engine. A TPACKET_V3 ring block is a chain of frame headers; one numba loop
walks the chain and records where each frame is, a second copies the frames into one
contiguous buffer (re-inserting the 802.1Q tag the kernel moved out of the frame, so
VLANs stay part of the flow key as they are in a capture file), and the packet decoder
then runs once over the whole buffer, exactly as for a capture file.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from classifier.packets import linktypes
from classifier.packets.batch import PacketBatch
from classifier.packets.capture import batch_from_buffer

# struct tpacket_block_desc / tpacket_hdr_v1 (linux/if_packet.h), byte offsets
BLOCK_STATUS = 8
BLOCK_NUM_PKTS = 12
BLOCK_FIRST_PKT = 16
# struct tpacket3_hdr, byte offsets
H_NEXT, H_SEC, H_NSEC, H_SNAPLEN, H_LEN, H_STATUS, H_MAC = 0, 4, 8, 12, 16, 20, 24
H_VLAN_TCI, H_VLAN_TPID = 32, 36
#: TPACKET_ALIGN(sizeof(struct tpacket3_hdr)): where the sockaddr_ll follows the header
H_SOCKADDR = 48
SLL_PKTTYPE = 10  # offset of sll_pkttype in struct sockaddr_ll

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
PACKET_OUTGOING = 4


@nb.njit(cache=True, inline="always")
def _u32(b, p):
    """Native-endian (little-endian on every Linux this runs on) u32 of the ring memory."""
    return np.int64(b[p]) | (np.int64(b[p + 1]) << 8) | (np.int64(b[p + 2]) << 16) | (np.int64(b[p + 3]) << 24)


@nb.njit(cache=True, inline="always")
def _u16(b, p):
    return np.int64(b[p]) | (np.int64(b[p + 1]) << 8)


@nb.njit(cache=True)
def walk_block(ring, block_off, block_size, src_off, cap, wire, ts, vlan, k, skip_outgoing):
    """Record the frames of one TPACKET_V3 block at ``ring[block_off:]`` from index ``k`` on.

    Returns the new frame count. ``vlan`` gets -1 or the tag (tpid << 16 | tci) to put
    back; with ``skip_outgoing`` frames the host sent are left out (loopback shows
    every packet once as outgoing and once as incoming).
    """
    n = _u32(ring, block_off + BLOCK_NUM_PKTS)
    p = block_off + _u32(ring, block_off + BLOCK_FIRST_PKT)
    end = block_off + block_size
    for _ in range(n):
        if p + H_SOCKADDR + 12 > end:
            break
        status = _u32(ring, p + H_STATUS)
        keep = True
        if skip_outgoing and ring[p + H_SOCKADDR + SLL_PKTTYPE] == PACKET_OUTGOING:
            keep = False
        if keep:
            src_off[k] = p + _u16(ring, p + H_MAC)
            cap[k] = _u32(ring, p + H_SNAPLEN)
            wire[k] = _u32(ring, p + H_LEN)
            ts[k] = _u32(ring, p + H_SEC) * 1_000_000_000 + _u32(ring, p + H_NSEC)
            if status & TP_STATUS_VLAN_VALID:
                tpid = _u16(ring, p + H_VLAN_TPID) if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
                vlan[k] = (tpid << 16) | _u16(ring, p + H_VLAN_TCI)
            else:
                vlan[k] = -1
            k += 1
        nxt = _u32(ring, p + H_NEXT)
        if nxt == 0:
            break
        p += nxt
    return k


@nb.njit(cache=True)
def gather(src, src_off, cap, wire, vlan, n, out, out_off, out_cap, out_wire, ethernet):
    """Copy ``n`` frames from ``src`` into ``out`` back to back; returns the bytes used.

    On Ethernet a frame whose tag the kernel stripped gets it back after the MAC
    addresses (4 more bytes captured and on the wire).
    """
    pos = 0
    for i in range(n):
        s = src_off[i]
        c = cap[i]
        out_off[i] = pos
        if ethernet and vlan[i] >= 0 and c >= 12:
            out[pos:pos + 12] = src[s:s + 12]
            tag = vlan[i]
            out[pos + 12] = (tag >> 24) & 0xFF
            out[pos + 13] = (tag >> 16) & 0xFF
            out[pos + 14] = (tag >> 8) & 0xFF
            out[pos + 15] = tag & 0xFF
            out[pos + 16:pos + 4 + c] = src[s + 12:s + c]
            out_cap[i] = c + 4
            out_wire[i] = wire[i] + 4
        else:
            out[pos:pos + c] = src[s:s + c]
            out_cap[i] = c
            out_wire[i] = wire[i]
        pos += out_cap[i]
    return pos


class FrameBuffer:
    """Reusable arrays one capture batch is collected in, then decoded in one call."""

    def __init__(self, max_frames: int, max_bytes: int, linktype: int) -> None:
        self.max_frames = max_frames
        self.linktype = linktype
        self.ethernet = linktype == linktypes.ETHERNET
        self.src_off = np.zeros(max_frames, np.int64)
        self.cap = np.zeros(max_frames, np.int64)
        self.wire = np.zeros(max_frames, np.int64)
        self.ts = np.zeros(max_frames, np.int64)
        self.vlan = np.full(max_frames, -1, np.int64)
        self.out = np.zeros(max_bytes + 4 * max_frames, np.uint8)
        self.out_off = np.zeros(max_frames, np.int64)
        self.out_cap = np.zeros(max_frames, np.int64)
        self.out_wire = np.zeros(max_frames, np.int64)
        self.n = 0
        self.pos = 0  # bytes already gathered into ``out``

    def gather_from(self, src: np.ndarray, start: int, end: int) -> None:
        """Append frames ``start..end`` (recorded against ``src``) to the output buffer."""
        m = end - start
        if m <= 0:
            return
        used = gather(src, self.src_off[start:end], self.cap[start:end], self.wire[start:end],
                      self.vlan[start:end], m, self.out[self.pos:], self.out_off[start:end],
                      self.out_cap[start:end], self.out_wire[start:end], self.ethernet)
        self.out_off[start:end] += self.pos
        self.pos += int(used)

    def take(self) -> PacketBatch | None:
        """The collected frames as a decoded PacketBatch (None when empty); resets the buffer.

        The batch's columns are its own, but its byte buffer is reused by the next batch:
        feed it to the flow meter before collecting more.
        """
        n = self.n
        if n == 0:
            return None
        batch = batch_from_buffer(self.out, self.out_off[:n], self.out_cap[:n], self.out_wire[:n],
                                    self.ts[:n], self.linktype)
        self.n = 0
        self.pos = 0
        return batch
