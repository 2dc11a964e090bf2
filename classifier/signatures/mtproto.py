"""Telegram's MTProto over its obfuscated transport: fully encrypted, and no VPN.

Why a signature for something that is not a VPN: a TCP connection that is random from
its first byte is what fully encrypted proxies (Shadowsocks, VMess) look like, and
Telegram's apps reach their servers that way too (MTProto transport obfuscation,
"obfuscated2"), so the model alone takes some Telegram connections for proxies. The
obfuscation carries its own key: the client's first 64 bytes are random, except that
encrypted with AES-256-CTR under their own bytes 8-39 as key and 40-55 as IV, bytes
56-59 come out as the transport's tag (0xefefefef abridged, 0xeeeeeeee intermediate,
0xdddddddd padded intermediate). Random bytes match with probability 3 in 2^32, so one
connection start names it. A connection to an MTProxy, whose secret is mixed into the
key, is not recognised. The verdict has ``is_vpn`` False: like plain encapsulation, the
flow is explained and does not go to the model (``pipeline.signature_split``).
"""

from __future__ import annotations

import numpy as np

from classifier.flows.head_stats import tls_record_start
from classifier.signatures._aes import ctr_keystream_block
from classifier.signatures._base import TCP, BatchView, Flow, Verdict

NAME = "telegram"
INIT_BYTES = 64
TAGS = {b"\xef\xef\xef\xef": "abridged", b"\xee\xee\xee\xee": "intermediate",
        b"\xdd\xdd\xdd\xdd": "padded intermediate"}
#: each tag is one byte four times
TAG_BYTES = np.array([tag[0] for tag in TAGS], np.uint8)
#: A first payload whose first 16 bytes are all printable is a text protocol (HTTP, SMTP, SSH's
#: banner) and skips the decryption. Random bytes pass that with probability 0.37^16, about
#: 1e-7; a test of 4 bytes (0.37^4, 1.9%) missed one Telegram connection in 50.
TEXT_BYTES = 16


def transport_tags(inits: np.ndarray) -> np.ndarray:
    """Bytes 56-59 of each 64-byte connection start (n, 64), decrypted with the key and IV it carries.

    Keystream block 3 (bytes 48-63) under key 8-39 and IV 40-55, for all rows at once.
    """
    block = ctr_keystream_block(inits[:, 8:40], inits[:, 40:56], 3)
    return inits[:, 56:60] ^ block[:, 8:12]


def candidates(v: BatchView) -> np.ndarray:
    """TCP flows whose initiator's first payload stores 64 bytes, is no TLS record or text, and
    decrypts under its own key to a transport tag."""
    first = v.nth_slot(0, 0)
    row = np.arange(v.n)
    safe = np.where(first < 0, 0, first)
    full = (first >= 0) & (v.caps[row, safe] >= INIT_BYTES) & (v.lens[row, safe] >= INIT_BYTES)
    init = v.slot_bytes(first, 0, INIT_BYTES).astype(np.uint8)
    head = init[:, :TEXT_BYTES]
    tls = tls_record_start(head, v.caps[row, safe])
    text = ((head >= 0x20) & (head < 0x7F)).all(axis=1)
    maybe = np.flatnonzero(v.tcp & full & ~tls & ~text)
    out = np.zeros(v.n, bool)
    tags = transport_tags(init[maybe])
    out[maybe] = (tags == tags[:, :1]).all(axis=1) & np.isin(tags[:, 0], TAG_BYTES)
    return out


def check(f: Flow) -> Verdict | None:
    # the 64 bytes must be the stream's first: a flow entered mid-way starts inside a message
    if f.proto != TCP or not f.tcp_start_seen:
        return None
    first = f.of(0)[:1]
    if not first or len(first[0].data) < INIT_BYTES:
        return None
    init = np.frombuffer(first[0].data[:INIT_BYTES], np.uint8)[None]
    tag = bytes(transport_tags(init)[0])
    if tag not in TAGS:
        return None
    return Verdict(NAME, 0.99, f"telegram mtproto obfuscated transport: the first 64 bytes decrypt with "
                               f"their own key to the {TAGS[tag]} tag {tag.hex()}; a messenger, not a VPN",
                   midflow=False, is_vpn=False)
