"""dns2tcp: TCP relayed over DNS, named by the commands its client writes into query names.

What is checked (dns2tcp 0.5; the lab's ``dns2tcp``): the client opens a session with
queries whose second label is a command, ``=auth`` (the key exchange, twice) then
``=connect`` (the resource to reach), after a first label of Base64 data, under the
tunnel's domain; the server echoes the question in its TXT answers. A label that starts
with ``=`` is no host name, and these words are dns2tcp's: one such query or answer in a
DNS message of one question names the flow, both ``=auth`` and ``=connect`` make it
certain.

Not seen: a session caught after its commands (the data queries carry only Base64 labels,
like a long random host name); other DNS relays.
"""

from __future__ import annotations

import numpy as np

from classifier.signatures._base import DNS_HEADER, UDP, BatchView, Flow, Verdict, one_question

NAME = "dns2tcp"
COMMANDS = (b"=auth", b"=connect", b"=resources")


def candidates(v: BatchView) -> np.ndarray:
    """UDP flows with a DNS message of one question whose second label starts with ``=`` (after
    the first label's length byte at 12 and the label itself), where the stored head reaches it."""
    first = v.data[:, :, DNS_HEADER].astype(np.intp)
    at = DNS_HEADER + 1 + first + 1  # the second label's first byte, after its length byte
    inside = v.one_question() & (first > 0) & (first < 64) & (at < v.caps)
    mark = np.take_along_axis(v.data, np.minimum(at, v.data.shape[2] - 1)[:, :, None], axis=2)[:, :, 0]
    return v.udp & v.any_slot(inside & (mark == ord("=")))


def _command(m: bytes) -> bytes | None:
    """The dns2tcp command a DNS message of one question names in its second label."""
    if not one_question(m):
        return None
    first = m[DNS_HEADER]
    if not 0 < first < 64:
        return None
    second = DNS_HEADER + 1 + first
    label = m[second + 1:second + 1 + m[second]] if second < len(m) else b""
    return label if label in COMMANDS else None


def check(f: Flow) -> Verdict | None:
    if f.proto != UDP:
        return None
    seen = [c for c in (_command(p.data) for p in f.packets) if c]
    if not seen:
        return None
    words = sorted(set(seen), key=COMMANDS.index)
    evidence = (f"dns2tcp tcp over dns: {len(seen)} DNS messages naming its commands "
                f"({', '.join(w.decode() for w in words)}) in the question's second label")
    sure = {b"=auth", b"=connect"} <= set(seen)
    return Verdict(NAME, 0.95 if sure else 0.9, evidence, midflow=False)
