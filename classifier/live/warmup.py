"""Load every compiled kernel before the capture starts.

Why: numba loads a cached kernel on its first call, which takes a fraction of a second
each, several seconds in all (ring walking, decoding, the flow table, sweeps, the
signature kernels). Done on the first captured batch, that pause lets a busy link fill
the ring and the kernel drops packets. Running a few synthetic frames through the same
path (ring block -> batch -> meter -> snapshot -> labels) first makes the first real
batch as fast as any other.
"""

from __future__ import annotations

import struct
import time

import numpy as np

from classifier.flows.config import FlowConfig
from classifier.flows.meter import FlowMeter
from classifier.live.frames import TP_STATUS_USER, TP_STATUS_VLAN_VALID, FrameBuffer, walk_block
from classifier.pipeline import LabelOptions, label_batch


def _ipv4(proto: int, payload: bytes, sport: int, dport: int) -> bytes:
    l4 = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) if proto == 17 else \
        struct.pack(">HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x18, 512, 0, 0) if proto == 6 else b""
    body = l4 + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, 0, 64, proto, 0, bytes([192, 0, 2, 1]),
                     bytes([192, 0, 2, 2]))
    return bytes(12) + b"\x08\x00" + ip + body


def _frames() -> list[bytes]:
    wg_init = struct.pack("<I", 1) + bytes(144)
    wg_resp = struct.pack("<I", 2) + bytes(88)
    return [
        _ipv4(17, wg_init, 40000, 51820), _ipv4(17, wg_resp, 51820, 40000),
        _ipv4(17, b"\x38" + bytes(40), 40001, 1194), _ipv4(6, b"\x16\x03\x01" + bytes(60), 40002, 443),
        _ipv4(17, bytes(28), 500, 500), _ipv4(50, bytes(64), 0, 0), _ipv4(17, bytes(40), 1701, 1701),
    ]


def _block(frames: list[bytes], ts_ns: int) -> np.ndarray:
    """A TPACKET_V3 block holding ``frames`` (one tagged), laid out as the kernel does."""
    size = 1 << 14
    block = bytearray(size)
    struct.pack_into("IIIIII", block, 0, 1, 0, TP_STATUS_USER, len(frames), 48, 0)
    p, mac = 48, 82
    for i, frame in enumerate(frames):
        rec = (mac + len(frame) + 15) & ~15
        status = TP_STATUS_USER | (TP_STATUS_VLAN_VALID if i == 0 else 0)
        struct.pack_into("IIIIIIHHIIHH", block, p, rec if i < len(frames) - 1 else 0, ts_ns // 10**9,
                         ts_ns % 10**9, len(frame), len(frame), status, mac, mac + 14, 0, 7, 0, 0)
        block[p + mac:p + mac + len(frame)] = frame
        p += rec
    return np.frombuffer(bytes(block), np.uint8)


def warm(label: LabelOptions, config: FlowConfig | None = None) -> float:
    """Run synthetic traffic through the live path once; returns the seconds it took."""
    t0 = time.perf_counter()
    frames = _frames()
    now = time.time_ns()
    block = _block(frames, now)
    fb = FrameBuffer(64, 1 << 14, 1)
    fb.n = int(walk_block(block, 0, len(block), fb.src_off, fb.cap, fb.wire, fb.ts, fb.vlan, 0, False))
    fb.gather_from(block, 0, fb.n)
    packets = fb.take()
    meter = FlowMeter(config or FlowConfig(), capture="warmup")
    meter.add(packets)
    snap = meter.snapshot(meter.open_slots())
    if len(snap):
        label_batch(snap, label)
    meter.expire(now + 10**12)
    done = meter.flush()
    if done is not None and len(done):
        label_batch(done, label)
    return time.perf_counter() - t0
