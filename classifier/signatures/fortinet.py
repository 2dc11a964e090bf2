"""Fortinet SSL VPN (FortiClient to a FortiGate), from the clear part of its TLS handshake.

The tunnel itself is TLS. What shows is the FortiGate's certificate, sent in clear
in TLS 1.2 and earlier: the factory certificate names Fortinet (``support@fortinet.com``,
``FortiGate``). Only the first 64 bytes of each server segment are kept, so the
marker is found only when a segment starts near it; a hit needs the marker inside
the server's handshake records of a TLS connection. A FortiGate's web admin page
shows the same certificate, so the confidence stays moderate.
"""

from __future__ import annotations

import re

import numpy as np

from classifier.signatures._base import TCP, BatchView, Flow, Verdict

NAME = "fortinet-sslvpn"
_MARK = re.compile(rb"(?i)fortinet|fortigate")


def candidates(v: BatchView) -> np.ndarray:
    out = np.zeros(v.n, bool)
    tls = v.tcp & v.any_slot(v.starts_with(b"\x16\x03"))
    rows = np.flatnonzero(tls)
    if not len(rows):
        return out
    # One regex pass over the bytes of all TLS rows (C speed), mapped back to rows.
    block = v.data[rows]
    stride = block.shape[1] * block.shape[2]
    buf = block.tobytes()
    for m in _MARK.finditer(buf):
        out[rows[m.start() // stride]] = True
    return out


def check(f: Flow) -> Verdict | None:
    if f.proto != TCP:
        return None
    client, server = f.of(0), f.of(1)
    if not client or not client[0].data.startswith(b"\x16\x03") or not server:
        return None
    if not server[0].data.startswith(b"\x16\x03"):
        return None
    # Server segments before its first application-data record hold the handshake.
    hits = 0
    for p in server:
        if p.data.startswith(b"\x17\x03"):
            break
        hits += bool(_MARK.search(p.data))
    if not hits:
        return None
    ev = "fortinet ssl-vpn: TLS server certificate names Fortinet/FortiGate (seen in the clear handshake)"
    return Verdict(NAME, 0.7, ev, midflow=not f.tcp_start_seen)
