"""BitTorrent's peer wire in the clear and over uTP: file sharing, and no VPN.

Why a signature for something that is not a VPN: a torrent download is a long flow with
data one way and small acknowledgements or requests the other, the rhythm of a tunnel
carrying a download, and uTP (BEP 29) even carries a counting sequence number behind a
repeated connection id, like a tunnel's header. The model has learnt BitTorrent as
non-VPN, but its out-of-fold scores for a held-out BitTorrent client were the highest of
all non-VPN traffic. Naming what can be named keeps those flows out of the model.

What is checked (BEP 3, BEP 29):

* the plain TCP handshake: ``\\x13BitTorrent protocol``, 8 reserved bytes, the 20-byte
  info hash, the 20-byte peer id. When both sides send it with the same info hash the
  flow is certain;
* uTP: every datagram starts with a 20-byte header, type (0-4) in the high nibble of the
  first byte and version 1 in the low one, a known extension type (0-3) next, then the
  16-bit connection id. After the SYN each side sends with its own connection id, and the
  two ids differ by exactly one (the initiator's receive id is its send id minus one). A
  SYN carries the id the other side then sends with.

Not seen: the encrypted peer wire (MSE), random from its first byte. The verdict has
``is_vpn`` False: the flow is explained and does not go to the model
(``pipeline.signature_split``).
"""

from __future__ import annotations

import numpy as np

from classifier.signatures._base import TCP, UDP, BatchView, Flow, Verdict, be16, plural

NAME = "bittorrent"
HANDSHAKE = b"\x13BitTorrent protocol"
INFO_HASH = slice(28, 48)
UTP_HEADER = 20
UTP_SYN = 4
#: Extension types a uTP header may name first (none, selective ack, extension bits, close reason).
UTP_EXTENSIONS = 4


def candidates(v: BatchView) -> np.ndarray:
    """TCP flows with a payload starting with the handshake; UDP flows whose stored payloads all
    hold a version-1 uTP header with a known packet type and extension (``check`` relies on it)."""
    first = v.b(0)
    utp = ((first & 0x0F == 1) & (first >> 4 <= UTP_SYN) & (v.b(1) < UTP_EXTENSIONS) & (v.lens >= UTP_HEADER)
           & (v.caps >= 4))
    all_utp = (utp | ~v.valid).all(axis=1) & v.valid.any(axis=1)
    return (v.tcp & v.any_slot(v.starts_with(HANDSHAKE))) | (v.udp & all_utp)


def check(f: Flow) -> Verdict | None:
    if f.proto == TCP:
        return _handshake(f)
    if f.proto == UDP:
        return _utp(f)
    return None


def _handshake(f: Flow) -> Verdict | None:
    shakes = {p.dir: p.data for p in f.packets if p.data.startswith(HANDSHAKE)}
    if not shakes:
        return None
    hashes = {d[INFO_HASH] for d in shakes.values() if len(d) >= INFO_HASH.stop}
    both = len(shakes) == 2 and len(hashes) == 1
    evidence = ("bittorrent peer wire in the clear: "
                + ("a handshake each way with the same info hash" if both else "a handshake from one side")
                + "; file sharing, not a VPN")
    return Verdict(NAME, 0.99 if both else 0.9, evidence, midflow=False, is_vpn=False)


def _utp(f: Flow) -> Verdict | None:
    packets = f.packets  # every one a uTP header (candidates)
    syn = [p for p in packets if p.data[0] >> 4 == UTP_SYN]
    ids = [{be16(p.data, 2) for p in packets if p.dir == d and p.data[0] >> 4 != UTP_SYN} for d in (0, 1)]
    if len(ids[0]) != 1 or len(ids[1]) != 1:
        return None  # each side sends with one connection id, and both sides are seen
    (a,), (b,) = ids
    if (a - b) % 0x10000 not in (1, 0xFFFF):
        return None
    if any(be16(p.data, 2) != (a, b)[1 - p.dir] for p in syn):
        return None  # a SYN names the id its peer then sends with
    evidence = (f"bittorrent utp: {plural(len(packets), 'datagram')} with uTP v1 headers, connection ids "
                f"{a:#06x} and {b:#06x} one apart" + (", SYN seen" if syn else "") + "; file sharing, not a VPN")
    return Verdict(NAME, 0.95 if syn else 0.9, evidence, midflow=not syn, is_vpn=False)
