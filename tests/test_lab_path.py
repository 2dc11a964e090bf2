"""The lab's network path (classifier/lab/delayline.py): its arithmetic, its options, its draws.

The delay line's scheduler is a pure function of arrival times and sizes, so what a path does
to frames (delay, FIFO order under jitter, loss share, spacing at a rate limit, a full queue)
is checked here without sockets or root; test_lab.py runs it between real daemons.
"""

from __future__ import annotations

import itertools
import random

import pytest

from classifier.cli.lab import parse_path
from classifier.errors import UsageError
from classifier.lab.delayline import QUEUE_LIMIT_S, Direction, PathConditions
from classifier.lab.runner import capture_notes
from classifier.lab.scenarios import all_scenarios
from classifier.lab.session import TrafficProfile


def test_a_frame_leaves_after_the_delay_and_jitter_never_reorders() -> None:
    path = PathConditions(delay_ms=30, jitter_ms=20)
    d = Direction(path, random.Random(1))
    arrivals = [i * 0.001 for i in range(2000)]  # 1 ms apart: jitter (0-20 ms) would reorder them
    releases = [d.admit(t, 100) for t in arrivals]
    assert all(r is not None for r in releases)
    waits = [r - t for r, t in zip(releases, arrivals, strict=True)]
    assert min(waits) >= 0.030 - 1e-9
    assert max(waits) <= 0.050 + 0.020  # the jitter bound, plus waiting behind a late frame
    assert all(b >= a for a, b in itertools.pairwise(releases))
    assert max(waits) - min(waits) > 0.010  # the jitter is there


def test_loss_drops_about_its_share() -> None:
    d = Direction(PathConditions(loss=0.02), random.Random(7))
    dropped = sum(d.admit(i * 0.01, 100) is None for i in range(20000))
    assert 300 < dropped < 500  # 2% of 20000 = 400, binomial spread about 20


def test_a_rate_limit_spaces_frames_and_drops_when_its_queue_is_full() -> None:
    rate = 8000  # kbit/s: a 1000-byte frame takes 1 ms
    d = Direction(PathConditions(delay_ms=10, rate_kbit=rate), random.Random(0))
    burst = [d.admit(0.0, 1000) for _ in range(400)]  # 400 frames at once: 400 ms of sending
    sent = [r for r in burst if r is not None]
    gaps = {round(b - a, 6) for a, b in itertools.pairwise(sent)}
    assert gaps == {0.001}
    assert sent[0] == pytest.approx(0.011)
    assert len(sent) == pytest.approx(QUEUE_LIMIT_S / 0.001, abs=2)  # the rest found the queue full
    later = d.admit(10.0, 1000)  # the queue drained long ago
    assert later == pytest.approx(10.011)


def test_path_options_parse_describe_and_refuse_nonsense() -> None:
    path = PathConditions.parse("delay=40, jitter=4,loss=0.005,rate=8000,mtu=1400")
    assert path == PathConditions(delay_ms=40, jitter_ms=4, loss=0.005, rate_kbit=8000, mtu=1400)
    assert path.describe() == "path 40 ms one way (+0-4 ms), 0.5% loss, 8 Mbit/s, MTU 1400"
    assert path.argv() == ["--delay", "40.0", "--jitter", "4.0", "--loss", "0.005", "--rate", "8000"]
    assert not path.ideal and PathConditions(mtu=1400).ideal
    for bad, said in (("delay", "NAME=VALUE"), ("speed=3", "NAME one of"), ("delay=fast", "not a number"),
                      ("loss=0.7", "loss"), ("mtu=9000", "MTU")):
        with pytest.raises(ValueError, match=said):
            PathConditions.parse(bad)
    with pytest.raises(UsageError, match=r"--path: .*MTU"):
        parse_path("mtu=100", None)


def test_vary_draws_reproducible_paths_within_their_ranges() -> None:
    fixed, rng = parse_path("vary", 5)
    assert fixed is None and rng is not None
    _, again = parse_path("vary", 5)
    paths = [PathConditions.draw(rng) for _ in range(300)]
    assert paths == [PathConditions.draw(again) for _ in range(300)]
    assert all(1.0 <= p.delay_ms <= 200.0 and p.jitter_ms <= min(10.0, p.delay_ms / 4) for p in paths)
    assert 0.35 < sum(p.loss == 0 for p in paths) / len(paths) < 0.65
    assert {p.mtu for p in paths} >= {1500, 1400} and any(p.rate_kbit == 0 for p in paths)
    assert min(p.delay_ms for p in paths) < 5 and max(p.delay_ms for p in paths) > 100  # LAN to far away
    # the path draws have a generator of their own: a seed's traffic draws stay what they were
    assert parse_path(None, 5) == (None, None)


def test_manifest_notes_name_the_path_unless_it_is_the_plain_link() -> None:
    scenarios = all_scenarios()
    wg, crafted = scenarios["wireguard"], scenarios["6in4-crafted"]
    plain = capture_notes(wg, TrafficProfile())
    assert capture_notes(wg, TrafficProfile(), PathConditions()) == plain
    slow = PathConditions(delay_ms=25, mtu=1492)
    assert capture_notes(wg, TrafficProfile(), slow) == f"{plain}; path 25 ms one way, MTU 1492"
    assert "path" not in capture_notes(crafted, TrafficProfile(), slow)  # crafted captures have no link
    assert capture_notes(wg, TrafficProfile(), slow, "client") == f"{plain}; path 25 ms one way, MTU 1492; " \
                                                                "captured at the client"
    assert capture_notes(wg, TrafficProfile(), None, "client") == f"{plain}; captured at the client"
