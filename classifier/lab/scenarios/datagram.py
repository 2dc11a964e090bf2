"""Datagram negatives: encrypted UDP applications that are not VPNs.

Why they exist: a UDP tunnel (WireGuard, OpenVPN, OpenConnect's DTLS channel, ESP in
UDP) is an encrypted datagram stream with a rhythm of its own, and the model must learn
that rhythm rather than "encrypted UDP = VPN". With a single DTLS negative, a model that
had not seen it knew DTLS framing only from OpenConnect's tunnel and took DTLS for a VPN.
These add DTLS and QUIC applications with other rhythms and a
game-like stream of random-looking datagrams, the kinds of traffic (calls, games, IoT)
a real network is full of.

* ``dtls-download``: OpenSSL ``s_server`` streams records to ``s_client`` at a capped
  rate, the client answers now and then (a one-way transfer over DTLS, no inner ACKs);
* ``dtls-telemetry``: a client reports a small fixed-size record every 0.2-2 s and the
  server acknowledges each (CoAP over DTLS style sensor traffic);
* ``game-udp``: a client sends 30-64 input updates per second (random-looking bytes
  behind a small header) and the server sends 10-30 state snapshots per second;
* ``quic-bulk`` and ``quic-streams``: HTTP/3 (ngtcp2) downloading a 2-16 MiB file, and
  fetching several objects over parallel streams of one connection;
* ``bittorrent-utp``: libtorrent peers exchanging a file over uTP only (BitTorrent's
  UDP transport, BEP 29): a reliable stream over UDP with a 20-byte header whose
  connection id repeats and whose sequence number counts, data one way and selective
  acknowledgements the other, the shape of a tunnel carrying a download.

``bittorrent-utp-transmission`` is the same download from a Transmission seeder: the
data packets come from Transmission's uTP stack (libutp, its own packet sizes and
pacing), the acknowledgements from libtorrent's. It is held out of training
(``training=False``): it measures how the model treats a uTP implementation it never saw.
Trained on, it lowered the threshold and found 2% more of the lab's VPN flows, but the
model alone called more of the held-out fully encrypted applications (Telegram, DNSCrypt)
VPN (docs/model.md, Results).

The same libtorrent peers also run over TCP only, with the peer wire encrypted (MSE,
RC4) in most runs: ``bittorrent-mse``. It lives here beside its uTP twin, not with
aria2c's ``bittorrent``, because it shares the peer script. Why a second TCP client: an
MSE peer wire is random from its first byte with data streaming one way, the look of a
fully encrypted proxy carrying a download; with one client only, the held-out
out-of-fold scores of that client set the model's threshold (docs/model.md), and a
second client is what a new BitTorrent client in the field looks like.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from functools import partial

from classifier.lab.netns import LabError
from classifier.lab.scenarios import SYSTEM_PYTHON
from classifier.lab.scenarios.negatives import (
    check_dtls_client,
    dtls_session,
    dtls_setup,
    quic_setup,
    register_negative,
    send_line,
)
from classifier.lab.session import Session
from classifier.lab.traffic import write_random

GAME_PORT = 27015


def dtls_download_traffic(s: Session) -> None:
    """The server writes records of 500-1300 bytes at ``profile.rate_kbit``; the client sends a line about each second."""
    server, rng = s.extra["dtls-server"], s.rng()
    client = dtls_session(s)
    deadline = time.monotonic() + s.duration
    next_client = time.monotonic() + 1.0
    i = 0
    while time.monotonic() < deadline and client.alive() and server.alive():
        size = rng.randint(500, 1300)
        send_line(server, f"chunk {i} " + "z" * size + "\n")
        if time.monotonic() >= next_client:
            send_line(client, f"progress {i}\n")
            next_client = time.monotonic() + rng.uniform(0.5, 2.0) * s.profile.pause_scale
        i += 1
        time.sleep(size * 8 / (s.profile.rate_kbit * 1000))
    check_dtls_client(client)


def dtls_telemetry_traffic(s: Session) -> None:
    """A sensor-like client: one fixed-size report per period, each acknowledged by the server."""
    server, rng = s.extra["dtls-server"], s.rng()
    client = dtls_session(s)
    report = rng.choice([24, 48, 96, 180])
    period = rng.uniform(0.2, 2.0)
    deadline = time.monotonic() + s.duration
    i = 0
    while time.monotonic() < deadline and client.alive() and server.alive():
        send_line(client, f"r{i:06d}," + "m" * report + "\n")
        time.sleep(0.02)
        send_line(server, f"ack {i:06d}\n")
        i += 1
        time.sleep(period * rng.uniform(0.9, 1.1))
    check_dtls_client(client)


GAME = r"""
import os, random, socket, struct, sys, time

