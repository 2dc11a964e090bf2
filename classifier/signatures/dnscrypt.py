"""DNSCrypt v2: encrypted DNS, random-looking from its first byte, and no VPN.

Why a signature for something that is not a VPN: a DNSCrypt query is a client magic, a
public key, a nonce and a ciphertext, random from the first byte like a fully encrypted
proxy's first packet, and the model alone took a DNSCrypt exchange of the public corpus
for a tunnel. The protocol (dnscrypt.info, "DNSCrypt version 2 protocol specification")
names itself in the answer: every response starts with the 8-byte resolver magic
``r6fnvWj8``, then a 24-byte nonce whose first 12 bytes are the client's nonce, which the
query carried at bytes 40-51 (after the 8-byte client magic and the 32-byte client key).
Over TCP each message is preceded by a 2-byte length. A response that starts with the
magic names the flow (random bytes do that with probability 2^-64); a query whose nonce
the response echoes makes it certain. The verdict has ``is_vpn`` False: the flow is
explained and does not go to the model (``pipeline.signature_split``).
"""

from __future__ import annotations

import numpy as np

from classifier.signatures._base import TCP, UDP, BatchView, Flow, Verdict, plural

NAME = "dnscrypt"
RESOLVER_MAGIC = b"r6fnvWj8"
#: Where the client's half nonce sits in a query: after the client magic (8) and key (32).
QUERY_NONCE = slice(40, 52)
#: ... and in a response: right after the resolver magic.
RESPONSE_NONCE = slice(8, 20)
#: The shortest response: magic, the full 24-byte nonce and a 16-byte authenticator.
MIN_RESPONSE = 8 + 24 + 16
#: Bytes before a message over TCP (its length).
TCP_PREFIX = 2


def candidates(v: BatchView) -> np.ndarray:
    """UDP flows with a payload starting with the resolver magic, TCP flows with one 2 bytes in."""
    udp = v.any_slot(v.starts_with(RESOLVER_MAGIC) & (v.lens >= MIN_RESPONSE))
    tcp = v.any_slot(v.starts_with(RESOLVER_MAGIC, at=TCP_PREFIX))
    return (v.udp & udp) | (v.tcp & tcp)


def check(f: Flow) -> Verdict | None:
    if f.proto not in (UDP, TCP):
        return None
    prefix = TCP_PREFIX if f.proto == TCP else 0
    messages = [(p, p.data[prefix:]) for p in f.packets]
    responses = [m for p, m in messages if m.startswith(RESOLVER_MAGIC) and (prefix or p.len >= MIN_RESPONSE)]
    if not responses:
        return None
    queries = {m[QUERY_NONCE] for _, m in messages if not m.startswith(RESOLVER_MAGIC)}
    echoed = sum(1 for r in responses if len(r) >= RESPONSE_NONCE.stop and r[RESPONSE_NONCE] in queries)
    evidence = (f"dnscrypt v2 over {'tcp' if prefix else 'udp'}: {plural(len(responses), 'response')} "
                f"starting with the resolver magic {RESOLVER_MAGIC.decode()}")
    if echoed:
        evidence += f", {echoed} echoing its query's client nonce"
    return Verdict(NAME, 0.99 if echoed else 0.9, evidence + "; encrypted DNS, not a VPN", midflow=False,
                   is_vpn=False)
