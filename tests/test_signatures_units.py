"""Protocol signatures on hand-built flows: each one fires on its protocol, on any port,
mid-flow where the protocol allows, and stays silent on look-alikes and port-only cases."""

from __future__ import annotations

import struct

import pytest
from _sigflows import F, batch, rand, tcp_framed

from classifier.signatures import detect, detect_verdicts

TIME = struct.pack("!I", 1_700_000_000)


def one(flow: F):
    return detect_verdicts(batch(flow))[0]


# --- WireGuard ---------------------------------------------------------------------------

def wg_init(sender: int, seed: int = 1) -> bytes:
    return b"\x01\0\0\0" + struct.pack("<I", sender) + rand(140, seed)


def wg_resp(sender: int, receiver: int, seed: int = 2) -> bytes:
    return b"\x02\0\0\0" + struct.pack("<I", sender) + struct.pack("<I", receiver) + rand(80, seed)


def wg_data(receiver: int, counter: int, blocks: int = 4) -> bytes:
    return b"\x04\0\0\0" + struct.pack("<I", receiver) + struct.pack("<Q", counter) + rand(16 * blocks + 16, counter)


def wg_session(n: int = 6, start: int = 0) -> list[tuple[int, bytes]]:
    pk = []
    for i in range(n):
        pk.append((0, wg_data(0xBBBB, start + i)))
        pk.append((1, wg_data(0xAAAA, start + i, 2)))
    return pk


@pytest.mark.parametrize("port", [51820, 443, 53, 12345])
def test_wireguard_handshake_any_port(port):
    v = one(F([(0, wg_init(0xAAAA)), (1, wg_resp(0xBBBB, 0xAAAA)), *wg_session(4)], dport=port))
    assert v.protocol == "wireguard" and v.confidence >= 0.99 and not v.midflow
    assert "matching indices" in v.evidence


def test_wireguard_midflow_transport_only():
    v = one(F(wg_session(6, start=5000)))
    assert v.protocol == "wireguard" and v.midflow and v.confidence >= 0.9


def test_wireguard_keepalive_and_mtu_sized_messages():
    pk = [(0, wg_data(7, i, 0)) for i in range(3)] + [(1, b"\x04\0\0\0" + struct.pack("<IQ", 9, i) +
                                                       rand(1452 - 16, i)) for i in range(3)]
    assert one(F(pk)).protocol == "wireguard"


def test_wireguard_rejects_counter_going_back_and_foreign_packets():
    pk = [(0, wg_data(7, c)) for c in (5, 4, 3, 2)]
    assert one(F(pk)) is None
    pk = [(0, wg_data(7, c)) for c in range(4)] + [(1, rand(100, 3))]
    assert one(F(pk)) is None


def test_wireguard_port_alone_is_nothing():
    assert one(F([(0, rand(1200, i)) for i in range(8)] + [(1, rand(80, 99))], dport=51820)) is None


def test_wireguard_rekey_starts_new_session():
    pk = [*wg_session(3), (0, wg_init(0xCCCC, 5)), (1, wg_resp(0xDDDD, 0xCCCC, 6))]
    pk += [(0, wg_data(0xDDDD, 0)), (1, wg_data(0xCCCC, 0))]
    v = one(F(pk))
    assert v.protocol == "wireguard" and v.confidence >= 0.99


def test_tailscale_disco_plus_wireguard():
    disco = b"TS\xf0\x9f\x92\xac" + rand(32, 1) + rand(24, 2) + rand(40, 3)
    disco2 = b"TS\xf0\x9f\x92\xac" + rand(32, 4) + rand(24, 5) + rand(40, 6)
    v = one(F([(0, disco), (1, disco2), *wg_session(3)], sport=41641, dport=41641))
    assert v.protocol == "tailscale" and v.is_vpn
    v = one(F([(0, disco), (1, disco2)], dport=3478))
    assert v.protocol == "tailscale"


def test_cloudflare_warp_variant():
    pk = [(0, b"\xc4\x02\x78\x00" + struct.pack("<IQ", 0x11, i) + rand(60 + i, i)) for i in range(5)]
    v = one(F(pk, dport=2408))
    assert v.protocol == "wireguard-warp" and v.is_vpn


# --- OpenVPN -----------------------------------------------------------------------------

SID_C, SID_S = rand(8, 11), rand(8, 12)


def ovpn_plain_handshake() -> list[tuple[int, bytes]]:
    return [
        (0, b"\x38" + SID_C + b"\x00" + b"\0\0\0\0"),
        (1, b"\x40" + SID_S + b"\x01" + b"\0\0\0\0" + SID_C + b"\0\0\0\0"),
        (0, b"\x28" + SID_C + b"\x01" + b"\0\0\0\0" + SID_S),
        (0, b"\x20" + SID_C + b"\x00" + b"\0\0\0\x01" + b"\x16\x03\x01" + rand(200, 1)),
        (1, b"\x20" + SID_S + b"\x01" + b"\0\0\0\x01" + SID_C + b"\0\0\0\x01" + b"\x16\x03\x03" + rand(900, 2)),
        (0, b"\x48\0\0\x01" + b"\0\0\0\x01" + rand(100, 3)),
        (1, b"\x48\0\0\x01" + b"\0\0\0\x01" + rand(100, 4)),
    ]


@pytest.mark.parametrize("port", [1194, 443, 53])
def test_openvpn_udp_plain_handshake(port):
    v = one(F(ovpn_plain_handshake(), dport=port))
    assert v.protocol == "openvpn" and v.confidence >= 0.99
    assert "session ids echoed" in v.evidence and "no HMAC" in v.evidence


def test_openvpn_tcp_records_split_and_merged():
    recs = [p for _, p in ovpn_plain_handshake()]
    client = tcp_framed(recs[0]) , tcp_framed(recs[2], recs[3]), tcp_framed(recs[5])
    server = tcp_framed(recs[1]), tcp_framed(recs[4]) + tcp_framed(recs[6])
    pk = [(0, client[0]), (1, server[0]), (0, client[1]), (1, server[1]), (0, client[2])]
    v = one(F(pk, proto=6, dport=443))
    assert v.protocol == "openvpn" and "tcp" in v.evidence and v.confidence >= 0.95


