"""Everyday non-VPN services (N = 108..120, 131..133): traffic a tunnel detector meets all day.

Why: with only a handful of short negatives a model learns "anything that is not a small
HTTPS fetch is a VPN". These scenarios add what real networks carry that looks most like a
tunnel on the wire: long-lived TLS connections (HTTP/2 page loads, keep-alive browsing,
WebSocket), bulk TLS/SSH transfers, keystroke-paced SSH, constant-rate RTP voice and video
over UDP, DNS-over-TLS, NTP, small-packet bidirectional iperf3, BitTorrent, ping, and
plain-HTTP twins of the keep-alive and bulk HTTPS services.

Configuration: all servers listen on 198.18.N.1, with the run's EC certificate where TLS
is used: nginx (``listen ... ssl http2``), OpenSSH (``lab/traffic.py`` helpers), GStreamer
``gst-launch-1.0`` RTP senders and receivers in both namespaces, unbound (DNS-over-TLS on
853, a ``redirect`` local zone for ``lab.example``) queried with ``kdig +tls``, chronyd as
server (``local stratum 8``) and client (``-x``: never touches the clock, sub-second polling),
iperf3 ``--bidir``, a python3-websockets echo server, and aria2c peers with a minimal tracker. Traffic parameters (sizes, rates,
think times, codec) come from the run's ``TrafficProfile`` so ``--vary`` varies them.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial

from classifier.lab.netns import VETH, LabError
from classifier.lab.scenarios import SYSTEM_PYTHON
from classifier.lab.scenarios.negatives import register_negative, start_nginx
from classifier.lab.session import Session
from classifier.lab.traffic import download_for, ssh_argv, start_sshd, type_session, write_random

# -- HTTPS: HTTP/2 page loads, keep-alive browsing, bulk download -----------------------------------

def write_site(s: Session) -> list[str]:
    """A small web site: an index page and objects of log-uniform sizes 300 B .. 300 KB."""
    import os

    rng = s.rng()
    www = s.work / "www"
    www.mkdir(exist_ok=True)
    names = []
    for i in range(24):
        size = int(10 ** rng.uniform(2.5, 5.5))
        (www / f"o{i}.bin").write_bytes(os.urandom(size))
        names.append(f"o{i}.bin")
    (www / "index.html").write_bytes(os.urandom(rng.randint(8000, 60000)))
    (www / "big").write_bytes(b"")  # filled by the bulk scenario
    return names


def web_server(s: Session, http2: bool = True, tls: bool = True, directives: str = "") -> list[str]:
    """nginx serving ``write_site`` with TLS (and HTTP/2), or plain HTTP on port 80; returns the object names.

    ``directives``: more nginx ``server`` directives.
    """
    names = write_site(s)
    start_nginx(s, tls, http2=http2, directives=f"keepalive_timeout 120s; keepalive_requests 10000; {directives}")
    s.extra["objects"] = names
    return names


def h2_setup(s: Session) -> None:
    web_server(s, http2=True)


def page_loads(s: Session, rng: random.Random, load: Callable[[], bool], what: str) -> None:
    """Call ``load`` (one page load; True when it worked) with 0.3-2 s of think time between, for the duration.

    ``rng`` is the one ``load`` draws from too, so a run's pages and pauses follow its seed.
    """
    deadline = time.monotonic() + s.duration
    pages = 0
    while time.monotonic() < deadline:
        pages += load()
        time.sleep(rng.uniform(0.3, 2.0) * s.profile.pause_scale)
    if not pages:
        raise LabError(f"no {what} page load succeeded")


def h2_traffic(s: Session) -> None:
    """Page loads: the index then 3-12 objects multiplexed on one HTTP/2 connection, think time between."""
    rng = s.rng()
    names: list[str] = s.extra["objects"]  # type: ignore[assignment]
    base = f"https://{s.server_ip}"

    def load() -> bool:
        objs = rng.sample(names, rng.randint(3, 12))
        argv = ["curl", "-s", "-k", "--http2", "--parallel", "--parallel-max", "6", "--max-time", "10"]
        for url in [f"{base}/index.html", *(f"{base}/{o}" for o in objs)]:
            argv += ["-o", "/dev/null", url]
        return s.lab.run(s.client_ns, argv, check=False, timeout=20).returncode == 0

    page_loads(s, rng, load, "HTTP/2")


KEEPALIVE_CLIENT = r"""
import http.client, random, ssl, sys, time
host, seconds, seed, scale, tls = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
names = sys.argv[6:]
rng = random.Random(seed)
if tls == "tls":
    conn = http.client.HTTPSConnection(host, 443, context=ssl._create_unverified_context(), timeout=10)