role, ip, port, seconds, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
rng = random.Random(seed)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
deadline = time.monotonic() + seconds
if role == "server":
    sock.bind((ip, port))
    sock.settimeout(30)
    _, peer = sock.recvfrom(2048)
    sock.setblocking(False)
    tick = 1.0 / rng.choice([10, 20, 30])
    seq = 0
    while time.monotonic() < deadline:
        try:
            while True:
                sock.recvfrom(2048)
        except BlockingIOError:
            pass
        body = os.urandom(rng.randint(60, 700) if rng.random() < 0.9 else rng.randint(700, 1200))
        sock.sendto(struct.pack("!HI", 0x5A01, seq) + body, peer)
        seq += 1
        time.sleep(tick * rng.uniform(0.8, 1.2))
else:
    rate = rng.choice([30, 60, 64])
    seq = 0
    while time.monotonic() < deadline:
        sock.sendto(struct.pack("!HI", 0x5A02, seq) + os.urandom(rng.randint(20, 90)), (ip, port))
        seq += 1
        time.sleep(1.0 / rate * rng.uniform(0.7, 1.3))
"""


def game_setup(s: Session) -> None:
    s.extra["game"] = s.file("game.py", GAME)


def game_traffic(s: Session) -> None:
    """A game session: fast small client inputs, slower larger server snapshots, both random-looking."""
    script, seed = str(s.extra["game"]), str(s.profile.seed)
    server = s.lab.spawn(s.server_ns, [sys.executable, script, "server", s.server_ip, str(GAME_PORT),
                                       f"{s.duration + 2}", seed], "game-server")
    s.lab.wait_port(s.server_ns, GAME_PORT, "udp", procs=[server])
    s.lab.run(s.client_ns, [sys.executable, script, "client", s.server_ip, str(GAME_PORT), f"{s.duration}",
                            str(int(seed) + 1)], timeout=s.duration + 30)


def quic_bulk_setup(s: Session) -> None:
    quic_setup(s)
    write_random(s.work / "www" / "big", s.profile.bulk_size)


def quic_bulk_traffic(s: Session) -> None:
    """HTTP/3 downloads of the large file, one connection each, until the duration is over.

    The datagram size is drawn among those the link's MTU carries (a lab path may have a
    smaller one). Over a slow path a download can outlast the capture: once the duration is
    over, one that has not finished is stopped, as a capture that ends mid-download shows it.
    """
    sizes = [size for size in (1200, 1280, 1350, 1452) if size + 28 <= s.lab.path.mtu]
    payload = str(s.rng().choice(sizes))
    deadline = time.monotonic() + s.duration
    while time.monotonic() < deadline:
        try:
            s.lab.run(s.client_ns, ["gtlsclient", "-q", "--exit-on-all-streams-close", "--max-udp-payload-size",
                                    payload, s.server_ip, "443", f"https://{s.server_ip}/big"],
                      timeout=max(30, s.duration + 15))
        except LabError:
            if time.monotonic() < deadline:
                raise


def quic_streams_setup(s: Session) -> None:
    quic_setup(s)
    rng = s.rng()
    for i in range(12):
        write_random(s.work / "www" / f"obj{i}", int(10 ** rng.uniform(2.5, 5.3)))


def quic_streams_traffic(s: Session) -> None:
    """Page-like loads: 3-12 objects on parallel streams of one HTTP/3 connection, think time between."""
    rng = s.rng()
    deadline = time.monotonic() + s.duration
    while time.monotonic() < deadline:
        objs = [f"https://{s.server_ip}/obj{i}" for i in rng.sample(range(12), rng.randint(3, 12))]
        s.lab.run(s.client_ns, ["gtlsclient", "-q", "--exit-on-all-streams-close", "-n", str(len(objs)),
                                s.server_ip, "443", *objs], timeout=20)
        time.sleep(rng.uniform(0.3, 2.0) * s.profile.pause_scale)


UTP_PORT = 6881
#: One libtorrent peer. ``seed``: makes the torrent of FILE (written to TORRENT) and serves it;
#: ``leech``: downloads TORRENT from the seeder at IP:PORT into DIR, at most RATE bytes/s.
#: TRANSPORT (``utp`` or ``tcp``) is the only one switched on, both ways; DHT, local
#: discovery, UPnP and NAT-PMP are off, so the only traffic is that transport between the
#: two peers. CRYPTO ``forced`` allows only an RC4-encrypted peer wire (MSE); ``enabled``
#: is libtorrent's default (encrypted when both sides agree, plaintext allowed).
UTP_PEER = """\
import os, sys, time
import libtorrent as lt
role, transport, crypto = sys.argv[1], sys.argv[2], sys.argv[3]
ip, port, seconds = sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
policy = lt.enc_policy.forced if crypto == "forced" else lt.enc_policy.enabled
level = lt.enc_level.rc4 if crypto == "forced" else lt.enc_level.both
settings = {"listen_interfaces": f"{ip}:{port}" if role == "seed" else f"{ip}:{port + 1}",
            "enable_outgoing_tcp": transport == "tcp", "enable_incoming_tcp": transport == "tcp",
            "enable_outgoing_utp": transport == "utp", "enable_incoming_utp": transport == "utp",
            "out_enc_policy": int(policy), "in_enc_policy": int(policy), "allowed_enc_level": int(level),
            "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
            "alert_mask": 0}
