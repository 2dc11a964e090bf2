"""tinc: its meta protocol over TCP starts with clear-text ID lines.

Each side opens with ``0 <name> 17[.minor]\\n`` (ID request, protocol 17), then the
``1 ...`` METAKEY line (tinc src/protocol_auth.c). Both the ID line and, when
captured, the METAKEY line are checked. The side that answers often sends both in one
segment, longer than the payload head: an ID line in a cut head counts only when the
METAKEY line follows it there. The UDP data flows of the same peers are
associated afterwards by ``classifier.signatures.detect`` (same addresses, a port of
the TCP connection), because their payload is encrypted from the first byte.
"""

from __future__ import annotations

import re

import numpy as np

from classifier.signatures._base import TCP, BatchView, Flow, Verdict

NAME = "tinc"
_ID = re.compile(rb"^0 [A-Za-z0-9_]{1,64} 17(\.[0-9]{1,3})?\n")
_METAKEY = re.compile(rb"^1 [0-9]+ [0-9]+ [0-9]+ [0-9]+ [0-9A-F]")


def candidates(v: BatchView) -> np.ndarray:
    return v.tcp & v.any_slot(v.starts_with(b"0 "))


def check(f: Flow) -> Verdict | None:
    if f.proto != TCP:
        return None
    ids = metakeys = 0
    for d in (0, 1):
        ps = f.of(d)
        if not ps:
            continue
        first = ps[0].data
        line = _ID.match(first)
        if line is None:
            continue
        if len(first) == ps[0].len:  # the whole payload in the head; METAKEY in the next packet
            ids += 1
            if len(ps) > 1 and _METAKEY.match(ps[1].data):
                metakeys += 1
        elif _METAKEY.match(first[line.end():]):  # both in one segment, as tinc 1.0's server answers
            ids += 1
            metakeys += 1
    if ids == 0 or (ids == 1 and len(f.directions) == 2):
        return None
    conf = 0.97 if ids == 2 and metakeys else 0.9 if ids == 2 else 0.75
    ev = f"tinc tcp: {ids} ID lines ('0 <name> 17'), {metakeys} METAKEY lines"
    return Verdict(NAME, conf, ev, midflow=False)
