"""Shared fixtures: the public capture corpus and writers for hand-made captures.

The writers build pcap records with ``struct`` so that tests control every header
field the reader interprets (byte order, timestamp resolution, snap length, link
type, original length), and accept scapy packets or raw bytes as frames.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PUBLIC_PCAPS = REPO.parent / "shared" / "pcaps" / "public"
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".gz")

NS = 1_000_000_000
#: A fixed, recognisable epoch for hand-made captures (2024-01-02T03:04:05Z).
T0 = 1_704_164_645 * NS


def frame_bytes(frame: object) -> bytes:
    """Raw bytes of a scapy packet or a bytes-like frame."""
    return frame if isinstance(frame, bytes) else bytes(frame)  # type: ignore[call-overload]


def pcap_bytes(
    frames: Sequence[tuple[int, object]],
    linktype: int = 1,
    *,
    big: bool = False,
    nanos: bool = False,
    snaplen: int = 65535,
    wire_lens: Sequence[int | None] | None = None,
) -> bytes:
    """A classic pcap file: ``frames`` are (timestamp ns, scapy packet or bytes).

    Records longer than ``snaplen`` are cut to it and keep their original length, as
    libpcap does; ``wire_lens`` overrides the original length per record.
    """
    e = ">" if big else "<"
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for i, (ts, frame) in enumerate(frames):
        data = frame_bytes(frame)
        wire = len(data)
        if wire_lens is not None and wire_lens[i] is not None:
            wire = int(wire_lens[i])  # type: ignore[arg-type]
        data = data[:snaplen]
        sec, frac = divmod(int(ts), NS)
        frac = frac if nanos else frac // 1000
        out.append(struct.pack(e + "IIII", sec, frac, len(data), wire))
        out.append(data)
    return b"".join(out)


def cut_pcap(src: Path, dst: Path, snaplen: int) -> None:
    """Rewrite a little-endian classic pcap as if captured with ``snaplen``: records cut, wire lengths kept."""
    data = src.read_bytes()
    assert data[:4] == b"\xd4\xc3\xb2\xa1"
    out, off = [data[:16] + struct.pack("<I", snaplen) + data[20:24]], 24
    while off < len(data):
        sec, frac, cap, wire = struct.unpack_from("<IIII", data, off)
        keep = min(cap, snaplen)
        out.append(struct.pack("<IIII", sec, frac, keep, wire) + data[off + 16:off + 16 + keep])
        off += 16 + cap
    dst.write_bytes(b"".join(out))


def write_pcap(path: str | Path, frames: Sequence[tuple[int, object]], linktype: int = 1, **kw: object) -> Path:
    """Write ``pcap_bytes(frames, linktype, **kw)`` to ``path`` and return it."""
    path = Path(path)
    path.write_bytes(pcap_bytes(frames, linktype, **kw))  # type: ignore[arg-type]
    return path


@pytest.fixture
def pcap_writer(tmp_path: Path) -> Callable[..., Path]:
    """``pcap_writer(name, frames, linktype=1, big=, nanos=, snaplen=, wire_lens=)`` -> path in tmp_path."""

    def write(name: str, frames: Sequence[tuple[int, object]], linktype: int = 1, **kw: object) -> Path:
        return write_pcap(tmp_path / name, frames, linktype, **kw)

    return write


@pytest.fixture(scope="session")
def public_pcaps() -> Path:
    """The public capture corpus (../shared/pcaps/public), or skip when this checkout has none."""
    if not PUBLIC_PCAPS.is_dir():
        pytest.skip(f"public capture corpus not present at {PUBLIC_PCAPS} (it lives beside the repository)")
    return PUBLIC_PCAPS


def public_capture_files() -> list[Path]:
    """Every capture file of the corpus (empty when the corpus is absent), sorted."""
    if not PUBLIC_PCAPS.is_dir():
        return []
    return sorted(p for p in PUBLIC_PCAPS.rglob("*") if p.is_file() and p.suffix.lower() in CAPTURE_SUFFIXES)
