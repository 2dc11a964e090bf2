"""Compile and cache the numba kernels once (``python -m classifier._warmup``).

The kernels (the engine's and the model's tree kernel) compile on first use (about 20 s)
and are cached on disk afterwards;
``make install`` runs this so that the first real command is fast.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path


def _frame() -> bytes:
    eth = bytes(6) + bytes(6) + b"\x08\x00"
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 17, 0, bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]))
    return eth + ip + struct.pack(">HHHH", 1000, 2000, 8, 0)


def warm() -> int:
    from classifier.errors import ErrorLog
    from classifier.flows.api import read_flows

    frame = _frame()
    with tempfile.TemporaryDirectory() as tmp:
        pcap = Path(tmp) / "w.pcap"
        pcap.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
                         + struct.pack("<IIII", 1, 0, len(frame), len(frame)) + frame)
        shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
        idb = struct.pack("<IIHHI", 1, 20, 1, 0, 0) + struct.pack("<I", 20)
        body = struct.pack("<IIIII", 0, 0, 1, len(frame), len(frame)) + frame + bytes(-len(frame) % 4)
        epb = struct.pack("<II", 6, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))
        pcapng = Path(tmp) / "w.pcapng"
        pcapng.write_bytes(shb + idb + epb)
        table = read_flows(pcap, pcapng, log=ErrorLog(quiet=True))
    _warm_model(table)
    return table.num_rows


def _warm_model(table) -> None:
    """Score the flows with the shipped model once: that compiles the tree kernel (``model/tree_kernel.py``)."""
    from classifier.model import ModelError, load_model

    try:
        model = load_model()
    except ModelError:  # a checkout without its model file still gets the engine's kernels
        return
    model.predict(table)


if __name__ == "__main__":
    warm()