ses = lt.session(settings)
if role == "seed":
    path, torrent = sys.argv[7], sys.argv[8]
    fs = lt.file_storage()
    lt.add_files(fs, path)
    t = lt.create_torrent(fs, 1 << 16)
    lt.set_piece_hashes(t, path.rsplit("/", 1)[0])
    with open(torrent + ".part", "wb") as fh:
        fh.write(lt.bencode(t.generate()))
    os.rename(torrent + ".part", torrent)
    ses.add_torrent({"ti": lt.torrent_info(torrent), "save_path": path.rsplit("/", 1)[0],
                     "flags": lt.torrent_flags.seed_mode})
    print("seeding", flush=True)
else:
    torrent, where, rate, seed_ip = sys.argv[7], sys.argv[8], int(sys.argv[9]), sys.argv[10]
    h = ses.add_torrent({"ti": lt.torrent_info(torrent), "save_path": where})
    h.set_download_limit(rate)
    h.connect_peer((seed_ip, port))
deadline = time.monotonic() + seconds
retry = time.monotonic() + 2
while time.monotonic() < deadline:
    time.sleep(0.2)
    if role == "leech" and h.status().is_seeding:
        break
    if role == "leech" and not h.status().num_peers and time.monotonic() > retry:
        h.connect_peer((seed_ip, port))  # a seeder still verifying its data turned us away
        retry = time.monotonic() + 2