def test_openvpn_tls_auth_and_tls_crypt():
    hmac = rand(20, 5)
    c = [(0, b"\x38" + SID_C + hmac + struct.pack("!I", i + 1) + TIME + b"\x00\0\0\0\0") for i in range(1)]
    s = [(1, b"\x40" + SID_S + hmac + b"\0\0\0\x01" + TIME + b"\x01\0\0\0\0" + SID_C + b"\0\0\0\0")]
    more = [(0, b"\x20" + SID_C + hmac + struct.pack("!I", i + 2) + TIME + rand(60, i)) for i in range(3)]
    v = one(F(c + s + more))
    assert v.protocol == "openvpn" and "tls-auth (HMAC 160 bit)" in v.evidence
    crypt = [(0, b"\x38" + SID_C + b"\0\0\0\x01" + TIME + rand(80, 1)),
             (1, b"\x40" + SID_S + b"\0\0\0\x01" + TIME + rand(80, 2)),
             (0, b"\x20" + SID_C + b"\0\0\0\x02" + TIME + rand(300, 3)),
             (1, b"\x20" + SID_S + b"\0\0\0\x02" + TIME + rand(900, 4))]
    v = one(F(crypt))
    assert v.protocol == "openvpn" and "tls-crypt" in v.evidence


def test_openvpn_midflow_data_v2():
    pk = []
    for i in range(6):
        pk.append((0, b"\x48\x14\x1e\x8a" + struct.pack("!I", 100 + i) + rand(120, i)))
        pk.append((1, b"\x48\x14\x1e\x8a" + struct.pack("!I", 200 + i) + rand(120, 50 + i)))
    v = one(F(pk, dport=8443))
    assert v.protocol == "openvpn" and v.midflow and "peer id" in v.evidence


def test_openvpn_rejects_repeats_and_port_only():
    raknet = b"\x08\x00\xff\xff\x00\xfe\xfe\xfe\xfe\xfd\xfd\xfd\xfd\x12\x34\x56\x78" + rand(18, 1)
    assert one(F([(0, raknet)] * 3)) is None
    assert one(F([(0, rand(300, i)) for i in range(6)] + [(1, rand(300, 9))], dport=1194)) is None
    # data-v2 shape whose "packet id" jumps around is not enough on one direction
    pk = [(0, b"\x48\0\0\x01" + rand(100, i)) for i in range(4)]
    assert one(F(pk)) is None


# --- IPsec -------------------------------------------------------------------------------

ISPI, RSPI = rand(8, 21), rand(8, 22)


def ike(ispi: bytes, rspi: bytes, exch: int, flags: int, msgid: int, body: int, ver: int = 0x20,
        nxt: int = 33) -> bytes:
    length = 28 + body
    return ispi + rspi + bytes([nxt, ver, exch, flags]) + struct.pack("!II", msgid, length) + rand(body, body)


def test_ikev2_sa_init_any_port():
    pk = [(0, ike(ISPI, b"\0" * 8, 34, 0x08, 0, 300)), (1, ike(ISPI, RSPI, 34, 0x20, 0, 280))]
    for port in (500, 9999):
        v = one(F(pk, dport=port, sport=port))
        assert v.protocol == "ipsec-ike" and v.confidence >= 0.99 and not v.midflow


def test_ikev1_main_mode_and_natt_with_esp():
    v = one(F([(0, ike(ISPI, b"\0" * 8, 2, 0, 0, 100, ver=0x10, nxt=1)),
               (1, ike(ISPI, RSPI, 2, 0, 0, 80, ver=0x10, nxt=1))], dport=500))
    assert v.protocol == "ipsec-ike" and "IKEv1" in v.evidence
    natt = [(0, b"\0\0\0\0" + ike(ISPI, RSPI, 35, 0x08, 1, 200)),
            (1, b"\0\0\0\0" + ike(ISPI, RSPI, 35, 0x20, 1, 180)),
            (0, b"\xff")]
    natt += [(0, b"\xc0\x01\x02\x03" + struct.pack("!I", i + 1) + rand(100, i)) for i in range(4)]
    v = one(F(natt, dport=4500, sport=4500))
    assert v.protocol == "ipsec-ike" and "NAT-T" in v.evidence and "ESP-in-UDP" in v.evidence


def test_ike_length_mismatch_and_bad_version_rejected():
    # the initiator's IKE_AUTH, one direction (a tap on one leg): found while its header is valid
    good = ike(ISPI, RSPI, 35, 0x08, 1, 300)
    assert one(F([(0, good)], dport=500)).protocol == "ipsec-ike"
    bad = bytearray(good)
    bad[27] ^= 1
    assert one(F([(0, bytes(bad))], dport=500)) is None
    bad = bytearray(good)
    bad[17] = 0x30
    assert one(F([(0, bytes(bad))], dport=500)) is None


def test_an_unanswered_ike_initiation_is_no_tunnel():
    """nmap's and ike-scan's probes, or a client nobody answered: first messages only, one way, repeated."""
    main_mode = ike(ISPI, b"\0" * 8, 2, 0, 0, 300, ver=0x10, nxt=1)
    aggressive = ike(ISPI, b"\0" * 8, 4, 0, 0, 400, ver=0x10, nxt=1)
    sa_init = ike(ISPI, b"\0" * 8, 34, 0x08, 0, 300)
    for msg, port in ((main_mode, 500), (aggressive, 500), (sa_init, 500), (b"\0\0\0\0" + sa_init, 4500)):
        assert one(F([(0, msg)] * 3, dport=port)) is None, port
    # the same first message answered, or followed by the initiator's IKE_AUTH, is a key exchange
    answered = one(F([(0, sa_init), (1, ike(ISPI, RSPI, 34, 0x20, 0, 280))], dport=500))
    assert answered.is_vpn and answered.confidence >= 0.99
    progressed = one(F([(0, sa_init), (0, ike(ISPI, RSPI, 35, 0x08, 1, 200))], dport=500))
    assert progressed.is_vpn and "one direction captured" in progressed.evidence
    # one-way NAT-T with ESP after the first message: a tunnel seen from one leg
    esp_after = [(0, b"\0\0\0\0" + sa_init)] + [(0, struct.pack("!II", 0xC0010203, i + 1) + rand(100, i))
                                                   for i in range(4)]
    assert one(F(esp_after, dport=4500)).is_vpn