else:
    conn = http.client.HTTPConnection(host, 80, timeout=10)
deadline = time.monotonic() + seconds
ok = 0
while time.monotonic() < deadline:
    for _ in range(rng.randint(1, 6)):
        conn.request("GET", "/" + rng.choice(names))
        ok += len(conn.getresponse().read()) > 0
    time.sleep(rng.uniform(0.2, 1.5) * scale)
print(ok)
sys.exit(0 if ok else 1)
"""


def keepalive_traffic(s: Session, tls: bool = True) -> None:
    """HTTP/1.1 requests in bursts with pauses, all on one kept-alive (TLS or plain) connection."""
    script = s.file("keepalive_client.py", KEEPALIVE_CLIENT)
    names: list[str] = s.extra["objects"]  # type: ignore[assignment]
    s.lab.run(s.client_ns, [sys.executable, str(script), s.server_ip, f"{s.duration}", str(s.profile.seed),
                            f"{s.profile.pause_scale}", "tls" if tls else "plain", *names], timeout=s.duration + 30)


def bulk_setup(s: Session, tls: bool = True) -> None:
    web_server(s, http2=False, tls=tls)
    write_random(s.work / "www" / "big", s.profile.bulk_size)


def bulk_traffic(s: Session, tls: bool = True) -> None:
    """Downloads of a 2-16 MiB file over HTTPS (or HTTP), rate-capped by curl (``profile.bulk_rate``)."""
    if not download_for(s, f"{'https' if tls else 'http'}://{s.server_ip}/big"):
        raise LabError(f"no bulk {'HTTPS' if tls else 'HTTP'} download")


#: Key-exchange groups the browser-like server accepts in half of the runs: curl (OpenSSL) sends
#: its first key share for X25519, so each TLS 1.3 handshake then takes a HelloRetryRequest and
#: a second ClientHello, as real clients' do when they guess a server's group wrong.
RETRY_GROUPS = "secp384r1:secp521r1"


def browser_setup(s: Session) -> None:
    """nginx serving ``write_site``, HTTP/2 or 1.1, and in half of the runs only ``RETRY_GROUPS``."""
    rng = s.rng()
    http2, retry = rng.random() < 0.5, rng.random() < 0.5
    web_server(s, http2=http2, directives=f"ssl_ecdh_curve {RETRY_GROUPS};" if retry else "")


def browser_traffic(s: Session) -> None:
    """Page loads with a browser's request weight: cookies of 0.1-1.5 KB, long headers, some form posts.

    Why: right after its handshake a browser sends requests of several hundred bytes to a
    few kilobytes (cookies, user agent, HTTP/2 settings), and a proxy that carries TLS sends
    an inner ClientHello of that size at the same moment (Trojan, VMess over TLS). Without
    heavy requests among the negatives, any large first request after a handshake would
    read as a nested one.
    """
    rng = s.rng()
    names: list[str] = s.extra["objects"]  # type: ignore[assignment]
    base = f"https://{s.server_ip}"
    form = s.work / "form.bin"

    def load() -> bool:
        cookie = "".join(rng.choice("abcdef0123456789") for _ in range(rng.randint(100, 1500)))
        argv = ["curl", "-s", "-k", "--max-time", "10", "-H", f"Cookie: session={cookie}",
                "-H", "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                      "Chrome/131.0.0.0 Safari/537.36",
                "-H", "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
                "-H", "Accept-Language: en-US,en;q=0.9,ur;q=0.8"]
        if rng.random() < 0.3:
            form.write_bytes(bytes(rng.getrandbits(8) for _ in range(rng.randint(300, 8000))))
            argv += ["--data-binary", f"@{form}", "-o", "/dev/null", f"{base}/index.html"]
        for obj in ["index.html", *rng.sample(names, rng.randint(1, 8))]:
            argv += ["-o", "/dev/null", f"{base}/{obj}"]
        return s.lab.run(s.client_ns, argv, check=False, timeout=20).returncode == 0

    page_loads(s, rng, load, "browser-like")


# -- SSH: keystrokes, scp / rsync ----------------------------------------------------------------

def sshd_setup(s: Session) -> None:
    start_sshd(s, s.server_ip)


def ssh_interactive_traffic(s: Session) -> None:
    """One login with a pty; commands typed key by key (each echoed), think time after Enter."""
    proc = s.lab.spawn(s.client_ns, ssh_argv(s, s.server_ip, 22, "-tt"), "ssh-interactive", stdin=subprocess.PIPE)
    if not type_session(s, proc, s.rng(), s.duration):
        raise LabError(f"interactive ssh exited at once: {proc.tail()}")


def ssh_copy_traffic(s: Session) -> None:
    """scp (SFTP protocol) or rsync over ssh of a 2-16 MiB file, upload or download, rate-capped."""
    rng = s.rng()
    src = s.work / "copy-src"
    write_random(src, s.profile.bulk_size)
    kbit = max(64, s.profile.bulk_rate * 8 // 1000)
    remote = f"root@{s.server_ip}:{s.work}/copy-remote-{{}}"
    ssh = " ".join(ssh_argv(s, s.server_ip)[:-1])
    deadline = time.monotonic() + s.duration
    i = 0
    while (left := deadline - time.monotonic()) > 0.3:
        i += 1
        dst = remote.format(i)
        use_rsync, upload = rng.random() < 0.5, rng.random() < 0.6
        if use_rsync:
            argv = ["rsync", "-a", "--whole-file", f"--bwlimit={max(8, s.profile.bulk_rate // 1024)}", "-e", ssh]
        else:
            argv = [*ssh_argv(s, s.server_ip)[:-1], "-l", str(kbit)]
            argv[0] = "scp"
            argv[argv.index("-p")] = "-P"
        argv += [str(src), dst] if upload else [f"root@{s.server_ip}:{src}", str(s.work / f"copy-local-{i}")]
        s.lab.run(s.client_ns, ["timeout", f"{left:.1f}", *argv], check=False, timeout=left + 15)


# -- RTP media over UDP ---------------------------------------------------------------------------

VOICE_PORT = 5004
VIDEO_PORT = 5006
CODECS = {  # name -> encoder and RTP payloader chain
    "opus": "audioconvert ! audioresample ! opusenc bitrate={bitrate} frame-size=20 ! rtpopuspay",
    "pcmu": "audioconvert ! audioresample ! audio/x-raw,rate=8000,channels=1 ! mulawenc "
            "! rtppcmupay min-ptime=20000000 max-ptime=20000000",
    "l16": "audioconvert ! audioresample ! audio/x-raw,rate=16000,channels=1 "
           "! rtpL16pay min-ptime=20000000 max-ptime=20000000",
}


def _gst(s: Session, ns: str, pipeline: str, name: str):
    return s.lab.spawn(ns, ["gst-launch-1.0", "-q", *pipeline.split()], name)


def _rtp_sink(peer: str, port: int) -> str:
    """A udpsink that sends from the port it receives on: symmetric RTP (RFC 4961), as phones
    and browsers do, so each media stream is one bidirectional flow."""
    return f"udpsink host={peer} port={port} bind-port={port}"


def rtp_voice_traffic(s: Session) -> None:
    """A voice call: each side sends one RTP audio stream (Opus, PCMU or L16) to the other, symmetric RTP."""
    rng = s.rng()
    codec = rng.choice(sorted(CODECS)) if s.profile.seed else "opus"
    chain = CODECS[codec].format(bitrate=rng.choice([16000, 24000, 32000, 64000]))
    procs = []
    for ns, port, peer, wave in ((s.server_ns, VOICE_PORT, s.client_ip, "sine"),
                                 (s.client_ns, VOICE_PORT, s.server_ip, "pink-noise")):
        procs.append(_gst(s, ns, f"udpsrc port={port} reuse=true ! fakesink", f"rtp-recv-{ns[-1]}"))
        procs.append(_gst(s, ns, f"audiotestsrc is-live=true wave={wave} ! {chain} ! {_rtp_sink(peer, port)}",
                          f"rtp-send-{ns[-1]}"))
    _run_for(s, procs)


def rtp_video_traffic(s: Session) -> None:
    """A video call: VP8 video each way (size, frame rate and bitrate from the profile) plus Opus audio, symmetric RTP."""
    rng = s.rng()
    w, h = rng.choice([(320, 240), (640, 360), (480, 270)]) if s.profile.seed else (320, 240)
    fps = rng.choice([10, 15, 25]) if s.profile.seed else 15
    kbps = rng.choice([150, 300, 600, 1000]) if s.profile.seed else 300
    procs = []
    for ns, peer, pattern in ((s.server_ns, s.client_ip, "ball"), (s.client_ns, s.server_ip, "smpte")):
        procs.append(_gst(s, ns, f"udpsrc port={VIDEO_PORT} reuse=true ! fakesink", f"video-recv-{ns[-1]}"))
        procs.append(_gst(s, ns, f"udpsrc port={VOICE_PORT} reuse=true ! fakesink", f"audio-recv-{ns[-1]}"))
        procs.append(_gst(s, ns, f"videotestsrc is-live=true pattern={pattern} ! video/x-raw,width={w},height={h},"
                                 f"framerate={fps}/1 ! vp8enc deadline=1 cpu-used=8 target-bitrate={kbps * 1000} "
                                 f"! rtpvp8pay mtu=1200 ! {_rtp_sink(peer, VIDEO_PORT)}", f"video-send-{ns[-1]}"))
        procs.append(_gst(s, ns, f"audiotestsrc is-live=true ! {CODECS['opus'].format(bitrate=32000)} "
                                 f"! {_rtp_sink(peer, VOICE_PORT)}", f"audio-send-{ns[-1]}"))
    _run_for(s, procs)


#: ICE consent checks on the media 5-tuple: STUN Binding requests (RFC 8445 / RFC 7675) with
#: USERNAME, PRIORITY, ICE-CONTROLLING, MESSAGE-INTEGRITY and FINGERPRINT attributes, a burst of
#: connectivity checks first, then one every 2-5 s, as browsers send during a call.
STUN_CHECKS = """\
import os, random, socket, struct, sys, time
ip, port, seconds, seed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
sock.bind(("", port))
user = os.urandom(4).hex() + ":" + os.urandom(4).hex()
def attr(kind, value):
    return struct.pack("!HH", kind, len(value)) + value + bytes(-len(value) % 4)
