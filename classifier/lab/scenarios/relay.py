"""TURN-relayed calls: a WebRTC-style call through a real TURN server (coturn).

Why they exist: when two call peers cannot reach each other directly (symmetric NAT, a
firewall that only lets TCP 443 out), the call goes through a TURN relay, and what a
capture at the client sees is one long flow to the relay carrying the whole call, each
media packet behind a 4-byte ChannelData header (channel number, length). Over UDP
that is a tunnel's shape: encrypted datagrams behind a small fixed header, both ways,
for minutes. Over TCP and TLS (``turns:`` on 443, what corporate networks leave open)
it is a TLS stream whose records mirror small inner packets, the shape of OpenConnect's
or SoftEther's tunnel. Video calls through relays (WhatsApp, Telegram, Meet) were the
largest group of non-VPN flows in the public corpus that a model trained without them
took for VPNs.

The relay is coturn with long-term credentials. The client (``TURN_CALL``, standard
library only) allocates a relayed address with the full 401 challenge and
MESSAGE-INTEGRITY, binds a channel to the peer (or, in 40% of the varied captures, only
asks for a permission and wraps every packet in a Send indication, as older clients
do), then sends SRTP-like media through the relay: 20 ms audio packets, video frames
split into packets of up to 1200 bytes when the call has video, RTCP about once a
second, ICE consent checks every 2-5 s and an allocation refresh now and then; at the
end it releases the allocation. The peer, beside the relay in the server's namespace,
streams media back the same way, so the relay's traffic with it never crosses the
captured link.

``ice-tcp-call`` is the same call without a relay, over a direct TCP connection (ICE-TCP,
RFC 6544), each packet behind a 2-byte length (RFC 4571): the framing OpenVPN uses over
TCP, around media instead of a tunnel's packets. Like every ICE call it starts with
connectivity checks (STUN Binding requests and responses, the caller's last one
nominating the pair) before any media.
"""

from __future__ import annotations

import sys
from functools import partial

from classifier.lab.scenarios.negatives import register_negative
from classifier.lab.session import Session

TURN_PORT = 3478
TURNS_PORT = 443
PEER_PORT = 40000
ICE_TCP_PORT = 50000
USER, PASSWORD, REALM = "vpnid", "lab-call", "vpnid.lab"