def esp(spi: int, seq: int, n: int = 120) -> bytes:
    return struct.pack("!II", spi, seq) + rand(n, seq)


def test_esp_needs_spi_and_sequence():
    v = one(F([(0, esp(0x1234, i + 1)) for i in range(5)] + [(1, esp(0x9876, i + 1)) for i in range(5)],
              proto=50, sport=None, dport=None))
    assert v.protocol == "ipsec-esp" and v.confidence >= 0.95
    # protocol 50 with random bytes: no SPI/sequence pattern
    assert one(F([(0, rand(120, i)) for i in range(5)], proto=50, sport=None, dport=None)) is None
    # one packet: reported, with low confidence
    v = one(F([(0, esp(0x1234, 1))], proto=50, sport=None, dport=None))
    assert v.protocol == "ipsec-esp" and v.confidence < 0.7 and "single packet" in v.evidence


def test_esp_in_udp_midflow():
    pk = [(0, esp(0xC0DE0001, 5000 + i)) for i in range(5)] + [(1, esp(0xBEEF0002, 7000 + i)) for i in range(5)]
    v = one(F(pk, sport=4500, dport=4500))
    assert v.protocol == "ipsec-esp" and v.midflow


def test_ah():
    pk = [(0, bytes([4, 4, 0, 0]) + struct.pack("!II", 0x5555, i + 1) + rand(112, i)) for i in range(3)]
    v = one(F(pk, proto=51, sport=None, dport=None))
    assert v.protocol == "ipsec-ah" and "tunnel mode" in v.evidence


# --- L2TP, PPTP, GRE, others ---------------------------------------------------------------

def l2tp_ctrl(mtype: int, tid: int = 0, ns: int = 0) -> bytes:
    avp = struct.pack("!HHHH", 0x8008, 0, 0, mtype)
    body = struct.pack("!HHHH", tid, 0, ns, 0) + avp + rand(20, mtype)
    return struct.pack("!HH", 0xC802, 4 + len(body)) + body


def test_l2tp_control_and_data():
    v = one(F([(0, l2tp_ctrl(1)), (1, l2tp_ctrl(2, 7))], sport=1701, dport=1701))
    assert v.protocol == "l2tp" and v.confidence >= 0.99
    data = [(0, struct.pack("!HHH", 0x0002, 7, 9) + b"\xff\x03\x00\x21" + rand(60, i)) for i in range(3)]
    v = one(F(data, sport=33000, dport=33001))
    assert v.protocol == "l2tp" and v.midflow


def pptp_ctrl(ctype: int, length: int = 156) -> bytes:
    return struct.pack("!HHIHH", length, 1, 0x1A2B3C4D, ctype, 0) + rand(length - 12, ctype)


#: nmap's UDP payload for 1701 (nmap-payloads: "L2TP ICRQ"; its message type AVP says SCCRQ)
NMAP_L2TP_PROBE = (b"\xc8\x02\x00\x3c\x00\x00\x00\x00\x00\x00\x00\x00\x80\x08\x00\x00\x00\x00\x00"
                   b"\x01\x80\x08\x00\x00\x00\x02\x01\x00\x80\x0e\x00\x00\x00\x07"
                   b"nxp-scan\x80\x0a\x00\x00\x00\x03\x00\x00\x00\x03\x80\x08\x00\x00\x00\x09\x00\x00")


def test_an_unanswered_l2tp_request_is_no_tunnel():
    assert len(NMAP_L2TP_PROBE) == 0x3C
    for copies in (1, 2, 3):
        assert one(F([(0, NMAP_L2TP_PROBE)] * copies, dport=1701, sport=40000)) is None
    # answered (the server's SCCRP, message type 2), it is an L2TP control connection
    reply = bytearray(NMAP_L2TP_PROBE)
    reply[19] = 2
    v = one(F([(0, NMAP_L2TP_PROBE), (1, bytes(reply))], dport=1701, sport=40000))
    assert v.protocol == "l2tp" and v.is_vpn


def test_pptp_control_and_gre():
    v = one(F([(0, pptp_ctrl(1)), (1, pptp_ctrl(2))], proto=6, dport=8080))
    assert v.protocol == "pptp" and v.confidence >= 0.99
    gre = [(0, bytes([0x30, 0x01]) + struct.pack("!HHHI", 0x880B, 40, 3, i) + b"\xff\x03\x00\x21" + rand(36, i))
           for i in range(3)]
    v = one(F(gre, proto=47, sport=None, dport=None))
    assert v.protocol == "pptp" and v.is_vpn


def test_plain_gre_and_ipip_are_tunnels_not_vpn():
    inner = bytes([0x45, 0, 0, 60]) + rand(16, 1) + rand(40, 2)
    v = one(F([(0, b"\0\0\x08\x00" + inner)] * 2, proto=47, sport=None, dport=None))
    assert v.protocol == "gre" and not v.is_vpn
    v = one(F([(0, inner)], proto=4, sport=None, dport=None))
    assert v.protocol == "ipip" and not v.is_vpn
    t = detect(batch(F([(0, inner)], proto=4, sport=None, dport=None)))
    assert t.column("is_vpn").to_pylist() == [False]


def test_vxlan_tunnel():
    frame = b"\x08\0\0\0\0\0\x01\0" + rand(12, 1) + b"\x08\x00" + bytes([0x45]) + rand(40, 2)
    v = one(F([(0, frame), (1, frame)], dport=4789))
    assert v.protocol == "vxlan" and not v.is_vpn