def binding():
    body = attr(0x0006, user.encode()) + attr(0x0024, struct.pack("!I", rng.getrandbits(32)))
    body += attr(0x802A, os.urandom(8)) + attr(0x0008, os.urandom(20)) + attr(0x8028, os.urandom(4))
    return struct.pack("!HHI", 0x0001, len(body), 0x2112A442) + os.urandom(12) + body
deadline = time.monotonic() + seconds
for _ in range(rng.randint(2, 6)):
    sock.sendto(binding(), (ip, port)); time.sleep(rng.uniform(0.02, 0.1))
while time.monotonic() < deadline:
    time.sleep(rng.uniform(2.0, 5.0)); sock.sendto(binding(), (ip, port))
"""


def srtp_call_setup(s: Session) -> None:
    s.extra["stun"] = s.file("stun_checks.py", STUN_CHECKS)


def srtp_call_traffic(s: Session) -> None:
    """A WebRTC-like call: SRTP audio (and often video) both ways on one bundled 5-tuple, plus STUN checks.

    Why: a real call sends and receives on the same port pair, so its media is one
    bidirectional flow of encrypted payloads behind a fixed header with a sequence number
    that grows by one per packet: the shape of a UDP tunnel. Each side binds its senders
    to the media port (``udpsink bind-port``), so audio, video and the consent checks share
    the 5-tuple as BUNDLE and rtcp-mux make them do.
    """
    rng = s.rng()
    codec = rng.choice(["opus", "pcmu"]) if s.profile.seed else "opus"
    chain = CODECS[codec].format(bitrate=rng.choice([16000, 24000, 32000, 48000]))
    video = rng.random() < 0.6 if s.profile.seed else True
    w, h, fps, kbps = rng.choice([(320, 240, 15, 300), (640, 360, 25, 800), (480, 270, 15, 500)])
    port = VOICE_PORT
    procs = []
    for i, (ns, peer, wave) in enumerate(((s.server_ns, s.client_ip, "sine"), (s.client_ns, s.server_ip, "pink-noise"))):
        out = _rtp_sink(peer, port)
        procs.append(_gst(s, ns, f"udpsrc port={port} reuse=true ! fakesink", f"srtp-recv-{i}"))
        key = rng.randbytes(30).hex()
        procs.append(_gst(s, ns, f"audiotestsrc is-live=true wave={wave} ! {chain} ! srtpenc key={key} ! {out}",
                          f"srtp-audio-{i}"))
        if video:
            key = rng.randbytes(30).hex()
            procs.append(_gst(s, ns, f"videotestsrc is-live=true pattern={'ball' if i else 'smpte'} "
                                     f"! video/x-raw,width={w},height={h},framerate={fps}/1 ! vp8enc deadline=1 "
                                     f"cpu-used=8 target-bitrate={kbps * 1000} ! rtpvp8pay mtu=1200 "
                                     f"! srtpenc key={key} ! {out}", f"srtp-video-{i}"))
        procs.append(s.lab.spawn(ns, [sys.executable, str(s.extra["stun"]), peer, str(port), f"{s.duration + 2}",
                                      str(rng.randrange(1 << 30))], f"stun-{i}"))
    _run_for(s, procs)


def no_setup(s: Session) -> None:
    """Media scenarios start both ends in ``traffic``: there is no server to wait for."""


def _run_for(s: Session, procs: list) -> None:
    """Let the media pipelines run for the duration; fail if one of them died."""
    deadline = time.monotonic() + s.duration
    while time.monotonic() < deadline:
        dead = [p for p in procs if not p.alive()]
        if dead:
            raise LabError(f"{dead[0].name} exited ({dead[0].popen.returncode}): {dead[0].tail()}")
        time.sleep(0.2)


# -- DNS over TLS, NTP ---------------------------------------------------------------------------------

UNBOUND_CONF = """\
server:
  interface: {ip}@853
  tls-port: 853
  tls-service-key: "{key}"
  tls-service-pem: "{cert}"
  do-ip6: no
  username: ""
  chroot: ""
  directory: "{work}"
  pidfile: "{work}/unbound.pid"
  use-syslog: no
  logfile: ""
  verbosity: 0
  access-control: 198.18.0.0/16 allow
  module-config: "iterator"
  local-zone: "lab.example." redirect
  local-data: "lab.example. A 198.18.0.80"
  local-zone: "." refuse
