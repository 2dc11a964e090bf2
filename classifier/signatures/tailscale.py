"""Tailscale: WireGuard plus its own "disco" messages on the same UDP socket.

A disco message (tailscale disco/disco.go) starts with the 6-byte magic
``TS`` + U+1F4AC in UTF-8, then the sender's 32-byte disco public key and a
24-byte nonce, then a NaCl box (at least 16 bytes of tag). WireGuard flows that
carry disco messages, or that use Tailscale's port 41641, are labelled
``tailscale`` by wireguard.py; this module labels flows made of disco messages only
(path discovery before or without WireGuard data).
"""

from __future__ import annotations

import numpy as np

from classifier.signatures._base import UDP, BatchView, Flow, Packet, Verdict

NAME = "tailscale"
DISCO_MAGIC = b"TS\xf0\x9f\x92\xac"
TAILSCALE_PORT = 41641
_MIN_DISCO = len(DISCO_MAGIC) + 32 + 24 + 16


def is_disco(p: Packet) -> bool:
    return p.data.startswith(DISCO_MAGIC) and p.len >= _MIN_DISCO


def candidates(v: BatchView) -> np.ndarray:
    return v.udp & v.any_slot(v.starts_with(DISCO_MAGIC) & (v.lens >= _MIN_DISCO))


def check(f: Flow) -> Verdict | None:
    if f.proto != UDP:
        return None
    disco = [p for p in f.packets if is_disco(p)]
    if not disco:
        return None
    keys = {p.data[6:38] for p in disco if len(p.data) >= 38}
    # A sender keeps one disco key per direction; more keys than directions is not Tailscale.
    if len(keys) > len({p.dir for p in disco}):
        return None
    conf = 0.95 if len(disco) >= 2 else 0.85
    evidence = (f"tailscale udp: {len(disco)} disco messages (magic, constant sender key); "
                f"{len(f.packets) - len(disco)} other payload packets")
    return Verdict(NAME, conf, evidence, midflow=False)
