"""Rewrite a lab capture frame by frame: for wire framings a real daemon produces here only
in another form.

Why: the kernel of the lab's machines has no ESP transform, so strongSwan's charon runs
its userspace data path, which always puts ESP in UDP 4500 (NAT-T framing). A host whose
kernel has ESP and no NAT between the peers sends the same messages differently: ESP as
IP protocol 50 and, for IKEv1 and IKEv2 without MOBIKE, every IKE message on UDP 500
without the four-byte non-ESP marker. Rewriting charon's real exchange keeps what the
daemon decided (message sizes, order, timing, rekeys, dead-peer checks) and changes only
the framing (``scenarios/ipsec.py`` uses it).

Input is the classic pcap tcpdump writes (``-w``); the header, timestamps and every frame
the function leaves alone are copied byte for byte.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

from classifier.lab.netns import LabError
from classifier.packets.capture import PCAP_MAGICS

#: A frame rewriter: the new frame, the same one, or None to drop it.
FrameRewrite = Callable[[bytes], "bytes | None"]


def rewrite_pcap(src: str | Path, dst: str | Path, rewrite: FrameRewrite) -> int:
    """Copy the pcap ``src`` to ``dst`` with every frame passed through ``rewrite``; frames written."""
    data = Path(src).read_bytes()
    if data[:4] not in PCAP_MAGICS or len(data) < 24:
        raise LabError(f"{src}: not a classic pcap file (magic {data[:4].hex()}); cannot rewrite it")
    big_endian, _nanoseconds = PCAP_MAGICS[data[:4]]
    rec = struct.Struct((">" if big_endian else "<") + "IIII")
    out = [data[:24]]
    pos, written = 24, 0
    while pos < len(data):
        if pos + 16 > len(data):
            raise LabError(f"{src}: byte offset {pos}: truncated record header")
        sec, frac, incl, orig = rec.unpack_from(data, pos)
        frame = data[pos + 16:pos + 16 + incl]
        if len(frame) < incl:
            raise LabError(f"{src}: byte offset {pos}: record of {incl} bytes runs past the end of the file")
        pos += 16 + incl
        new = rewrite(frame)
        if new is None:
            continue
        out.append(rec.pack(sec, frac, incl, orig) if new is frame else rec.pack(sec, frac, len(new), len(new)))
        out.append(new)
        written += 1
    Path(dst).write_bytes(b"".join(out))
    return written
