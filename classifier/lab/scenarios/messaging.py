"""A messaging app's connections (N = 150-151): MTProto over Telegram's obfuscated transport.

Why: a TCP connection that is random from its first byte is what fully encrypted proxies
(Shadowsocks, VMess) look like, and a messaging app that hides its protocol the same way
is no VPN. Telegram's apps reach their servers over MTProto's obfuscated transport
("obfuscated2": 64 random-looking bytes, then AES-256-CTR under a key those bytes carry),
often on TCP 443, opening short connections to several data centres as they start and
longer ones for chats and media. A model that never met such a negative took Telegram's
connections in the public corpus for proxies. No Telegram server or client is packaged
for Debian, and none could reach the Internet here, so both ends are written to the
published transport and message layouts (``MTPROTO_APP``, standard library plus the
``cryptography`` package the project already uses):

- the connection start, built as the apps build it: 64 random bytes (not starting with
  0xef, an HTTP verb, a TLS record or a tag, bytes 4-7 not zero), the transport's tag at
  56-59, and bytes 56-63 replaced by their AES-CTR encryption under key ``init[8:40]``
  and IV ``init[40:56]``; the stream then continues under that cipher, and the server
  answers under the key and IV of bytes 8-55 reversed (``signatures/mtproto.py``
  recognises these captures, as it does Telegram's);
- the transport framing of the tag drawn per run: abridged (length / 4 in one byte, or
  0x7f and three), intermediate (4-byte length) or padded intermediate (4-byte length,
  0-15 random bytes of padding);
- message sizes from MTProto 2.0's layouts: a plain message is 20 bytes of header and a
  body (the auth-key exchange: req_pq_multi 40 bytes, resPQ 84, req_DH_params 340,
  server_DH_params_ok 652, set_client_DH_params 396, dh_gen_ok 72); an encrypted one is
  auth_key_id and msg_key (24 bytes) before salt, session id, message id, sequence number
  and length (32 bytes), the body and 12-60 bytes of padding to a multiple of 16. The
  message layer's own encryption (AES-IGE under the auth key) is left out: under the
  transport's AES-CTR the wire bytes are random either way.

What the client does is a model of an app, not a recording: ``mtproto-chat`` opens a main
connection (a fresh install first creates its auth key), fetches the configuration and
dialogs, then sends and receives chat messages, typing notices, acknowledgements and
pings while it opens short connections to other data centres (one or two requests, then
idle) and now and then downloads a photo; ``mtproto-media`` is the media side: file
downloads in 128-512 KiB parts (``upload.getFile``, several in flight) and uploads in
parts (``upload.saveFilePart``), each on its own connection, beside a main connection.

Both were held out of training until the model of 2026-12-07: trained on alone, they took
the model's recall on Shadowsocks carrying web requests from 64 to 35 of 70 flows (lab,
seed 4242), because by sizes alone a short RPC exchange under a stream cipher and a short
web fetch under one are the same thing, and held out the model alone called 1-5 of a lab
set's MTProto flows VPN. Trained on together with VMess (a fully random proxy), the model
calls none of them VPN and finds VMess; Shadowsocks carrying plain HTTP fetches is what it
gives up (docs/model.md, Results). The ``telegram`` signature names them either way.
"""

from __future__ import annotations

import sys
from functools import partial

from classifier.lab.scenarios.negatives import register_negative
from classifier.lab.session import Session

MTPROTO_PORT = 443

