"""iodine: IP over DNS, a VPN whose packets travel in DNS query names and answers.

What is checked (iodine 0.7's client and server; the lab's ``iodine`` scenarios):

* **raw mode**: when the client can reach the server directly, it leaves DNS after the
  handshake and sends its own UDP datagrams to port 53, each opening with the 3-byte raw
  header 0x10 0xd1 0x9e and a command byte (login 0x1_, data 0x2_, ping 0x3_; the low
  nibble is the user id). Random bytes give that header once in 2^24 datagrams; two such
  datagrams name the flow (0.95 when both sides send them);
* **the DNS handshake**: before any data the client probes which bytes the path keeps,
  with DNS queries whose first label carries fixed test strings (the German
  "Aaahhh-Drink-mal-ein-Jägermeister" and the French "La-flûte-naïve-française-est-retirée-à-Crète",
  right after a 5-character prefix, at byte 18 of the message), and the server answers
  the downstream check with a fixed pattern (four 0x00, four 0xff, four 0x55, four 0xaa);
  the version query (a name starting ``v``) is answered ``VACK``, ``VNAK`` or ``VFUL``. No
  other software sends these; one of them in a DNS message of one question names the flow
  (the test strings or the pattern 0.95, a version answer 0.9);
* **data in 8-bit names**: where the path keeps every byte, iodine encodes upstream data
  in Base128, so its query names carry bytes 0x80-0xff in labels of up to 63 bytes. Host
  names never do (internationalised names travel as ``xn--`` ASCII); three queries whose
  first label is at least 32 bytes long and at least a quarter 8-bit name a tunnel caught
  mid-way (0.85).

Not seen: a flow caught after the handshake that encodes its names in Base32 or Base64
(ordinary characters, like a long random host name) and never went raw; other DNS
tunnels (dnscat2, dns2tcp), whose encodings are ASCII. iodine does not encrypt: the
tunnel's packets are compressed, not sealed, but the flow is a VPN all the same: it
carries its users' IP traffic out of the network.
"""

from __future__ import annotations

import numpy as np

from classifier.signatures._base import DNS_HEADER, UDP, BatchView, Flow, Verdict, one_question, plural

NAME = "iodine"
RAW_HEADER = b"\x10\xd1\x9e"
RAW_COMMANDS = (0x10, 0x20, 0x30)  # login, data, ping (high nibble of byte 3)
#: Where the upstream codec checks put their test strings: the question's first label,
#: after its length byte and the 5-character command prefix.
CHECK_AT = DNS_HEADER + 1 + 5
UPSTREAM_CHECKS = (b"A-Aaahhh-Drink-mal-ein-J\xe4germeister", b"A-La-fl\xfbte-na\xefve-fran\xe7aise")
DOWNSTREAM_CHECK = b"\x00\x00\x00\x00\xff\xff\xff\xffUUUU\xaa\xaa\xaa\xaa"
VERSION_ANSWERS = (b"VACK", b"VNAK", b"VFUL")
#: Base128 data labels: long, and a good share of their bytes 8-bit.
MIN_DATA_LABEL = 32
MIN_8BIT_SHARE = 0.25
MIN_DATA_QUERIES = 3


def candidates(v: BatchView) -> np.ndarray:
    """UDP flows with a raw-mode header, or DNS messages of one question with an upstream codec
    check at byte 18 or, in at least three, a long first label (the 8-bit test is ``check``'s)."""
    raw = v.starts_with(RAW_HEADER)
    question = v.one_question()
    checks = v.starts_with(UPSTREAM_CHECKS[0], at=CHECK_AT) | v.starts_with(UPSTREAM_CHECKS[1], at=CHECK_AT)
    first = v.data[:, :, DNS_HEADER]
    long_label = question & (first >= MIN_DATA_LABEL) & (first < 64)
    return v.udp & (v.any_slot(raw | (question & checks)) | (long_label.sum(axis=1) >= MIN_DATA_QUERIES))


def _is_query(m: bytes) -> bool:
    return one_question(m) and not m[2] & 0x80


def _eight_bit_label(m: bytes) -> bool:
    """The first label of the question is long and a good share of its stored bytes is 8-bit."""
    n = m[DNS_HEADER]
    label = m[DNS_HEADER + 1:DNS_HEADER + 1 + n]
    return MIN_DATA_LABEL <= n < 64 and len(label) >= 16 and \
        sum(b >= 0x80 for b in label) >= MIN_8BIT_SHARE * len(label)


def check(f: Flow) -> Verdict | None:
    if f.proto != UDP:
        return None
    raw = [p for p in f.packets if p.data.startswith(RAW_HEADER) and len(p.data) > 3
           and p.data[3] & 0xF0 in RAW_COMMANDS]
    messages = [p.data for p in f.packets if one_question(p.data)]
    checks = sum(1 for m in messages if m[CHECK_AT:].startswith(UPSTREAM_CHECKS))
    downstream = sum(1 for m in messages if m[2] & 0x80 and DOWNSTREAM_CHECK in m)
    version = sum(1 for m in messages if m[2] & 0x80 and m[DNS_HEADER + 1:DNS_HEADER + 2] in (b"v", b"V")
                  and any(a in m for a in VERSION_ANSWERS))
    data = sum(1 for m in messages if _is_query(m) and _eight_bit_label(m))
    handshake = checks + downstream + version
    if len(raw) < 2 and not handshake and data < MIN_DATA_QUERIES:
        return None
    parts = []
    if handshake:
        parts.append("handshake in DNS: " + ", ".join(s for s in (
            checks and f"{plural(checks, 'upstream codec check')} (its fixed test strings)",
            downstream and f"{plural(downstream, 'downstream check answer')} (its fixed pattern)",
            version and f"{plural(version, 'version answer')} (VACK/VNAK/VFUL)") if s))
    if data:
        parts.append(f"{data} {'query' if data == 1 else 'queries'} with data in 8-bit names (Base128)")
    if raw:
        ways = len({p.dir for p in raw})
        parts.append(f"{plural(len(raw), 'raw-mode datagram')} behind the 0x10d19e header "
                     f"({'both ways' if ways == 2 else 'one way'})")
    # the test strings and the raw header both ways are iodine's alone; a version answer is
    # a 4-letter word in an answer to a name starting "v"; 8-bit names alone, an encoding
    confidence = 0.95 if checks or downstream or len({p.dir for p in raw}) == 2 else 0.9 if version or raw else 0.85
    # the start was seen if the DNS handshake was, or raw mode's login that follows it
    login = any(p.data[3] & 0xF0 == RAW_COMMANDS[0] for p in raw)
    return Verdict(NAME, confidence, "iodine ip over dns: " + "; ".join(parts), midflow=not (handshake or login))