#: One end of a call. ``peer IP PORT``: binds IP:PORT, waits for the relay's first datagram
#: and streams media back to where it came from. ``client MODE FRAMING SERVER PORT PEER_IP
#: PEER_PORT``: a TURN client over MODE (udp, tcp or tls), FRAMING ``channel`` or
#: ``indication``. ``ice-server IP PORT`` / ``ice-client IP PORT``: the two ends of an
#: ICE-TCP call. Every role ends with SECONDS SEED USER PASSWORD and sends the same media.
TURN_CALL = r"""
import hashlib, hmac, os, random, select, socket, ssl, struct, sys, time, zlib

MAGIC = 0x2112A442
role = sys.argv[1]
seconds, seed, user, password = float(sys.argv[-4]), int(sys.argv[-3]), sys.argv[-2], sys.argv[-1]
rng = random.Random(seed)


def attr(kind, value):
    return struct.pack("!HH", kind, len(value)) + value + bytes(-len(value) % 4)


def stun(mtype, attrs, key=None):
    # RFC 5389 message: MESSAGE-INTEGRITY (when keyed) and FINGERPRINT cover what precedes them.
    tid, body = os.urandom(12), b"".join(attrs)
    if key:
        head = struct.pack("!HHI", mtype, len(body) + 24, MAGIC) + tid
        body += attr(0x0008, hmac.new(key, head + body, hashlib.sha1).digest())
    head = struct.pack("!HHI", mtype, len(body) + 8, MAGIC) + tid
    body += attr(0x8028, struct.pack("!I", zlib.crc32(head + body) ^ 0x5354554E))
    return struct.pack("!HHI", mtype, len(body), MAGIC) + tid + body


def attributes(msg):
    out, i = {}, 20
    while i + 4 <= len(msg):
        kind, n = struct.unpack_from("!HH", msg, i)
        out.setdefault(kind, msg[i + 4:i + 4 + n])
        i += 4 + n + (-n % 4)
    return out


def xor_address(ip, port):
    raw = struct.unpack("!I", socket.inet_aton(ip))[0] ^ MAGIC
    return struct.pack("!BBHI", 0, 1, port ^ (MAGIC >> 16), raw)


class Media:
    # SRTP-like streams: audio every 20 ms, video frames, RTCP about once a second.
    def __init__(self):
        self.video = rng.random() < 0.6
        self.fps = rng.choice([15, 24, 30])
        self.frame = rng.choice([1500, 3000, 6000]) * 15 // self.fps
        self.audio = rng.choice([40, 60, 90, 120, 160])
        self.seq = {111: rng.randrange(65536), 96: rng.randrange(65536)}
        self.ssrc = {111: os.urandom(4), 96: os.urandom(4)}
        now = time.monotonic()
        self.due = {"audio": now, "video": now + 0.05, "rtcp": now + 1.0, "consent": now + rng.uniform(0.5, 2)}

    def rtp(self, pt, size, marker=False):
        self.seq[pt] = (self.seq[pt] + 1) & 0xFFFF
        head = struct.pack("!BBHI", 0x90 if pt == 96 else 0x80, pt | (0x80 if marker else 0), self.seq[pt],
                           int(time.monotonic() * 90000) & 0xFFFFFFFF) + self.ssrc[pt]
        return head + os.urandom(size) + os.urandom(10)

    def due_packets(self):
        # Everything whose time has come, and the time the next thing is due.
        now, out = time.monotonic(), []
        if now >= self.due["audio"]:
            out.append(self.rtp(111, max(20, int(rng.gauss(self.audio, self.audio / 6)))))
            self.due["audio"] += 0.02
        if self.video and now >= self.due["video"]:
            size = max(200, int(self.frame * rng.uniform(0.3, 1.8) * (5 if rng.random() < 0.03 else 1)))
            while size > 0:
                part = min(size, 1200 - 12 - 10)
                size -= part
                out.append(self.rtp(96, part, marker=size <= 0))
            self.due["video"] += 1.0 / self.fps
        if now >= self.due["rtcp"]:
            out.append(struct.pack("!BBH", 0x81, 200, 6) + self.ssrc[111] + os.urandom(rng.choice([48, 60, 88])))
            self.due["rtcp"] += rng.uniform(0.5, 1.5)
        if now >= self.due["consent"]:
            out.append(binding_request())
            self.due["consent"] += rng.uniform(2.0, 5.0)
        return out, min(self.due[k] for k in (("audio", "video", "rtcp", "consent") if self.video
                                              else ("audio", "rtcp", "consent")))


def binding_request(controlling=True, nominate=False):
    # an ICE check: USERNAME, PRIORITY, ICE-CONTROLLING or -CONTROLLED, USE-CANDIDATE when nominating
    attrs = [attr(0x0006, (os.urandom(4).hex() + ":" + os.urandom(4).hex()).encode()), attr(0x0024, os.urandom(4)),
             attr(0x802A if controlling else 0x8029, os.urandom(8))]
    return stun(0x0001, attrs + ([attr(0x0025, b"")] if nominate else []), key=os.urandom(16))


def consent_reply(data, addr):
    return stun(0x0101, [attr(0x0020, xor_address(*addr))], key=os.urandom(16))


deadline = time.monotonic() + seconds
if role == "peer":
    ip, port = sys.argv[2], int(sys.argv[3])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, port))
    sock.settimeout(60)
    _, relay = sock.recvfrom(4096)
    sock.setblocking(False)
    media, heard = Media(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - heard < 2.0:
        packets, wake = media.due_packets()
        for p in packets:
            sock.sendto(p, relay)
        while select.select([sock], [], [], 0)[0]:
            data, addr = sock.recvfrom(4096)
            heard = time.monotonic()
            if data[:2] == b"\x00\x01":
                sock.sendto(consent_reply(data, addr), relay)
        time.sleep(max(0.0, wake - time.monotonic()))
    sys.exit(0)

if role.startswith("ice-"):
    # ICE-TCP (RFC 6544): the peers talk directly over TCP, each packet behind a 2-byte length (RFC 4571)
    ip, port = sys.argv[2], int(sys.argv[3])
    if role == "ice-server":
        listener = socket.create_server((ip, port))
        listener.settimeout(60)
        sock, _ = listener.accept()
    else:
        sock = socket.create_connection((ip, port), timeout=20)

    def read_exactly(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise SystemExit("the other side hung up during the connectivity checks")
            data += chunk
        return data

    def read_framed():
        return read_exactly(int.from_bytes(read_exactly(2), "big"))

    def send_framed(*packets):
        sock.sendall(b"".join(struct.pack("!H", len(p)) + p for p in packets))

    def check(nominate=False):
        send_framed(binding_request(role == "ice-client", nominate))
        read_framed()

    def answer():
        request = read_framed()
        send_framed(consent_reply(request, sock.getpeername()))
        return attributes(request)

    # ICE connectivity checks before any media: the controlling side (the caller) checks the
    # pair a few times and nominates it (USE-CANDIDATE); the other side answers, then checks once.
    if role == "ice-client":
        for _ in range(rng.randint(2, 6)):
            time.sleep(0.05)
            check()
        check(nominate=True)
        answer()
    else:
        while 0x0025 not in answer():
            pass
        check()
    media = Media()
    while time.monotonic() < deadline:
        packets, wake = media.due_packets()
        send_framed(*packets)
        if select.select([sock], [], [], 0)[0] and not sock.recv(65535):
            break  # readable and empty: the other side hung up, the call is over
        time.sleep(max(0.0, wake - time.monotonic()))
    sock.close()
    sys.exit(0)

mode, framing, server, port, peer_ip = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
peer_port = int(sys.argv[7])
raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if mode == "udp" else socket.SOCK_STREAM)
raw.settimeout(20)
raw.connect((server, port))
if mode == "tls":
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    raw = ctx.wrap_socket(raw)
sock = raw
buf = b""


def send(frame):
    if mode != "udp":
        frame += bytes(-len(frame) % 4)  # ChannelData over a stream is padded to 4 bytes (RFC 8656)
    sock.sendall(frame) if mode != "udp" else sock.send(frame)


def frames(block):
    # Whole STUN messages and ChannelData frames received so far.
    global buf
    if mode == "udp":  # a blocking wait gives up after a second, so that a lost request is sent again
        ready = select.select([sock], [], [], 1.0 if block else 0)[0]
        return [sock.recv(65535)] if ready else []
    try:
        if block or select.select([sock], [], [], 0)[0] or (mode == "tls" and sock.pending()):
            chunk = sock.recv(65535)
            if not chunk:
                raise SystemExit("the relay closed the connection")
            buf += chunk
    except (ssl.SSLWantReadError, BlockingIOError):
        pass
    out = []
    while len(buf) >= 4:
        kind, n = struct.unpack_from("!HH", buf)
        total = 20 + n if kind < 0x4000 else 4 + n + (-n % 4)
        if len(buf) < total:
            break
        out.append(buf[:total])
        buf = buf[total:]
    return out


def request(mtype, attrs, key=None):
    message = stun(mtype, attrs, key)
    send(message)
    until = time.monotonic() + 10
    while time.monotonic() < until:
        got = frames(True)
        for f in got:
            if struct.unpack_from("!H", f)[0] in (mtype | 0x100, mtype | 0x110):
                return f
        if not got and mode == "udp":  # over UDP a request or its answer can be lost: send it again
            send(message)
    raise SystemExit(f"no answer to STUN method {mtype:#x}")


lifetime = attr(0x000D, struct.pack("!I", 600))
transport = attr(0x0019, bytes([17, 0, 0, 0]))
first = attributes(request(0x0003, [transport, lifetime]))
realm, nonce = first[0x0014], first[0x0015]
key = hashlib.md5(user.encode() + b":" + realm + b":" + password.encode()).digest()
auth = [attr(0x0006, user.encode()), attr(0x0014, realm), attr(0x0015, nonce)]
answer = request(0x0003, [transport, lifetime, *auth], key)
if struct.unpack_from("!H", answer)[0] != 0x0103:
    raise SystemExit(f"allocation refused: {attributes(answer).get(0x0009, b'')!r}")
peer = attr(0x0012, xor_address(peer_ip, peer_port))
if framing == "channel":  # ChannelBind: 4-byte ChannelData headers
    method, wrap = 0x0009, lambda p: struct.pack("!HH", 0x4000, len(p)) + p
    granted = request(method, [attr(0x000C, struct.pack("!HH", 0x4000, 0)), peer, *auth], key)
else:  # CreatePermission only: every packet in a Send indication (a 36-byte STUN header and attributes)
    method, wrap = 0x0008, lambda p: stun(0x0016, [peer, attr(0x0013, p)])
    granted = request(method, [peer, *auth], key)
if struct.unpack_from("!H", granted)[0] != method | 0x100:
    raise SystemExit(f"STUN method {method:#x} refused: {attributes(granted).get(0x0009, b'')!r}")
print("relay ready", flush=True)
sock.setblocking(False)
media, refresh = Media(), time.monotonic() + rng.uniform(5, 20)
while time.monotonic() < deadline:
    packets, wake = media.due_packets()
    for p in packets:
        send(wrap(p))
    if time.monotonic() >= refresh:
        send(stun(0x0004, [lifetime, *auth], key))
        refresh += rng.uniform(5, 20)
    frames(False)
    time.sleep(max(0.0, wake - time.monotonic()))
sock.setblocking(True)
sock.settimeout(5)
request(0x0004, [attr(0x000D, struct.pack("!I", 0)), *auth], key)  # lifetime 0: the call is over
"""