def test_softether_and_tinc():
    v = one(F([(0, b"A"), (1, b"IP=203.0.113.9,PORT=51381"), (0, b"A"), (1, b"IP=203.0.113.9,PORT=51381")],
              dport=5004))
    assert v.protocol == "softether"
    tinc = [(0, b"0 alice 17\n"), (1, b"0 bob 17\n"), (0, b"1 94 64 0 0 5861ABF6A858\n"),
            (1, b"1 94 64 0 0 ABCDEF\n")]
    v = one(F(tinc, proto=6, dport=655))
    assert v.protocol == "tinc"
    # tinc 1.0's server answers with its ID and METAKEY lines in one segment
    answer = b"0 server 17\n1 429 672 0 0 " + b"B697B92C" * 8
    v = one(F([(0, b"0 client 17\n"), (1, answer)], proto=6, dport=655))
    assert v.protocol == "tinc" and "2 ID lines" in v.evidence and "1 METAKEY" in v.evidence


def _tai64na(seconds: int, nanos: int, attos: int) -> bytes:
    return struct.pack("!QII", (1 << 62) + seconds, nanos, attos)


def test_quicktun_nonces_rise_per_direction():
    t0 = 1_780_000_000
    up = [(0, _tai64na(t0, 1000 * i, i) + rand(80, i)) for i in range(1, 6)]
    down = [(1, _tai64na(t0, 1000 * i + 7, i) + rand(80, 10 + i)) for i in range(1, 6)]
    fragment = [(1, rand(60, 99))]  # a later IP fragment of a long datagram joins the flow with no nonce
    v = one(F(up + down + fragment, dport=2998))
    assert v.protocol == "quicktun" and "rising in 5 and 5" in v.evidence and "1 packets without one" in v.evidence
    assert one(F(up[::-1] + down, dport=2998)) is None  # a receiver drops nonces that do not grow
    assert one(F([(d, rand(100, i)) for i, d in enumerate([0, 1] * 4)], dport=2998)) is None
    bad_nanos = [(0, struct.pack("!QII", (1 << 62) + t0, 2_000_000_000 + i, 0) + rand(80, i)) for i in range(5)]
    assert one(F(bad_nanos, dport=2998)) is None


def test_anyconnect_dtls_needs_data():
    rec = [(d, bytes([23, 1, 0, 0, 1, 0, 0, 0, 0, 0, i]) + struct.pack("!H", 80) + rand(80, i))
           for i in range(6) for d in (0, 1)]
    hello = [(0, bytes([22, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]) + struct.pack("!H", 90) + rand(90, 1))]
    v = one(F(hello + rec, dport=443))
    assert v.protocol == "openconnect"
    assert one(F(hello * 3, dport=443)) is None


def test_output_table_contract():
    b = batch(F(wg_session(4)), F([(0, rand(100, 1))], dport=1194))
    t = detect(b)
    assert t.column_names == ["vpn_protocol", "is_vpn", "confidence", "evidence", "midflow"]
    assert t.num_rows == 2
    assert t.column("vpn_protocol").to_pylist() == ["wireguard", None]
    assert t.column("is_vpn").to_pylist() == [True, False]
    assert t.column("confidence").to_pylist()[1] is None
    assert 0 < t.column("confidence").to_pylist()[0] <= 1


def test_empty_batch():
    t = detect(batch())
    assert t.num_rows == 0


def test_tinc_udp_associated_with_meta_connection_only():
    tinc = [(0, b"0 alice 17\n"), (1, b"0 bob 17\n")]
    meta = F(tinc, proto=6, sport=51000, dport=655)
    data = F([(0, rand(200, i)) for i in range(4)], sport=655, dport=655)
    other = F([(0, rand(200, i)) for i in range(4)], sport=655, dport=655, dst_ip="203.0.113.99")
    v = detect_verdicts(batch(meta, data, other))
    assert [x.protocol if x else None for x in v] == ["tinc", "tinc", None]
    assert "meta connection" in v[1].evidence


# --- Telegram (MTProto obfuscated transport: named so that it is no VPN) ------------------------