#: Both ends. ``server IP PORT SECONDS SEED``: accepts connections and answers each
#: request with the replies it asks for (sizes and delays travel inside the encrypted
#: message, where the real protocol has its method call). ``client IP PORT SECONDS SEED
#: PROFILE`` (``chat`` or ``media``): runs the app for SECONDS.
MTPROTO_APP = r"""
import random, socket, struct, sys, threading, time
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

TAGS = {"abridged": b"\xef" * 4, "intermediate": b"\xee" * 4, "padded": b"\xdd" * 4}
BAD_STARTS = (b"HEAD", b"POST", b"GET ", b"OPTI", b"\x16\x03\x01\x02", b"\xdd" * 4, b"\xee" * 4)
# reply op codes inside a message (offset 8): 1 a request wanting replies, 0 no reply
REQUEST, NOTE = 1, 0


def ctr(key, iv):
    return Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()


def reversed_keys(init):
    rev = init[8:56][::-1]
    return rev[:32], rev[32:48]


def client_init(tag, rng):
    while True:
        init = bytearray(rng.randbytes(64))
        if init[0] != 0xEF and bytes(init[:4]) not in BAD_STARTS and init[4:8] != b"\0\0\0\0":
            break
    init[56:60] = tag
    enc = ctr(bytes(init[8:40]), bytes(init[40:56]))
    sealed = enc.update(bytes(init))
    return bytes(init[:56]) + sealed[56:64], enc, bytes(init)


def encrypted_size(body, rng):
    # auth_key_id + msg_key, then salt, session, msg_id, seq_no, length, body, 12+ bytes padding to 16
    inner = 32 + body + 12
    inner += -inner % 16 + 16 * rng.randint(0, 3)
    return 24 + inner


def plain_size(body):
    return 20 + body


class Conn:
    # one transport connection: framing per tag, a cipher per direction, a lock for writers
    def __init__(self, sock, framing, enc, dec, rng):
        self.sock, self.framing, self.enc, self.dec, self.rng = sock, framing, enc, dec, rng
        self.lock = threading.Lock()
        self.buf = b""

    def send(self, size, op=NOTE, replies=()):
        # a message of ``size`` bytes (a multiple of 4); ``replies``: (size, delay_ms) the peer should send
        size = max(size + -size % 4, 28)  # the abridged framing counts in 4-byte words
        ctl = struct.pack("<BB", op, len(replies)) + b"".join(struct.pack("<IH", s, d) for s, d in replies)
        msg = self.rng.randbytes(8) + ctl + self.rng.randbytes(size - 8 - len(ctl))
        if self.framing == "abridged":
            n = len(msg) // 4
            frame = (bytes([n]) if n < 0x7F else b"\x7f" + n.to_bytes(3, "little")) + msg
        elif self.framing == "intermediate":
            frame = struct.pack("<I", len(msg)) + msg
        else:
            pad = self.rng.randbytes(self.rng.randint(0, 15))
            frame = struct.pack("<I", len(msg) + len(pad)) + msg + pad
        try:
            with self.lock:
                self.sock.sendall(self.enc.update(frame))
        except OSError:  # the peer has closed: a reply that comes too late is dropped
            pass

    def _read(self, n):
        while len(self.buf) < n:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.buf += self.dec.update(data)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        # the next message's control: (op, [(size, delay_ms), ...])
        if self.framing == "abridged":
            n = self._read(1)[0]
            n = (int.from_bytes(self._read(3), "little") if n == 0x7F else n) * 4
        else:
            n = struct.unpack("<I", self._read(4))[0]
        msg = self._read(n)
        op, count = msg[8], msg[9]
        replies = [struct.unpack_from("<IH", msg, 10 + 6 * i) for i in range(count)]
        return op, replies


def serve(sock, seed):
    rng = random.Random(seed)
    try:
        init = b""
        while len(init) < 64:
            data = sock.recv(64 - len(init))
            if not data:
                return
            init += data
        dec = ctr(init[8:40], init[40:56])
        plain = dec.update(init)
        framing = next(k for k, v in TAGS.items() if v == plain[56:60])
        conn = Conn(sock, framing, ctr(*reversed_keys(init)), dec, rng)
        while True:
            op, replies = conn.recv()
            for size, delay in replies:
                threading.Timer(delay / 1000, conn.send, (size,)).start()
    except (EOFError, OSError, StopIteration):
        pass


def server(ip, port, seconds, seed):
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((ip, port))
    lsock.listen(64)
    lsock.settimeout(1)
    deadline = time.monotonic() + seconds
    k = 0
    while time.monotonic() < deadline:
        try:
            sock, _ = lsock.accept()
        except socket.timeout:
            continue
        k += 1
        threading.Thread(target=serve, args=(sock, seed * 1000 + k), daemon=True).start()


class App:
    def __init__(self, ip, port, seconds, seed, profile):
        self.ip, self.port, self.profile = ip, port, profile
        self.rng = random.Random(seed)
        self.framing = self.rng.choice(list(TAGS))
        self.end = time.monotonic() + seconds
        self.threads = []

    def left(self):
        return self.end - time.monotonic()

    def connect(self):
        rng = random.Random(self.rng.random())
        sock = socket.create_connection((self.ip, self.port), timeout=10)
        init, enc, raw = client_init(TAGS[self.framing], rng)
        dec = ctr(*reversed_keys(raw))
        sock.sendall(init)
        conn = Conn(sock, self.framing, enc, dec, rng)
        threading.Thread(target=self.drain, args=(conn,), daemon=True).start()
        return conn

    def drain(self, conn):
        # read what the server sends, as the app's network thread does
        try:
            while True:
                conn.recv()
        except (EOFError, OSError):
            pass

    def rpc(self, conn, body, reply_bodies, delay=(20, 120)):
        rng = conn.rng
        replies = [(encrypted_size(b, rng), rng.randint(*delay)) for b in reply_bodies]
        conn.send(encrypted_size(body, rng), REQUEST, replies)

    def sleep(self, mean):
        # an exponential pause, at most four times its mean and never past the end of the run
        time.sleep(max(0.0, min(self.rng.expovariate(1 / mean), mean * 4, self.left())))

    def spawn(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self.threads.append(t)

    def main_connection(self, fresh):
        rng = self.rng
        conn = self.connect()
        if fresh:  # auth key creation: plain messages, each answered before the next
            for ask, answer in ((20, 64), (320, 632), (376, 52)):
                conn.send(plain_size(ask), REQUEST, [(plain_size(answer), rng.randint(10, 60))])
                time.sleep(rng.uniform(0.03, 0.12))
        # initConnection + help.getConfig, then updates.getState and messages.getDialogs
        self.rpc(conn, rng.randint(120, 260), [rng.randint(1800, 6500)])
        self.sleep(0.1)
        self.rpc(conn, rng.randint(40, 90), [rng.randint(60, 120)])
        self.rpc(conn, rng.randint(60, 120), [rng.randint(4000, 40000)], delay=(60, 300))
        next_ping = time.monotonic() + rng.uniform(0.5, 2.0)
        while self.left() > 0.2:
            self.sleep(0.35 if self.profile == "chat" else 0.8)
            if time.monotonic() >= next_ping:  # ping_delay_disconnect -> pong
                self.rpc(conn, 20, [28])
                next_ping += rng.uniform(1.0, 3.0)
                continue
            event = rng.random()
            if event < 0.3:  # send a message: ack and updateShortSentMessage
                self.rpc(conn, rng.randint(80, 640), [28, rng.randint(60, 120)], delay=(30, 150))
            elif event < 0.6:  # a message arrives; the app acknowledges it a moment later
                self.rpc(conn, 28, [rng.randint(150, 900)], delay=(5, 40))
                time.sleep(rng.uniform(0.05, 0.3))
                conn.send(encrypted_size(28, rng))
            elif event < 0.75:  # typing notice
                self.rpc(conn, rng.randint(36, 48), [4])
            elif event < 0.9:  # history of a chat
                self.rpc(conn, rng.randint(60, 120), [rng.randint(2000, 30000)], delay=(50, 250))
            elif self.profile == "chat":  # a photo or sticker in view
                self.spawn(self.download, rng.randint(20_000, 400_000))
        return conn

    def side_connection(self):
        # another data centre: export/import authorization or a config probe, then idle
        rng = self.rng
        conn = self.connect()
        for _ in range(rng.randint(1, 3)):
            self.rpc(conn, rng.randint(100, 420), [rng.randint(60, 1500)])
            time.sleep(rng.uniform(0.05, 0.4))
        return conn

    def download(self, size):
        rng = random.Random(self.rng.random())
        conn = self.connect()
        part = rng.choice((131072, 262144, 524288))
        parts = [part] * (size // part) + ([size % part] if size % part else [])
        inflight = rng.randint(1, 4)
        for i in range(0, len(parts), inflight):
            if self.left() <= 0:
                break
            for p in parts[i:i + inflight]:  # upload.getFile: location, offset, limit
                self.rpc(conn, rng.randint(44, 80), [p + 8], delay=(20, 80))
            time.sleep(min(max(self.left(), 0), 0.03 + sum(parts[i:i + inflight]) / 4e6))
        return conn

    def upload(self, size):
        rng = random.Random(self.rng.random())
        conn = self.connect()
        part = rng.choice((131072, 262144, 524288))
        while size > 0 and self.left() > 0:  # upload.saveFilePart -> boolTrue
            self.rpc(conn, min(part, size) + 24, [4], delay=(10, 60))
            size -= part
            time.sleep(min(part / 4e6, max(self.left(), 0)))
        return conn

    def run(self):
        rng = self.rng
        for _ in range(rng.randint(1, 3) if self.profile == "chat" else rng.randint(0, 1)):
            self.spawn(self.side_connection)
        if self.profile == "media":
            for _ in range(rng.randint(1, 4)):
                size = int(rng.lognormvariate(13, 1.2))
                self.spawn(self.download if rng.random() < 0.7 else self.upload, max(size, 8000))
        self.main_connection(fresh=rng.random() < 0.25)
        for t in self.threads:
            t.join(timeout=max(self.left(), 0) + 5)


def main():
    role, ip, port, seconds, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
    if role == "server":
        server(ip, port, seconds, seed)
    else:
        App(ip, port, seconds, seed, sys.argv[6]).run()


main()
"""