def _role(script, role: str, *args: object, seconds: float, seed: int) -> list[str]:
    """The command line of one ``TURN_CALL`` role (its arguments, then SECONDS SEED USER PASSWORD)."""
    return [sys.executable, str(script), role, *map(str, args), f"{seconds}", str(seed), USER, PASSWORD]


def turn_setup(s: Session, mode: str) -> None:
    """coturn on the server's address with one long-term user, and the call's peer beside it."""
    port = TURNS_PORT if mode == "tls" else TURN_PORT
    argv = ["turnserver", "-n", "--no-cli", "--log-file=stdout", "--simple-log", f"--listening-ip={s.server_ip}",
            f"--relay-ip={s.server_ip}", f"--listening-port={TURN_PORT}", "--lt-cred-mech",
            f"--user={USER}:{PASSWORD}", f"--realm={REALM}", "--no-dtls", f"--pidfile={s.work / 'turnserver.pid'}",
            "--min-port=49152", "--max-port=65000"]
    if mode == "tls":
        pki = s.pki()
        argv += [f"--tls-listening-port={TURNS_PORT}", f"--cert={pki.server_cert}", f"--pkey={pki.server_key}"]
    else:
        argv.append("--no-tls")
    proc = s.lab.spawn(s.server_ns, argv, "turnserver")
    s.lab.wait_port(s.server_ns, port, "udp" if mode == "udp" else "tcp", procs=[proc])
    s.extra["turn"] = (s.file("turn_call.py", TURN_CALL), port)