remote-control:
  control-enable: no
"""


def dot_setup(s: Session) -> None:
    pki = s.pki()
    conf = s.file("unbound.conf", UNBOUND_CONF.format(ip=s.server_ip, key=pki.server_key, cert=pki.server_cert,
                                                      work=s.work))
    proc = s.lab.spawn(s.server_ns, ["unbound", "-d", "-c", str(conf)], "unbound")
    s.lab.wait_port(s.server_ns, 853, procs=[proc])


def dot_traffic(s: Session) -> None:
    """Bursts of 1-8 queries on one kept-open TLS connection (``kdig +tls +keepopen``), pauses between."""
    rng = s.rng()
    deadline = time.monotonic() + s.duration
    ok = 0
    while time.monotonic() < deadline:
        names = [f"h{rng.randrange(10000)}.lab.example" for _ in range(rng.randint(1, 8))]
        res = s.lab.run(s.client_ns, ["kdig", "+tls", "+keepopen", "+short", "+time=2", "+retry=0",
                                      "-p", "853", f"@{s.server_ip}", *names], check=False, timeout=15)
        ok += res.returncode == 0 and b"198.18.0.80" in res.stdout
        time.sleep(rng.uniform(0.1, 1.5) * s.profile.pause_scale)
    if not ok:
        raise LabError("no DNS-over-TLS answer")


CHRONY_SERVER = """\
local stratum 8
allow 198.18.0.0/16
bindaddress {ip}
cmdport 0
bindcmdaddress /
pidfile {work}/chronyd-server.pid
"""
CHRONY_CLIENT = """\
server {ip} iburst minpoll {poll} maxpoll {poll}
cmdport 0
bindcmdaddress /
pidfile {work}/chronyd-client.pid
"""


def ntp_setup(s: Session) -> None:
    conf = s.file("chrony-server.conf", CHRONY_SERVER.format(ip=s.server_ip, work=s.work))
    proc = s.lab.spawn(s.server_ns, ["chronyd", "-d", "-x", "-u", "root", "-f", str(conf)], "chronyd-server")
    s.lab.wait_port(s.server_ns, 123, "udp", procs=[proc])
    s.extra["chronyd-server"] = proc


def ntp_traffic(s: Session) -> None:
    """chronyd as a client polling the server every 2^poll s (poll -3..0: sub-second to 1 s)."""
    poll = s.rng().choice([-3, -2, -1, 0]) if s.profile.seed else -1
    conf = s.file("chrony-client.conf", CHRONY_CLIENT.format(ip=s.server_ip, poll=poll, work=s.work))
    cli = s.lab.spawn(s.client_ns, ["chronyd", "-d", "-x", "-u", "root", "-f", str(conf)], "chronyd-client")
    _run_for(s, [cli, s.extra["chronyd-server"]])


# -- iperf3 both ways with small packets, WebSocket ----------------------------------------------------

def iperf_setup(s: Session) -> None:
    proc = s.lab.spawn(s.server_ns, ["iperf3", "-s", "-B", s.server_ip, "-p", "5201"], "iperf3-server")
    s.lab.wait_port(s.server_ns, 5201, procs=[proc])


def iperf_bidir_traffic(s: Session, udp: bool) -> None:
    """iperf3 ``--bidir``: both directions at once, small writes (64-400 bytes), varied rate."""
    rng = s.rng()
    size = rng.choice([64, 100, 200, 400]) if s.profile.seed else 200
    args = ["iperf3", "-c", s.server_ip, "-p", "5201", "--bidir", "-t", f"{max(1, round(s.duration))}",
            "-b", f"{s.profile.rate_kbit}K", "-l", str(size)]
    if udp:
        args.append("-u")
    s.lab.run(s.client_ns, args, timeout=s.duration + 30)


WS_SERVER = r"""
import asyncio, ssl, sys
import websockets

