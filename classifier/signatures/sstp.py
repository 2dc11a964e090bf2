"""SSTP (Microsoft Secure Socket Tunneling Protocol), where its HTTP layer is visible.

SSTP runs inside TLS, so normally nothing is in clear text. Behind a TLS-terminating
proxy, or in captures decrypted upstream, the connection starts with the HTTP verb
``SSTP_DUPLEX_POST`` on ``/sra_{BA195980-CD49-458b-9E23-C84EE0ADCD75}/``, and the
SSTP packets that follow start with version 0x10 and a C bit.
"""

from __future__ import annotations

import numpy as np

from classifier.signatures._base import TCP, BatchView, Flow, Verdict

NAME = "sstp"
_VERB = b"SSTP_DUPLEX_POST "
_URI = b"/sra_{BA195980-CD49-458B-9E23-C84EE0ADCD75}/"


def candidates(v: BatchView) -> np.ndarray:
    return v.tcp & v.any_slot(v.starts_with(_VERB))


def check(f: Flow) -> Verdict | None:
    if f.proto != TCP:
        return None
    first = f.of(0)[:1] + f.of(1)[:1]
    req = next((p for p in first if p.data.startswith(_VERB)), None)
    if req is None:
        return None
    uri_ok = req.data[len(_VERB):].upper().startswith(_URI)
    ev = f"sstp: clear-text SSTP_DUPLEX_POST request{' to the SSTP URI' if uri_ok else ''}"
    return Verdict(NAME, 0.97 if uri_ok else 0.85, ev, midflow=False)