"""


def utp_setup(s: Session, transport: str = "utp") -> None:
    """A 2-16 MiB file and a libtorrent seeder listening on ``transport`` only.

    The run's encryption is drawn here, once, so both peers agree: on uTP libtorrent's
    default, on TCP an RC4-only peer wire in three runs of four (unseeded runs: always).
    """
    seed_dir = s.work / "utp-seed"
    seed_dir.mkdir()
    write_random(seed_dir / "payload.bin", s.profile.bulk_size)
    script = s.file("utp_peer.py", UTP_PEER)
    torrent = s.work / "payload.torrent"
    forced = transport == "tcp" and (not s.profile.seed or s.rng().random() < 0.75)
    mode = (transport, "forced" if forced else "enabled")
    seeder = s.lab.spawn(s.server_ns, [SYSTEM_PYTHON, str(script), "seed", *mode, s.server_ip, str(UTP_PORT),
                                       str(s.duration + 60), str(seed_dir / "payload.bin"), str(torrent)], "utp-seed")
    s.lab.wait_for("the seeder", lambda: "seeding" in seeder.tail(), 60, [seeder])
    s.extra["utp"] = (script, torrent, mode)


def utp_traffic(s: Session) -> None:
    """The client's peer downloads the file from the seeder, rate-capped, for the duration
    (plus the seeder's warm-up, if it has one, before it sends any data)."""
    script, torrent, mode = s.extra["utp"]
    leech_dir = s.work / "utp-leech"
    leech_dir.mkdir(exist_ok=True)
    seconds = s.duration + s.extra.get("utp_warmup", 0)
    s.lab.run(s.client_ns, [SYSTEM_PYTHON, str(script), "leech", *mode, s.client_ip, str(UTP_PORT), f"{seconds}",
                            str(torrent), str(leech_dir), str(s.profile.bulk_rate), s.server_ip],
              timeout=seconds + 30)


#: Transmission's settings for a seeder that talks to the one leecher only: no DHT, local
#: discovery, peer exchange or port mapping, uTP on, no RPC; the torrent is picked up from
#: the watch directory and its data verified from the download directory.
TRANSMISSION_SETTINGS = {
    "dht-enabled": False, "lpd-enabled": False, "pex-enabled": False, "utp-enabled": True,
    "port-forwarding-enabled": False, "peer-port-random-on-start": False, "rpc-enabled": False,
    "watch-dir-enabled": True, "incomplete-dir-enabled": False, "start-added-torrents": True,
    "ratio-limit-enabled": False, "idle-seeding-limit-enabled": False, "speed-limit-up-enabled": False,
    "encryption": 1, "message-level": 1,
}


#: Seconds before a Transmission seeder sends data: it unchokes peers on a 10-second cycle.
TRANSMISSION_UNCHOKE = 12


def transmission_setup(s: Session) -> None:
    """A 2-16 MiB file, its torrent (mktorrent) and transmission-daemon seeding it on UTP_PORT."""
    seed_dir = s.work / "tr-seed"
    watch = s.work / "tr-watch"
    config = s.work / "tr-config"
    for d in (seed_dir, watch, config):
        d.mkdir()
    write_random(seed_dir / "payload.bin", s.profile.bulk_size)
    torrent = s.work / "payload.torrent"
    subprocess.run(["mktorrent", "-l", "18", "-o", str(torrent), str(seed_dir / "payload.bin")], check=True,
                   capture_output=True, timeout=60)
    settings = {**TRANSMISSION_SETTINGS, "peer-port": UTP_PORT, "bind-address-ipv4": s.server_ip,
                "download-dir": str(seed_dir), "watch-dir": str(watch)}
    (config / "settings.json").write_text(json.dumps(settings, indent=1))
    (watch / "payload.torrent").write_bytes(torrent.read_bytes())
    seeder = s.lab.spawn(s.server_ns, ["transmission-daemon", "-f", "-g", str(config)], "transmission")
    # listening on uTP's port; it may still be verifying the data, which the leecher outlasts
    # by connecting again (UTP_PEER)
    s.lab.wait_port(s.server_ns, UTP_PORT, proto="udp", timeout=20, procs=[seeder])
    s.extra["utp"] = (s.file("utp_peer.py", UTP_PEER), torrent, ("utp", "enabled"))
    s.extra["utp_warmup"] = TRANSMISSION_UNCHOKE


register_negative("dtls-download", 121, "dtls", "udp", 4433, ("openssl",), dtls_setup, dtls_download_traffic,
     "openssl s_server streams 500-1300-byte records to s_client at a capped rate",
     "A one-way transfer over DTLS 1.2: large records one way, a short line back about each second.")
register_negative("dtls-telemetry", 122, "dtls", "udp", 4433, ("openssl",), dtls_setup, dtls_telemetry_traffic,
     "openssl s_client sends a fixed-size report every 0.2-2 s, s_server acknowledges",
     "Sensor-style DTLS: periodic small equal-size records and acknowledgements.")
register_negative("game-udp", 123, "game", "udp", GAME_PORT, (), game_setup, game_traffic,
     "Python UDP client (30-64 inputs/s) and server (10-30 snapshots/s), random-looking payloads",
     "A game session: small fast client inputs and larger server snapshots of random-looking bytes.")
register_negative("quic-bulk", 124, "quic", "udp", 443, ("gtlsserver", "gtlsclient"), quic_bulk_setup, quic_bulk_traffic,
     "ngtcp2 gtlsserver/gtlsclient, HTTP/3 download of a 2-16 MiB file",
     "Bulk HTTP/3: a large download over QUIC on UDP 443.")
register_negative("quic-streams", 125, "quic", "udp", 443, ("gtlsserver", "gtlsclient"), quic_streams_setup, quic_streams_traffic,
     "ngtcp2 gtlsclient fetching 3-12 objects on parallel streams of one connection",
     "HTTP/3 page loads: several objects multiplexed on one QUIC connection, think time between.")
register_negative("bittorrent-utp", 135, "bittorrent", "udp", UTP_PORT, ("py3:libtorrent",), utp_setup, utp_traffic,
     "libtorrent seed and leech over uTP only (no TCP, DHT or discovery), rate-capped",
     "BitTorrent over uTP: a reliable stream over UDP with a counting header, data one way, acks the other.")
register_negative("bittorrent-utp-transmission", 153, "bittorrent", "udp", UTP_PORT, ("transmission-daemon", "mktorrent", "py3:libtorrent"),
     transmission_setup, utp_traffic,
     "transmission-daemon seeds, a libtorrent leecher downloads over uTP only, rate-capped",
     "BitTorrent over uTP from a second implementation: Transmission's data packets, libtorrent's acks.",
     training=False)
register_negative("bittorrent-mse", 152, "bittorrent", "tcp", UTP_PORT, ("py3:libtorrent",),
     partial(utp_setup, transport="tcp"), utp_traffic,
     "libtorrent seed and leech over TCP only, RC4-encrypted peer wire (MSE) in most runs, rate-capped",
     "BitTorrent from a second client: an encrypted peer wire, random from its first byte, data one way.")