async def echo(ws, *_):
    async for msg in ws:
        await ws.send(msg)

async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    async with websockets.serve(echo, sys.argv[1], int(sys.argv[2]), ssl=ctx, ping_interval=5):
        await asyncio.Future()

asyncio.run(main())
"""
WS_CLIENT = r"""
import asyncio, random, ssl, sys, time
import websockets

async def main():
    url, seconds, seed, scale = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    rng = random.Random(seed)
    ctx = ssl._create_unverified_context()
    n = 0
    async with websockets.connect(url, ssl=ctx, ping_interval=5) as ws:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            size = int(10 ** rng.uniform(1, 3.7))
            await ws.send(rng.randbytes(size) if rng.random() < 0.3 else "m" * size)
            await ws.recv()
            n += 1
            await asyncio.sleep(rng.expovariate(1 / (0.3 * scale)))
    print(n)

asyncio.run(main())
"""


def ws_setup(s: Session) -> None:
    pki = s.pki()
    script = s.file("ws_server.py", WS_SERVER)
    proc = s.lab.spawn(s.server_ns, [SYSTEM_PYTHON, str(script), s.server_ip, "443", str(pki.server_cert),
                                     str(pki.server_key)], "ws-server")
    s.lab.wait_port(s.server_ns, 443, procs=[proc])


def ws_traffic(s: Session) -> None:
    """One WebSocket (wss) session: messages of 10 B .. 5 KB echoed, exponential think time."""
    script = s.file("ws_client.py", WS_CLIENT)
    s.lab.run(s.client_ns, [SYSTEM_PYTHON, str(script), f"wss://{s.server_ip}:443/", f"{s.duration}",
                            str(s.profile.seed), f"{s.profile.pause_scale}"], timeout=s.duration + 30)


# -- BitTorrent ----------------------------------------------------------------------------------------

TRACKER = r"""
import http.server, socket, sys, urllib.parse

