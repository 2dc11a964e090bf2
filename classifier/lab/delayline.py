"""A network path between the lab's two namespaces: one-way delay, jitter, loss, a rate limit, an MTU.

Why this module exists: the lab's namespaces are joined by a veth pair that answers in
microseconds, loses nothing and never queues, so every lab capture shows one kind of path: a
machine talking to itself. Captures made on real networks show tens to hundreds of
milliseconds of round trip, queues behind a bottleneck, the odd lost packet (and the
retransmission after it) and links with an MTU under 1500 (PPPoE, mobile). TCP's behaviour
follows the path (how many segments go out before the first ACK, how bursts bunch up, what a
loss does), so a model trained on one kind of path learns that path's shape too.

The kernel's netem qdisc would do this, but the lab's machines run kernels built without it.
So the path is a small bridge in user space: a third namespace holds one veth end towards each
of the two hosts, and ``forward`` copies every Ethernet frame from one end to the other
through a FIFO queue per direction, released at ``arrival + delay (+ jitter)``, dropped with
probability ``loss``, and spaced by the serialisation time of a ``rate`` link (with a bounded
queue: a frame that would wait longer than ``QUEUE_LIMIT_S`` is dropped, as at a router). Per
direction the queue is FIFO: jitter never reorders frames (reordering is rare on real paths,
and netem's jitter reorders far more than a path does). The MTU is set on the hosts' interfaces
(``PathConditions.mtu``), so the hosts' TCP and tunnel software see it as they would on such a
link.

This is per-frame Python, on purpose: it is the lab's test equipment, not the classifier's hot
path, and the lab's traffic (at most a few MB/s) stays far below what one core forwards.

Run as ``python -m classifier.lab.delayline IFACE_A IFACE_B --delay MS ...`` inside the path
namespace (``Lab`` does this); it prints ``forwarding`` once both sockets are bound.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import random
import selectors
import socket
import sys
import time
from dataclasses import dataclass, fields

#: Linux AF_PACKET constants (socket module has no names for them).
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
#: A frame that would wait longer than this behind the rate limit is dropped (a router's buffer).
QUEUE_LIMIT_S = 0.25
#: Largest frame read (the hosts' offloads are off, so frames are at most MTU + 14 bytes).
MAX_FRAME = 65536
#: Where a capture sits on the path (``vpnid lab capture --tap``): the server's veth or the client's.
TAPS = ("server", "client")


@dataclass(frozen=True)
class PathConditions:
    """One network path, the same in both directions.

    ``delay_ms`` is one way (the round trip is twice it); ``jitter_ms`` adds a uniform
    ``0..jitter_ms`` to each frame's delay (FIFO kept); ``loss`` is the chance a frame is
    dropped; ``rate_kbit`` limits each direction (0: no limit); ``mtu`` is the hosts' link MTU.
    The default is the lab's plain veth pair: no path at all.
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    rate_kbit: int = 0
    mtu: int = 1500

    def __post_init__(self) -> None:
        if not (0 <= self.delay_ms <= 5000 and 0 <= self.jitter_ms <= 5000):
            raise ValueError("delay and jitter must be within 0..5000 ms")
        if not 0 <= self.loss < 0.5:
            raise ValueError("loss must be a fraction within 0..0.5")
        if self.rate_kbit < 0:
            raise ValueError("rate must be positive (kbit/s) or 0 for no limit")
        if not 576 <= self.mtu <= 1500:
            raise ValueError("MTU must be within 576..1500")

    @property
    def ideal(self) -> bool:
        """True for the plain veth pair (no delay line needed)."""
        return self == PathConditions(mtu=self.mtu)

    @classmethod
    def draw(cls, rng: random.Random) -> PathConditions:
        """A path like the ones captures are made on: round trips from a LAN's to an
        intercontinental one (log-uniform 2-400 ms), little jitter, no loss on half of the
        paths and up to 2% on the others, a bottleneck on most, an MTU under 1500 on some."""
        rtt = 2.0 * (200.0 ** rng.random())
        delay = round(rtt / 2, 1)
        jitter = round(rng.uniform(0, min(10.0, delay / 4)), 1)
        loss = 0.0 if rng.random() < 0.5 else round(rng.uniform(0.001, 0.02), 4)
        rate = rng.choice([0, 2000, 8000, 20000, 50000, 100000])
        mtu = rng.choice([1500, 1500, 1500, 1492, 1480, 1420, 1400])
        return cls(delay_ms=delay, jitter_ms=jitter, loss=loss, rate_kbit=rate, mtu=mtu)

    @classmethod
    def parse(cls, text: str) -> PathConditions:
        """``delay=40,jitter=4,loss=0.005,rate=8000,mtu=1400`` (any subset; ms, fraction, kbit/s)."""
        names = {"delay": "delay_ms", "jitter": "jitter_ms", "loss": "loss", "rate": "rate_kbit", "mtu": "mtu"}
        values: dict[str, float | int] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep or key.strip() not in names:
                raise ValueError(f"path item {item!r}: expected NAME=VALUE with NAME one of {', '.join(names)}")
            field_name = names[key.strip()]
            try:
                values[field_name] = int(value) if field_name in ("rate_kbit", "mtu") else float(value)
            except ValueError:
                raise ValueError(f"path item {item!r}: {value!r} is not a number") from None
        return cls(**values)  # type: ignore[arg-type]

    def describe(self) -> str:
        """Manifest-notes text, e.g. ``path 40 ms one way (+0-4 ms), 0.5% loss, 8 Mbit/s, MTU 1400``."""
        parts = [f"path {self.delay_ms:g} ms one way" + (f" (+0-{self.jitter_ms:g} ms)" if self.jitter_ms else "")]
        if self.loss:
            parts.append(f"{self.loss * 100:g}% loss")
        if self.rate_kbit:
            parts.append(f"{self.rate_kbit / 1000:g} Mbit/s")
        parts.append(f"MTU {self.mtu}")
        return ", ".join(parts)

    def argv(self) -> list[str]:
        """Command-line options of ``python -m classifier.lab.delayline`` for these conditions."""
        return [arg for f in fields(self) if f.name != "mtu"
                for arg in (f"--{f.name.split('_')[0]}", str(getattr(self, f.name)))]