def turn_traffic(s: Session, mode: str) -> None:
    """The call: the peer waits beside the relay, the client allocates, binds a channel and talks."""
    script, port = s.extra["turn"]
    seed = s.profile.seed
    peer = s.lab.spawn(s.server_ns, _role(script, "peer", s.server_ip, PEER_PORT, seconds=s.duration + 5,
                                          seed=seed + 1), "turn-peer")
    s.lab.wait_port(s.server_ns, PEER_PORT, "udp", procs=[peer])
    # most clients bind a channel; some (older libjingle-based ones) send every packet in a Send indication
    framing = "indication" if seed and s.rng().random() < 0.4 else "channel"
    s.lab.run(s.client_ns, _role(script, "client", mode, framing, s.server_ip, port, s.server_ip, PEER_PORT,
                                 seconds=s.duration, seed=seed), timeout=s.duration + 40)


def ice_tcp_setup(s: Session) -> None:
    """The answering peer listens; ICE-TCP has no server in between."""
    script = s.file("turn_call.py", TURN_CALL)
    proc = s.lab.spawn(s.server_ns, _role(script, "ice-server", s.server_ip, ICE_TCP_PORT,
                                          seconds=s.duration + 30, seed=s.profile.seed + 1), "ice-server")
    s.lab.wait_port(s.server_ns, ICE_TCP_PORT, "tcp", procs=[proc])
    s.extra["ice"] = script


def ice_tcp_traffic(s: Session) -> None:
    """The calling peer connects and both send media, each packet behind its 2-byte length."""
    s.lab.run(s.client_ns, _role(s.extra["ice"], "ice-client", s.server_ip, ICE_TCP_PORT, seconds=s.duration,
                                 seed=s.profile.seed), timeout=s.duration + 30)


for _name, _number, _mode, _port, _notes in (
        ("turn-call-udp", 137, "udp", TURN_PORT, "coturn relay, client over UDP 3478"),
        ("turn-call-tcp", 138, "tcp", TURN_PORT, "coturn relay, client over TCP 3478"),
        ("turn-call-tls", 139, "tls", TURNS_PORT, "coturn relay, client over TLS on TCP 443 (turns:)")):
    register_negative(_name, _number, "turn", "udp" if _mode == "udp" else "tcp", _port, ("turnserver",),
                      partial(turn_setup, mode=_mode), partial(turn_traffic, mode=_mode),
                      f"{_notes}; SRTP-like audio (60%: plus video) through a TURN channel, ICE consent checks",
                      "A WebRTC-style call relayed by TURN: media behind 4-byte ChannelData headers on one "
                      "long flow to the relay.")
register_negative("ice-tcp-call", 141, "ice-tcp", "tcp", ICE_TCP_PORT, (), ice_tcp_setup, ice_tcp_traffic,
                  "peer to peer over TCP (ICE-TCP, RFC 6544): SRTP-like media, each packet behind a 2-byte "
                  "length (RFC 4571)",
                  "A WebRTC-style call over a direct TCP connection: length-prefixed media packets both ways, "
                  "framed as OpenVPN frames its packets over TCP.")