peers = {}

def bencode(x):
    if isinstance(x, int):
        return b"i%de" % x
    if isinstance(x, bytes):
        return b"%d:%s" % (len(x), x)
    return b"d" + b"".join(bencode(k.encode()) + bencode(v) for k, v in sorted(x.items())) + b"e"

class Tracker(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query, keep_blank_values=True,
                                  encoding="latin-1")
        info = q.get("info_hash", [""])[0].encode("latin-1")
        me = socket.inet_aton(self.client_address[0]) + int(q.get("port", ["0"])[0]).to_bytes(2, "big")
        known = peers.setdefault(info, [])
        if me not in known:
            known.append(me)
        # Seeders (left=0) get no peers, so the download is always the leecher connecting to
        # the seeder's listening port (the manifest's server port).
        left = q.get("left", ["1"])[0]
        print(f"announce {self.client_address[0]} left={left}", flush=True)
        others = b"" if left == "0" else b"".join(p for p in known if p != me)
        body = bencode({"interval": 5, "min interval": 2, "peers": others})
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Tracker).serve_forever()
"""
BT_PORT = 6881
TRACKER_PORT = 6969
ARIA2_COMMON = ["--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false",
                "--disable-ipv6=true", "--console-log-level=warn", "--summary-interval=0", "--file-allocation=none",
                "--check-certificate=false", "--bt-tracker-interval=5"]


def bt_setup(s: Session) -> None:
    """A minimal HTTP tracker, a torrent of a 2-16 MiB file made with mktorrent, aria2c seeding it."""
    seed_dir = s.work / "bt-seed"
    seed_dir.mkdir()
    write_random(seed_dir / "payload.bin", s.profile.bulk_size)
    torrent = s.work / "payload.torrent"
    subprocess.run(["mktorrent", "-l", "18", "-a", f"http://{s.server_ip}:{TRACKER_PORT}/announce", "-o",
                    str(torrent), str(seed_dir / "payload.bin")], check=True, capture_output=True, timeout=60)
    script = s.file("tracker.py", TRACKER)
    tracker = s.lab.spawn(s.server_ns, [sys.executable, str(script), s.server_ip, str(TRACKER_PORT)], "tracker")
    s.lab.wait_port(s.server_ns, TRACKER_PORT, procs=[tracker])
    seeder = s.lab.spawn(s.server_ns, ["aria2c", *ARIA2_COMMON, "--seed-ratio=0.0", "--check-integrity=true",
                                       f"--listen-port={BT_PORT}", f"--dir={seed_dir}", str(torrent)], "aria2-seed")
    s.lab.wait_port(s.server_ns, BT_PORT, timeout=30, procs=[seeder])
    s.lab.wait_for("the seeder's announce", lambda: "left=0" in tracker.tail(), 30, [tracker, seeder])
    s.extra["torrent"] = torrent


def bt_traffic(s: Session) -> None:
    """aria2c in the client downloads the torrent from the seeder, rate-capped, for the duration."""
    rng = s.rng()
    crypto = ["--bt-force-encryption=true"] if rng.random() < 0.5 and s.profile.seed else []
    leech = s.lab.spawn(s.client_ns, ["aria2c", *ARIA2_COMMON, *crypto, "--seed-time=0",
                                      f"--max-download-limit={s.profile.bulk_rate}", f"--listen-port={BT_PORT + 1}",
                                      f"--dir={s.work / 'bt-leech'}", str(s.extra["torrent"])], "aria2-leech")
    deadline = time.monotonic() + s.duration
    while time.monotonic() < deadline and leech.alive():
        time.sleep(0.2)


# -- ICMP echo ----------------------------------------------------------------------------------------

def ping_traffic(s: Session, family: int = 4) -> None:
    """``ping`` from the client: interval and size drawn per capture (monitoring probes to MTU tests)."""
    rng = s.rng()
    interval = rng.choice([0.05, 0.2, 0.5, 1.0])
    size = rng.choice([56, 56, 120, 512, 1200, 1400])
    count = max(2, int(s.duration / interval))
    target = s.server_ip if family == 4 else ipv6_addr(s, 1)
    s.lab.run(s.client_ns, ["ping", f"-{family}", "-q", "-i", f"{interval:g}", "-s", str(size), "-c", str(count),
                            "-w", str(int(s.duration) + 2), target], timeout=s.duration + 10)


def ipv6_addr(s: Session, host: int) -> str:
    """An IPv6 address on the veth link of scenario N: fd00:0:N::1 (server) and ::2 (client)."""
    return f"fd00:0:{s.n}::{host}"


def ipv6_setup(s: Session) -> None:
    """Give the veth link IPv6 addresses (the lab switches IPv6 off): no link-local address, no
    duplicate-address detection and no router solicitations, so that only the echo shows."""
    for ns, host in ((s.server_ns, 1), (s.client_ns, 2)):
        for key, value in (("addr_gen_mode", "1"), ("accept_ra", "0"), ("router_solicitations", "0"),
                           ("disable_ipv6", "0")):
            s.lab.run(ns, ["sysctl", "-q", "-w", f"net.ipv6.conf.{VETH}.{key}={value}"])
        s.lab.run(ns, ["ip", "-6", "addr", "add", f"{ipv6_addr(s, host)}/64", "dev", VETH, "nodad"])


# -- registry ------------------------------------------------------------------------------------------

SSH_TOOLS = ("/usr/sbin/sshd", "ssh", "ssh-keygen")
register_negative("https-h2-browse", 108, "https", "tcp", 443, ("nginx", "openssl"), h2_setup, h2_traffic,
     "nginx + curl --http2 --parallel; page loads with think time",
     "HTTP/2 page loads: an index and 3-12 objects multiplexed per connection, pauses between.")
register_negative("https-keepalive", 109, "https", "tcp", 443, ("nginx", "openssl"), partial(web_server, http2=False),
     keepalive_traffic, "nginx + Python http.client; one kept-alive HTTP/1.1 TLS connection",
     "Keep-alive HTTPS browsing: bursts of requests with pauses on one long TLS connection.")
register_negative("https-bulk", 110, "https", "tcp", 443, ("nginx", "openssl"), bulk_setup, bulk_traffic,
     "nginx + curl --limit-rate; 2-16 MiB file",
     "Bulk HTTPS download of a several-MB file at a capped rate.")
register_negative("http-keepalive", 132, "http", "tcp", 80, ("nginx",), partial(web_server, http2=False, tls=False),
     partial(keepalive_traffic, tls=False), "nginx + Python http.client; one kept-alive plain HTTP/1.1 connection",
     "Keep-alive plain HTTP browsing: bursts of readable requests with pauses on one long connection.")
register_negative("http-bulk", 133, "http", "tcp", 80, ("nginx",), partial(bulk_setup, tls=False), partial(bulk_traffic, tls=False),
     "nginx + curl --limit-rate; 2-16 MiB file over plain HTTP",
     "Bulk plain-HTTP download of a several-MB file at a capped rate.")
register_negative("ssh-interactive", 111, "ssh", "tcp", 22, SSH_TOOLS, sshd_setup, ssh_interactive_traffic,
     "OpenSSH with a pty; commands typed at keystroke pace",
     "Interactive SSH: one echoed packet pair per keystroke, think time between commands.")
register_negative("ssh-copy", 112, "ssh", "tcp", 22, (*SSH_TOOLS, "scp", "rsync", "timeout"), sshd_setup, ssh_copy_traffic,
     "scp (SFTP) or rsync -e ssh, upload or download, rate-capped",
     "Bulk copies over SSH with scp or rsync.")
register_negative("rtp-voice", 113, "rtp", "udp", VOICE_PORT, ("gst-launch-1.0",), no_setup, rtp_voice_traffic,
     "GStreamer RTP audio both ways (Opus, PCMU or L16), 20 ms packets",
     "A VoIP-like call: constant-rate small UDP packets in both directions.")
register_negative("rtp-video", 114, "rtp", "udp", VIDEO_PORT, ("gst-launch-1.0",), no_setup, rtp_video_traffic,
     "GStreamer RTP VP8 video plus Opus audio both ways",
     "A video call: bursty VP8 RTP frames and RTP audio in both directions over UDP.")
register_negative("srtp-call", 134, "srtp", "udp", VOICE_PORT, ("gst-launch-1.0", "gst:srtpenc"),
     srtp_call_setup, srtp_call_traffic,
     "GStreamer SRTP Opus/PCMU audio (60%: plus VP8 video) both ways on one 5-tuple, STUN consent checks",
     "A WebRTC-like call: encrypted media and ICE checks bundled on one bidirectional UDP flow.")
register_negative("dns-over-tls", 115, "dot", "tcp", 853, ("unbound", "kdig", "openssl"), dot_setup, dot_traffic,
     "unbound TLS service + kdig +tls +keepopen",
     "DNS-over-TLS on TCP 853: bursts of queries on a kept-open TLS connection.")
register_negative("ntp", 116, "ntp", "udp", 123, ("chronyd",), ntp_setup, ntp_traffic,
     "chronyd server (local stratum) and client -x, sub-second polling",
     "NTP client/server exchanges: small periodic equal-size UDP datagrams.")
register_negative("iperf3-bidir-udp", 117, "iperf3-udp", "udp", 5201, ("iperf3",), iperf_setup,
     partial(iperf_bidir_traffic, udp=True), "iperf3 -u --bidir, 64-400-byte datagrams",
     "Small UDP datagrams both ways at a constant rate: tunnel-like statistics.")
register_negative("iperf3-bidir-tcp", 118, "iperf3-tcp", "tcp", 5201, ("iperf3",), iperf_setup,
     partial(iperf_bidir_traffic, udp=False), "iperf3 --bidir, 64-400-byte writes",
     "TCP in both directions at once with small writes.")
register_negative("https-browser", 143, "https", "tcp", 443, ("nginx", "openssl"), browser_setup, browser_traffic,
     "nginx + curl with a browser's cookies and headers, some form posts; half the runs force a HelloRetryRequest",
     "Browser-weight HTTPS: requests of 0.2-2 KB right after the handshake, posts, and retried handshakes.")
register_negative("websocket", 119, "websocket", "tcp", 443, ("py3:websockets", "openssl"), ws_setup, ws_traffic,
     "python3-websockets echo over wss on 443",
     "A WebSocket (TLS) session: small messages both ways with think time on one long connection.")
register_negative("bittorrent", 120, "bittorrent", "tcp", BT_PORT, ("aria2c", "mktorrent"), bt_setup, bt_traffic,
     "aria2c seed and leech, minimal HTTP tracker; peer wire plain or encrypted (MSE)",
     "A BitTorrent download between two peers found through a local tracker.")
register_negative("ping", 131, "icmp", "icmp", None, ("ping",), no_setup, ping_traffic,
     "iputils ping, interval 0.05-1 s and 56-1400-byte payloads drawn per capture",
     "ICMP echo between the hosts: a flow that is neither TCP nor UDP and no tunnel.")
register_negative("ping6", 140, "icmp", "icmp", None, ("ping",), ipv6_setup, partial(ping_traffic, family=6),
     "iputils ping -6 over the link's IPv6 addresses, interval and size drawn as for ping",
     "ICMPv6 echo: the other family's ping, with the same header layout (a second kind of ICMP echo "
     "for the model to learn from).")