class Direction:
    """The queue of one direction: when each arriving frame leaves, or that it is dropped.

    A pure scheduler (time is passed in), so the path's arithmetic is tested without sockets.
    """

    def __init__(self, path: PathConditions, rng: random.Random) -> None:
        self.path = path
        self.rng = rng
        self.link_free = 0.0  # when the rate-limited link finishes sending the last admitted frame
        self.last_release = 0.0

    def admit(self, now: float, size: int) -> float | None:
        """Release time (seconds, the clock of ``now``) of a ``size``-byte frame arriving at
        ``now``, or None when it is lost or the bottleneck's queue is full."""
        p = self.path
        if p.loss and self.rng.random() < p.loss:
            return None
        sent = now  # when the frame's last bit has crossed the bottleneck
        if p.rate_kbit:
            queued = max(now, self.link_free)
            if queued - now > QUEUE_LIMIT_S:
                return None
            sent = self.link_free = queued + size * 8 / (p.rate_kbit * 1000.0)
        delay = p.delay_ms + (self.rng.uniform(0, p.jitter_ms) if p.jitter_ms else 0.0)
        release = max(sent + delay / 1000.0, self.last_release)  # FIFO: jitter never reorders
        self.last_release = release
        return release


def _open(iface: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((iface, 0))
    sock.setblocking(False)
    return sock


def forward(iface_a: str, iface_b: str, path: PathConditions, seed: int = 0) -> None:
    """Copy frames between ``iface_a`` and ``iface_b`` through ``path`` until killed."""
    rng = random.Random(seed)
    socks = {iface_a: _open(iface_a), iface_b: _open(iface_b)}
    other = {iface_a: socks[iface_b], iface_b: socks[iface_a]}
    queues: dict[str, collections.deque[tuple[float, bytes]]] = {iface_a: collections.deque(),
                                                                 iface_b: collections.deque()}
    directions = {iface_a: Direction(path, rng), iface_b: Direction(path, rng)}
    sel = selectors.DefaultSelector()
    for name, sock in socks.items():
        sel.register(sock, selectors.EVENT_READ, name)
    print("forwarding", flush=True)
    while True:
        now = time.monotonic()
        for name, queue in queues.items():  # send what is due
            while queue and queue[0][0] <= now:
                _, frame = queue.popleft()
                with contextlib.suppress(OSError):  # a full buffer loses the frame, as a real link would
                    other[name].send(frame)
        due = [queue[0][0] for queue in queues.values() if queue]
        timeout = max(0.0, min(due) - time.monotonic()) if due else 1.0
        for key, _ in sel.select(timeout):
            name = key.data
            sock = socks[name]
            while True:
                try:
                    frame, addr = sock.recvfrom(MAX_FRAME)
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING:  # our own copies towards this host
                    continue
                release = directions[name].admit(time.monotonic(), len(frame))
                if release is not None:
                    queues[name].append((release, frame))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m classifier.lab.delayline", description=__doc__.split("\n")[0])
    parser.add_argument("iface_a")
    parser.add_argument("iface_b")
    parser.add_argument("--delay", type=float, default=0.0, help="one-way delay, ms")
    parser.add_argument("--jitter", type=float, default=0.0, help="extra delay drawn in 0..JITTER ms")
    parser.add_argument("--loss", type=float, default=0.0, help="chance a frame is dropped")
    parser.add_argument("--rate", type=int, default=0, help="rate limit of each direction, kbit/s (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the loss and jitter draws")
    args = parser.parse_args(argv)
    path = PathConditions(delay_ms=args.delay, jitter_ms=args.jitter, loss=args.loss, rate_kbit=args.rate)
    try:
        forward(args.iface_a, args.iface_b, path, args.seed)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