def mtproto_setup(s: Session) -> None:
    """The server end listens on the server's address."""
    script = s.file("mtproto_app.py", MTPROTO_APP)
    proc = s.lab.spawn(s.server_ns, [sys.executable, str(script), "server", s.server_ip, str(MTPROTO_PORT),
                                     f"{s.duration + 60}", str(s.profile.seed)], "mtproto-server")
    s.lab.wait_port(s.server_ns, MTPROTO_PORT, "tcp", procs=[proc])
    s.extra["mtproto"] = script


def mtproto_traffic(s: Session, profile: str) -> None:
    """The app runs for the capture's duration, then closes its connections."""
    s.lab.run(s.client_ns, [sys.executable, str(s.extra["mtproto"]), "client", s.server_ip, str(MTPROTO_PORT),
                            f"{s.duration}", str(s.profile.seed), profile], timeout=s.duration + 40)


for _name, _number, _profile, _notes in (
        ("mtproto-chat", 150, "chat", "a chat session: main connection (auth key in a fresh install), config, "
                                      "dialogs, messages, acks, pings; short connections to other data centres"),
        ("mtproto-media", 151, "media", "file downloads and uploads in 128-512 KiB parts, a connection each, "
                                        "beside a main connection")):
    register_negative(_name, _number, "mtproto", "tcp", MTPROTO_PORT, (), mtproto_setup,
                      partial(mtproto_traffic, profile=_profile), f"MTProto over the obfuscated transport; {_notes}",
                      "A messaging app's fully encrypted connections (Telegram's MTProto transport "
                      "obfuscation): random from the first byte, and no VPN.")