def mtproto_init(tag: bytes, seed: int = 1) -> bytes:
    """A client's 64-byte connection start as Telegram's apps make it: random bytes whose
    56..59, encrypted with the key (8..39) and IV (40..55) they carry, read ``tag``."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    raw = bytearray(rand(64, seed))
    raw[0] = 0x42  # an app never starts with 0xef (unobfuscated abridged) or a text/TLS prefix
    stream = Cipher(algorithms.AES(bytes(raw[8:40])), modes.CTR(bytes(raw[40:56]))).encryptor().update(bytes(64))
    raw[56:60] = bytes(a ^ b for a, b in zip(tag, stream[56:60], strict=True))
    return bytes(raw)


def test_telegram_obfuscated_transport_is_named_and_no_vpn():
    for tag, name in ((b"\xef" * 4, "abridged"), (b"\xee" * 4, "intermediate"), (b"\xdd" * 4, "padded")):
        flow = F([(0, mtproto_init(tag) + rand(200, 2)), (1, rand(90, 3)), (0, rand(300, 4))], proto=6, dport=443)
        v = one(flow)
        assert v.protocol == "telegram" and not v.is_vpn and name in v.evidence
        t = detect(batch(flow))
        assert t.column("is_vpn").to_pylist() == [False] and t.column("vpn_protocol").to_pylist() == ["telegram"]
    # random bytes (a Shadowsocks or VMess start) do not decrypt to a tag; nor does the start of a
    # stream entered mid-way, nor a tag the client did not encrypt
    assert one(F([(0, rand(264, 5)), (1, rand(90, 6))], proto=6, dport=443)) is None
    assert one(F([(0, mtproto_init(b"\xef" * 4) + rand(200, 2))], proto=6, dport=443, syn=False)) is None
    plain = bytearray(mtproto_init(b"\xef" * 4))
    plain[56:60] = b"\xef" * 4
    assert one(F([(0, bytes(plain))], proto=6, dport=443)) is None
    # a start whose first bytes happen to be printable (one in 50 begins with four) is still one
    for seed in range(200):
        init = mtproto_init(b"\xee" * 4, seed)
        if all(0x20 <= c < 0x7F for c in init[:4]):
            break
    else:
        raise AssertionError("no seed gave a printable start")
    flow = F([(0, init + rand(200, 2)), (1, rand(90, 3))], proto=6, dport=443)
    assert one(flow).protocol == "telegram"
    assert detect(batch(flow)).column("vpn_protocol").to_pylist() == ["telegram"]
    # text is not decrypted
    assert one(F([(0, b"GET / HTTP/1.1\r\nHost: example.org\r\n" + rand(40, 7))], proto=6, dport=443)) is None


# --- DNSCrypt (encrypted DNS: named so that it is no VPN) -------------------------------------------

def dnscrypt_exchange(seed: int) -> tuple[bytes, bytes]:
    """A query (client magic, key, half nonce, ciphertext; 64-byte multiple) and the response
    (resolver magic, the client's half nonce and the server's, ciphertext)."""
    query = rand(1088, seed)
    return query, b"r6fnvWj8" + query[40:52] + rand(12 + 200, seed + 1)


def test_dnscrypt_is_named_and_no_vpn():
    q, a = dnscrypt_exchange(1)
    v = one(F([(0, q), (1, a)], dport=443))
    assert v.protocol == "dnscrypt" and not v.is_vpn and v.confidence == 0.99 and "client nonce" in v.evidence
    t = detect(batch(F([(0, q), (1, a)], dport=443)))
    assert t.column("is_vpn").to_pylist() == [False] and t.column("vpn_protocol").to_pylist() == ["dnscrypt"]
    # over TCP every message carries a 2-byte length first
    tq, ta = struct.pack(">H", len(q)) + q, struct.pack(">H", len(a)) + a
    assert one(F([(0, tq), (1, ta)], proto=6, dport=443)).protocol == "dnscrypt"
    # a capture of the answers only still shows the magic (less sure: no nonce to compare)
    only = one(F([(1, a)], dport=443))
    assert only.protocol == "dnscrypt" and only.confidence == 0.9
    # random datagrams (a fully encrypted tunnel) and a response whose magic is off by one byte are not
    assert one(F([(0, q), (1, rand(240, 9))], dport=443)) is None
    assert one(F([(0, q), (1, b"r6fnvWj9" + a[8:])], dport=443)) is None
    # the magic at the TCP offset in a UDP datagram, or at the UDP offset in a TCP stream, is not it
    assert one(F([(0, q), (1, b"\x00\xf0" + a)], dport=443)) is None
    assert one(F([(0, tq), (1, a)], proto=6, dport=443)) is None



TXT, NULL = 16, 10  # DNS record types


def dns_message(name: str | list[bytes], qtype: int, answer: bytes = b"", pad: int = 0, txid: int = 0x7355) -> bytes:
    """A DNS query of one question (``answer`` empty) or a response with one record holding
    ``answer`` (a TXT record's one string, other types' raw data). ``name`` is dotted text or
    the labels as bytes, which may hold any byte (iodine's do)."""
    labels = [label.encode() for label in name.split(".")] if isinstance(name, str) else name
    question = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
    question += struct.pack(">HH", qtype, 1)
    if not answer:
        return struct.pack(">HHHHHH", txid, 0x0100, 1, 0, 0, 0) + question + bytes(pad)
    rdata = bytes([len(answer)]) + answer if qtype == TXT else answer
    record = b"\xc0\x0c" + struct.pack(">HHIH", qtype, 1, 3600, len(rdata)) + rdata
    return struct.pack(">HHHHHH", txid, 0x8180, 1, 1, 0, 0) + question + record


def test_dnscrypt_certificate_lookup_is_named_and_no_vpn():
    """The plain-DNS fetch of the resolver's certificate (padded, sometimes asked twice) is DNSCrypt's too."""
    ask = dns_message("2.dnscrypt-cert.resolver.example", 16, pad=1400)
    cert = dns_message("2.dnscrypt-cert.resolver.example", 16, answer=b"DNSC" + rand(120, 3))
    v = one(F([(0, ask), (0, ask), (1, cert)], dport=443))
    assert v.protocol == "dnscrypt" and not v.is_vpn and v.confidence == 0.99
    assert "2 plain-DNS queries" in v.evidence and "1 answer" in v.evidence and "resolver.example" not in v.evidence
    t = detect(batch(F([(0, ask), (1, cert)], dport=443)))
    assert t.column("is_vpn").to_pylist() == [False] and t.column("vpn_protocol").to_pylist() == ["dnscrypt"]
    # unanswered (the answer lost on the path): still the lookup, less sure
    assert one(F([(0, ask)], dport=443)).confidence == 0.9
    # over TCP the message follows its 2-byte length
    tcp = one(F([(0, struct.pack(">H", len(ask)) + ask), (1, struct.pack(">H", len(cert)) + cert)], proto=6, dport=443))
    assert tcp.protocol == "dnscrypt" and "over tcp" in tcp.evidence
    # other names are ordinary DNS; the labels one byte off are not the lookup
    assert one(F([(0, dns_message("2.dnscrypt-certs.example", 16)), (1, rand(200, 4))], dport=53)) is None
    assert one(F([(0, dns_message("3.dnscrypt-cert.example", 16))], dport=53)) is None
    assert one(F([(0, dns_message("www.example.org", 1))], dport=53)) is None
    # a query from the responder is neither the initiator's lookup nor an answer (the QR bit says which)
    assert one(F([(1, ask)], dport=443)) is None
    assert one(F([(1, cert)], dport=443)).evidence.startswith("dnscrypt certificate lookup over udp: 0 plain-DNS")


# --- BitTorrent (file sharing: named so that it is no VPN) -----------------------------------------

def bt_handshake(info_hash: bytes, peer: int) -> bytes:
    return b"\x13BitTorrent protocol" + bytes(8) + info_hash + rand(20, peer)


def utp(kind: int, conn: int, seq: int, body: bytes = b"") -> bytes:
    """A uTP v1 header (type, no extension, connection id, timestamps, window, seq_nr, ack_nr) and a body."""
    return bytes([kind << 4 | 1, 0]) + struct.pack(">HIIIHH", conn, seq * 977, 1000, 65535, seq, 7) + body


def test_bittorrent_plain_handshake_is_named_and_no_vpn():
    h = rand(20, 3)
    v = one(F([(0, bt_handshake(h, 1)), (1, bt_handshake(h, 2)), (1, rand(500, 4))], proto=6, dport=51413))
    assert v.protocol == "bittorrent" and not v.is_vpn and v.confidence == 0.99 and "same info hash" in v.evidence
    assert detect(batch(F([(0, bt_handshake(h, 1))], proto=6))).column("is_vpn").to_pylist() == [False]
    assert one(F([(0, bt_handshake(h, 1)), (1, bt_handshake(rand(20, 5), 2))], proto=6)).confidence == 0.9
    # the encrypted peer wire (MSE) is random from its first byte: nothing to name
    assert one(F([(0, rand(96 + 200, 6)), (1, rand(96 + 100, 7)), (0, rand(68, 8))], proto=6)) is None
    # the handshake's text over UDP is not the TCP peer wire
    assert one(F([(0, bt_handshake(h, 1)), (1, bt_handshake(h, 2))], proto=17)) is None


def test_bittorrent_utp_connection_ids_one_apart():
    syn, data, state = 4, 0, 2
    # BEP 29: the SYN carries the initiator's receive id (c), which its peer then sends with;
    # the initiator sends everything else with c + 1
    c = 0x4A10
    session = [(0, utp(syn, c, 1)), (1, utp(state, c, 50)), *((0, utp(data, c + 1, 2 + i, rand(1000, i))) for i in range(5)),
               *((1, utp(state, c, 50)) for _ in range(3))]
    v = one(F(session, dport=6881))
    assert v.protocol == "bittorrent" and not v.is_vpn and v.confidence == 0.95 and "0x4a10" in v.evidence
    # caught mid-flow, without the SYN (either side first)
    mid = one(F(session[2:], dport=6881))
    assert mid.protocol == "bittorrent" and mid.midflow and mid.confidence == 0.9
    assert one(F([(1 - d, p) for d, p in session[2:]], sport=6881, dport=40000)).protocol == "bittorrent"
    # ids that are not one apart, a side changing its id, one side only, or a SYN naming another id: not uTP
    assert one(F([(0, utp(data, c + 5, 2)), (1, utp(state, c, 50))])) is None
    assert one(F([(0, utp(data, c + 1, 2)), (0, utp(data, c + 9, 3)), (1, utp(state, c, 50))])) is None
    assert one(F([(0, utp(data, c + 1, i)) for i in range(6)])) is None
    assert one(F([(0, utp(syn, c + 3, 1)), *session[1:]])) is None
    # a datagram that is not uTP (version 2, or an unknown extension) spoils the flow
    assert one(F([*session, (0, b"\x02" + utp(data, c + 1, 9)[1:])])) is None
    assert one(F([*session, (0, b"\x01\x09" + utp(data, c + 1, 9)[2:])])) is None
    # a WireGuard session is not claimed (its type byte is not a uTP v1 header)
    assert one(F(wg_session())).protocol == "wireguard"


def test_batch_view_starts_with_matches_a_direct_comparison():
    """The screened comparison (first byte everywhere, the rest where it matched) finds exactly
    the slots a byte-by-byte comparison finds, short stored heads and empty slots included."""
    import numpy as np

    from classifier.signatures._base import BatchView

    flows = [F([(i % 2, rand(n, i)) for i, n in enumerate((5, 40, 64, 3, 200)[: k + 1])], dport=443)
             for k in range(5)]
    prefix = b"\x012\x0ddnscrypt"
    flows.append(F([(0, bytes(12) + prefix + rand(30, 7)), (1, prefix + bytes(3)), (0, prefix[:6])], dport=443))
    v = BatchView(batch(*flows))
    for at in (0, 1, 12):
        want = np.array([[v.valid[r, s] and v.caps[r, s] >= at + len(prefix)
                          and bytes(v.data[r, s, at:at + len(prefix)]) == prefix
                          for s in range(v.data.shape[1])] for r in range(v.n)])
        assert np.array_equal(v.starts_with(prefix, at=at), want)
    assert v.starts_with(prefix, at=12)[-1].tolist()[:3] == [True, False, False]
    assert v.starts_with(prefix)[-1].tolist()[:3] == [False, True, False]


# --- KCP ------------------------------------------------------------------------------------

def kcp_segment(conv: int, cmd: int, sn: int, body: bytes = b"", token: int | None = None) -> bytes:
    """One KCP segment (ikcp.c, little-endian): id [, miHoYo's token], command, fragment, window,
    timestamp, sequence number, next expected number, data length, data."""
    ident = struct.pack("<I", conv) + (b"" if token is None else struct.pack("<I", token))
    return ident + struct.pack("<BBHIIII", cmd, 0, 128, 1000 + sn, sn, 0, len(body)) + body


def kcp_session(conv: int = 0x222AC, token: int | None = None, n: int = 4) -> list[tuple[int, bytes]]:
    push, ack = 81, 82
    out = []
    for sn in range(n):
        out.append((0, kcp_segment(conv, push, sn, rand(100 + sn, sn), token)))
        # acks travel several to a datagram
        out.append((1, kcp_segment(conv, ack, sn, token=token) + kcp_segment(conv, ack, sn, token=token)))
    return out


def test_kcp_conversation_is_named_and_no_vpn():
    v = one(F(kcp_session(), dport=4000))
    assert v.protocol == "kcp" and not v.is_vpn and v.confidence == 0.9 and not v.midflow
    assert "push 4, ack 4" in v.evidence and "0x000222ac both ways" in v.evidence
    # miHoYo's layout (a token after the id) opened by its handshake: the accept names id and token
    conv, token = 0x222AC, 0xBA9AC4CD
    connect = struct.pack(">IIIII", 0xFF, 0, token, 1234567890, 0xFFFFFFFF)
    accept = struct.pack(">IIIII", 0x145, conv, token, 1234567890, 0x14514545)
    v = one(F([(0, connect), (1, accept), *kcp_session(conv, token)], dport=22102))
    assert v.protocol == "kcp" and v.confidence == 0.95 and "token" in v.evidence
    assert "connect and accept handshake, which names that id" in v.evidence
    # an accept naming another conversation does not make it certain
    other = struct.pack(">IIIII", 0x145, conv + 1, token, 1234567890, 0x14514545)
    assert one(F([(0, connect), (1, other), *kcp_session(conv, token)])).confidence == 0.9
    # caught mid-way (no segment numbered 0) and beside datagrams of another kind
    mid = one(F([*kcp_session()[2:], (0, rand(56, 9)), (1, rand(56, 10))]))
    assert mid.protocol == "kcp" and mid.midflow and "2 other datagrams" in mid.evidence


def test_kcp_needs_one_id_both_ways_and_consistent_lengths():
    session = kcp_session()
    assert one(F([(0, p) for _, p in session])) is None  # one side only
    assert one(F(session[:2])) is None  # fewer than three segments
    # two conversation ids, a length that overruns the datagram or leaves less than a header,
    # data on an ack, an unknown command: not KCP
    assert one(F([*session, (0, kcp_segment(0x222AD, 81, 9, rand(50, 1)))])) is None
    bad_len = [(d, p[:20] + struct.pack("<I", len(p)) + p[24:]) if d == 0 else (d, p) for d, p in session]
    assert one(F(bad_len)) is None
    short_tail = [(d, p + rand(10, 2)) if d == 0 else (d, p) for d, p in session]
    assert one(F(short_tail)) is None
    assert one(F([(d, kcp_segment(0x222AC, 82, 1, rand(40, 3))) for d in (0, 1, 0, 1)])) is None
    assert one(F([(d, kcp_segment(0x222AC, 85, 1)) for d in (0, 1, 0, 1)])) is None
    # the same bytes over TCP are not KCP; a WireGuard session stays WireGuard
    assert one(F(session, proto=6)) is None
    assert one(F(wg_session())).protocol == "wireguard"


# --- iodine -----------------------------------------------------------------------------------

TOP = [b"t", b"lab", b"example"]


def base128_label(seed: int) -> bytes:
    """A 62-byte upstream data label: iodine's Base128 mixes ASCII letters and digits with 8-bit bytes."""
    return bytes(b if i % 2 else 0xBC + b % 64 for i, b in enumerate(rand(62, seed)))


def test_iodine_raw_mode_header_names_the_flow():
    raw = [(0, b"\x10\xd1\x9e\x10" + rand(16, 1)), (1, b"\x10\xd1\x9e\x10" + rand(16, 2)),
           (0, b"\x10\xd1\x9e\x20" + rand(90, 3)), (1, b"\x10\xd1\x9e\x20" + rand(900, 4)), (0, b"\x10\xd1\x9e\x30")]
    v = one(F(raw, dport=53))
    assert v.protocol == "iodine" and v.is_vpn and v.confidence == 0.95 and "both ways" in v.evidence
    assert not v.midflow and one(F(raw[2:], dport=53)).midflow  # raw mode's login opens it
    assert one(F(raw, dport=4000)).protocol == "iodine"  # any port
    assert one(F([(0, p) for _, p in raw])).confidence == 0.9  # one way
    assert one(F(raw[:1], dport=53)) is None  # one datagram
    assert one(F([(d, p[:3] + b"\x40" + p[4:]) for d, p in raw], dport=53)) is None  # not a raw command


def test_iodine_dns_handshake_and_8bit_names():
    check = b"zryaaA-Aaahhh-Drink-mal-ein-J\xe4germeister-"
    version = b"vaaaakawg5u"
    shake = [(0, dns_message([version, *TOP], NULL)), (1, dns_message([version, *TOP], NULL, answer=b"VACK" + rand(5, 1))),
             (0, dns_message([check, *TOP], NULL)), (1, dns_message([check, *TOP], NULL, answer=check))]
    v = one(F(shake, dport=53))
    assert v.protocol == "iodine" and v.confidence == 0.95 and not v.midflow
    assert "upstream codec check" in v.evidence and "version answer" in v.evidence
    # the version answer beside long ASCII (Base32) data names: the answer names it (0.9); the
    # same names with "VACK" answering another name, or the version exchange alone, are nothing
    base32 = [(0, dns_message([rand(40, i).hex().encode()[:60], *TOP], NULL, txid=i)) for i in range(4)]
    assert one(F(shake[:2] + base32, dport=53)).confidence == 0.9
    assert one(F([shake[0], (1, dns_message([b"www", *TOP], NULL, answer=b"VACK")), *base32], dport=53)) is None
    assert one(F(shake[:2], dport=53)) is None
    # caught mid-way: queries with Base128 data in their names
    data = [(d, dns_message([base128_label(i), *TOP], NULL, answer=rand(200, i) if d else b"", txid=i))
            for i in range(4) for d in (0, 1)]
    mid = one(F(data, dport=53))
    assert mid.protocol == "iodine" and mid.midflow and mid.confidence == 0.85 and "4 queries" in mid.evidence
    assert one(F(data[:4], dport=53)) is None  # two queries are not enough


def test_iodine_leaves_ordinary_dns_alone():
    # long ASCII labels (a CDN's or an anti-virus lookup's hashes, Base32 alike) and short
    # 8-bit ones (an mDNS instance name in UTF-8) are not iodine's data
    hashes = [(0, dns_message([rand(40, i).hex().encode()[:40], b"avqs", b"example"], NULL, txid=i)) for i in range(6)]
    assert one(F(hashes, dport=53)) is None
    utf8 = [(0, dns_message(["Jane’s MacBook Pro".encode(), b"_airplay", b"_tcp", b"local"], NULL, txid=i)) for i in range(6)]
    assert one(F(utf8, sport=5353, dport=5353)) is None
    # the test string over TCP is not iodine (it runs over UDP only)
    assert one(F([(0, dns_message([b"zryaaA-Aaahhh-Drink-mal-ein-J\xe4germeister-", *TOP], NULL))], proto=6)) is None


# --- tunnels in ICMP echo ---------------------------------------------------------------------

def icmp_echo(kind: int, ident: int, seq: int, payload: bytes) -> bytes:
    """An ICMP echo header (type, code, checksum left 0, identifier, sequence) and its payload."""
    return struct.pack("!BBHHH", kind, 0, 0, ident, seq) + payload


def ptunnel_packet(kind: int, ident: int, seq: int, state: int, data: bytes, magic: int = 0xDEADC0DE) -> bytes:
    """ptunnel's header after the ICMP one: magic, destination, state, ack, data length, sequence, id."""
    head = struct.pack("!IIIIIIHH", magic, 0xC612A201, 8080, state, 0, len(data), seq, ident)
    return icmp_echo(kind, ident, seq, head + data)


def test_ptunnel_header_names_the_flow_whatever_the_magic():
    client, proxy = 0x40000000, 0x80000000
    start, ack, data = 0, 1, 2
    session = [(0, ptunnel_packet(8, 0x67D7, 0, client | start, b"")),
               (1, ptunnel_packet(0, 0x67D7, 1, proxy | ack, b"")),
               (0, ptunnel_packet(8, 0x67D7, 1, client | data, b"GET /blob HTTP/1.1\r\n\r\n")),
               *((1, ptunnel_packet(0, 0x67D7, i, proxy | data, rand(1024, i))) for i in range(2, 6))]
    v = one(F(session, proto=1, sport=None, dport=None))
    assert v.protocol == "ptunnel" and v.is_vpn and v.confidence == 0.95 and not v.midflow
    assert "0xdeadc0de (ptunnel-ng's default)" in v.evidence and "client and proxy" in v.evidence
    # the original ptunnel's magic, and one set with --magic, are named alike
    other = [(d, p[:8] + struct.pack("!I", 0x12345678) + p[12:]) for d, p in session]
    assert "0x12345678, the ICMP" in one(F(other, proto=1, sport=None, dport=None)).evidence
    # caught mid-way, from the client only
    mid = one(F([(0, p) for d, p in session[2:] if d == 0] * 2, proto=1, sport=None, dport=None))
    assert mid.protocol == "ptunnel" and mid.midflow and mid.confidence == 0.9
    # the tunnel id must repeat the ICMP identifier; a state must be one of the five, a length must fit
    assert one(F([(d, p[:34] + b"\x00\x01" + p[36:]) for d, p in session], proto=1, sport=None, dport=None)) is None
    assert one(F([(d, p[:20] + struct.pack("!I", 0x40000009) + p[24:]) for d, p in session],
                 proto=1, sport=None, dport=None)) is None
    assert one(F([(d, p[:28] + struct.pack("!I", 5000) + p[32:]) for d, p in session],
                 proto=1, sport=None, dport=None)) is None


def test_ip_packets_in_echo_payloads_are_an_icmp_tunnel_and_pings_are_not():
    inner = bytes.fromhex("4500005400004000400123e90a5f01010a5f0102") + rand(64, 1)
    tunnel = [(i % 2, icmp_echo(8 if i % 2 == 0 else 0, 0xFEFF, 0, inner)) for i in range(6)]
    v = one(F(tunnel, proto=1, sport=None, dport=None))
    assert v.protocol == "icmp-tunnel" and v.is_vpn and "6 of 6 packets carry an IPv4 packet" in v.evidence
    # ordinary pings: a timestamp and a counting pattern as payload (Linux), or the alphabet (Windows)
    linux = bytes(8) + bytes(range(0x10, 0x38))
    pings = [(i % 2, icmp_echo(8 if i % 2 == 0 else 0, 0x1234, i // 2, linux)) for i in range(10)]
    assert one(F(pings, proto=1, sport=None, dport=None)) is None
    assert one(F([(0, icmp_echo(8, 1, i, b"abcdefghijklmnopqrstuvwabcdefghi")) for i in range(6)],
                 proto=1, sport=None, dport=None)) is None
    # an inner header whose length disagrees with the payload, or too few of them: not a tunnel
    for length in (900, 40):
        wrong = inner[:2] + struct.pack("!H", length) + inner[4:]
        assert one(F([(0, icmp_echo(8, 0xFEFF, 0, wrong))] * 6, proto=1, sport=None, dport=None)) is None
    assert one(F(tunnel[:2] + pings, proto=1, sport=None, dport=None)) is None


# --- dns2tcp ----------------------------------------------------------------------------------

def test_dns2tcp_commands_in_query_names():
    auth = [b"AAAAAJ4KAA", b"=auth", *TOP]
    connect = [b"VdVF9i9eAGh0dHA", b"=connect", *TOP]
    data = [(0, dns_message([b"VdUAAAACCEdFVCAvYmxvYiBIVFRQLzEuMQ0K", *TOP], NULL, txid=i)) for i in range(4)]
    session = [(0, dns_message(auth, NULL)), (1, dns_message(auth, NULL, answer=b"\x20" + rand(32, 1))),
               (0, dns_message(connect, NULL)), (1, dns_message(connect, NULL, answer=b"\x0bAVdVF9i9eAA")), *data]
    v = one(F(session, dport=53))
    assert v.protocol == "dns2tcp" and v.is_vpn and v.confidence == 0.95 and "=auth, =connect" in v.evidence
    assert one(F(session[:2] + data, dport=53)).confidence == 0.9  # the key exchange alone
    # data queries alone, a "=" in a first label, and a word that is not one of its commands: nothing
    assert one(F(data, dport=53)) is None
    assert one(F([(0, dns_message([b"=auth", *TOP], NULL))], dport=53)) is None
    assert one(F([(0, dns_message([b"AAAAAJ4KAA", b"=login", *TOP], NULL))], dport=53)) is None
