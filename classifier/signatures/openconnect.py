"""OpenConnect / Cisco AnyConnect: the DTLS data channel's pre-standard version.

AnyConnect (and OpenConnect/ocserv in legacy mode) run their UDP tunnel over DTLS
with record version 0x0100, OpenSSL's pre-RFC "DTLS1_BAD_VER", which no other DTLS
stack sends. Each record header (content type 20..23, version, epoch, 48-bit
sequence, length) is checked, and the record length must fit the datagram. The
TLS (CSTP) connection of the same client to the same server address and port is
associated afterwards by ``classifier.signatures.detect``. DTLS 1.2 mode of newer
OpenConnect looks like any DTLS and is left to the model.
"""

from __future__ import annotations

import numpy as np

from classifier.signatures._base import UDP, BatchView, Flow, Verdict, be16

NAME = "openconnect"


def candidates(v: BatchView) -> np.ndarray:
    b0 = v.b(0)
    rec = (b0 >= 20) & (b0 <= 23) & (v.b(1) == 1) & (v.b(2) == 0) & (v.be16(11) + 13 <= v.lens)
    return v.udp & v.any_slot(rec)


def _record(d: bytes, length: int) -> int | None:
    if len(d) < 13 or not 20 <= d[0] <= 23 or d[1:3] != b"\x01\x00" or be16(d, 3) > 1:
        return None
    if be16(d, 11) + 13 > length:
        return None
    return d[0]


def check(f: Flow) -> Verdict | None:
    if f.proto != UDP:
        return None
    types = [_record(p.data, p.len) for p in f.packets]
    if not types or None in types or len(types) < 2:
        return None
    hello = sum(1 for t in types if t == 22)
    app = sum(1 for t in types if t == 23)
    conf = 0.95 if hello and len(f.directions) == 2 else 0.85
    ev = (f"openconnect/anyconnect dtls: {len(types)} records with version 0x0100 (pre-standard DTLS), "
          f"{hello} handshake, {app} application data")
    return Verdict(NAME, conf, ev, midflow=hello == 0)
