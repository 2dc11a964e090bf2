"""OpenConnect / Cisco AnyConnect: the DTLS data channel's pre-standard version.

AnyConnect (and OpenConnect/ocserv in legacy mode) run their UDP tunnel over DTLS
with record version 0x0100, OpenSSL's pre-RFC "DTLS1_BAD_VER", which no other DTLS
stack sends. Each record header (content type 20..23, version, epoch, 48-bit
sequence, length) is checked, and the record length must fit the datagram. The
TLS (CSTP) connection of the same client to the same server address and port is
associated afterwards by ``classifier.signatures.detect``. In DTLS 1.2
"PSK-NEGOTIATE" mode (ocserv) the records are standard; there the client's
ClientKeyExchange with the fixed PSK identity ``psk`` is the marker.
"""

from __future__ import annotations

import numpy as np

from classifier.signatures._base import UDP, BatchView, Flow, Verdict, be16

NAME = "openconnect"


def candidates(v: BatchView) -> np.ndarray:
    b0 = v.b(0)
    rec = (b0 >= 20) & (b0 <= 23) & (v.b(1) == 1) & (v.b(2) == 0) & (v.be16(11) + 13 <= v.lens)
    psk = (b0 == 22) & (v.b(1) == 0xFE) & (v.b(13) == 0x10) & (v.be16(25) == 3) & (v.b(27) == ord("p")) & \
        (v.b(28) == ord("s")) & (v.b(29) == ord("k"))
    return v.udp & v.any_slot(rec | psk)


def _record(d: bytes, length: int) -> int | None:
    if len(d) < 13 or not 20 <= d[0] <= 23 or d[1:3] != b"\x01\x00" or be16(d, 3) > 1:
        return None
    if be16(d, 11) + 13 > length:
        return None
    return d[0]


def _psk_negotiate(f: Flow) -> Verdict | None:
    """OpenConnect's DTLS 1.2 "PSK-NEGOTIATE" mode (ocserv): standard DTLS, but the
    client's ClientKeyExchange carries the fixed PSK identity ``psk``, and the key
    comes from the TLS (CSTP) session instead of a certificate exchange."""
    def dtls12(p) -> bool:
        d = p.data
        return len(d) >= 13 and 20 <= d[0] <= 23 and d[1:3] in (b"\xfe\xfd", b"\xfe\xff")
    if not f.packets or not all(dtls12(p) for p in f.packets):
        return None
    cke = any(p.data[0] == 22 and len(p.data) >= 30 and p.data[13] == 0x10 and p.data[25:30] == b"\x00\x03psk"
              for p in f.of(0))
    app = {p.dir for p in f.packets if p.data[0] == 23}
    if not cke or app != {0, 1}:
        return None
    ev = ("openconnect dtls 1.2 (PSK-NEGOTIATE): client key exchange with PSK identity 'psk', "
          "application data both ways")
    return Verdict(NAME, 0.85, ev, midflow=False)


def check(f: Flow) -> Verdict | None:
    if f.proto != UDP:
        return None
    if f.packets and f.packets[0].data[1:3] in (b"\xfe\xfd", b"\xfe\xff"):
        return _psk_negotiate(f)
    types = [_record(p.data, p.len) for p in f.packets]
    if not types or None in types or len(types) < 2:
        return None
    hello = sum(1 for t in types if t == 22)
    app = sum(1 for t in types if t == 23)
    # A tunnel carries data: a handshake alone with this old version is also what some
    # pre-2008 OpenSSL DTLS clients sent, so it is not enough.
    if app < 2:
        return None
    conf = 0.95 if hello and len(f.directions) == 2 else 0.85
    ev = (f"openconnect/anyconnect dtls: {len(types)} records with version 0x0100 (pre-standard DTLS), "
          f"{hello} handshake, {app} application data")
    return Verdict(NAME, conf, ev, midflow=hello == 0)
