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

Before its first query a client fetches the resolver's certificate in plain DNS, on the
same port: a TXT query for ``2.dnscrypt-cert.`` + the provider's name (the first labels
of the question, at byte 12 of the message), answered by records that start ``DNSC``.
Clients pad that query (dnscrypt-proxy to 1,472 bytes), and the model alone took such
lookups over a slow path for tunnels; the question's first labels name them too.
"""

from __future__ import annotations

import numpy as np

from classifier.signatures._base import DNS_HEADER, TCP, UDP, BatchView, Flow, Verdict, plural

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
#: The first labels of a certificate lookup's question ("2", "dnscrypt-cert"), after the
#: 12-byte DNS header.
CERT_QUESTION = b"\x012\x0ddnscrypt-cert"


def candidates(v: BatchView) -> np.ndarray:
    """UDP flows with a payload starting with the resolver magic or asking for its certificate;
    TCP flows with either 2 bytes further in."""
    udp = v.any_slot((v.starts_with(RESOLVER_MAGIC) & (v.lens >= MIN_RESPONSE))
                     | v.starts_with(CERT_QUESTION, at=DNS_HEADER))
    tcp = v.any_slot(v.starts_with(RESOLVER_MAGIC, at=TCP_PREFIX)
                     | v.starts_with(CERT_QUESTION, at=TCP_PREFIX + DNS_HEADER))
    return (v.udp & udp) | (v.tcp & tcp)


def check(f: Flow) -> Verdict | None:
    if f.proto not in (UDP, TCP):
        return None
    prefix = TCP_PREFIX if f.proto == TCP else 0
    messages = [(p, p.data[prefix:]) for p in f.packets]
    responses = [m for p, m in messages if m.startswith(RESOLVER_MAGIC) and (prefix or p.len >= MIN_RESPONSE)]
    if not responses:
        return _certificate_lookup([(p.dir, m) for p, m in messages], prefix)
    queries = {m[QUERY_NONCE] for _, m in messages if not m.startswith(RESOLVER_MAGIC)}
    echoed = sum(1 for r in responses if len(r) >= RESPONSE_NONCE.stop and r[RESPONSE_NONCE] in queries)
    evidence = (f"dnscrypt v2 over {'tcp' if prefix else 'udp'}: {plural(len(responses), 'response')} "
                f"starting with the resolver magic {RESOLVER_MAGIC.decode()}")
    if echoed:
        evidence += f", {echoed} echoing its query's client nonce"
    return Verdict(NAME, 0.99 if echoed else 0.9, evidence + "; encrypted DNS, not a VPN", midflow=False,
                   is_vpn=False)


def _certificate_lookup(messages: list[tuple[int, bytes]], prefix: int) -> Verdict | None:
    """The plain-DNS fetch of a resolver's certificate: queries whose question starts
    ``2.dnscrypt-cert.``, from the flow's initiator; answers echo the question."""
    asks = [(d, m) for d, m in messages if m[DNS_HEADER:DNS_HEADER + len(CERT_QUESTION)] == CERT_QUESTION]
    queries = sum(1 for d, m in asks if d == 0 and not m[2] & 0x80)  # QR bit clear: a query
    answers = sum(1 for d, m in asks if d == 1 and m[2] & 0x80)
    if not queries and not answers:
        return None
    evidence = (f"dnscrypt certificate lookup over {'tcp' if prefix else 'udp'}: "
                f"{queries} plain-DNS {'query' if queries == 1 else 'queries'} for the resolver's certificate (2.dnscrypt-cert.*), "
                f"{plural(answers, 'answer')}; encrypted DNS set-up, not a VPN")
    return Verdict(NAME, 0.99 if queries and answers else 0.9, evidence, midflow=False, is_vpn=False)
