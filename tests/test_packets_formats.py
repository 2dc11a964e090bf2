"""Capture formats: classic pcap variants, pcapng written block by block, gzip, directories, globs.

The pcapng files are assembled here with ``struct`` (section header, interface
descriptions with options, enhanced, simple and obsolete packet blocks, blocks the
reader must skip, a big-endian section) so that every field the reader interprets is
under the test's control.
"""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import NS, T0, pcap_bytes
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import CookedLinux, Ether
from scapy.packet import Raw

from classifier.errors import ErrorLog
from classifier.flows.api import expand_inputs, read_flows
from classifier.packets import InputStats, PacketStatus, iter_packet_batches

MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def udp(i: int, src="10.0.0.1", dst="10.0.0.2", size=10):
    return IP(src=src, dst=dst) / UDP(sport=1000 + i, dport=53) / Raw(b"q" * size)


def read_all(path, chunk_bytes: int | None = None):
    log = ErrorLog(quiet=True)
    kw = {} if chunk_bytes is None else {"chunk_bytes": chunk_bytes}
    batches = list(iter_packet_batches(path, log, **kw))
    cols = {k: np.concatenate([b.cols[k] for b in batches]) for k in batches[0].cols} if batches else {}
    return cols, log


# --------------------------------------------------------------------------- classic pcap


@pytest.mark.parametrize("big", [False, True], ids=["little-endian", "big-endian"])
@pytest.mark.parametrize("nanos", [False, True], ids=["usec", "nsec"])
def test_classic_pcap_byte_orders_and_resolutions(tmp_path, big, nanos):
    stamps = [T0, T0 + 1_234_567_000, T0 + 5 * NS + 999_999_000]
    if nanos:
        stamps = [T0 + 1, T0 + 1_234_567_891, T0 + 5 * NS + 999_999_999]
    frames = [(t, Ether(**MAC) / udp(i)) for i, t in enumerate(stamps)]
    path = tmp_path / "x.pcap"
    data = pcap_bytes(frames, big=big, nanos=nanos)
    path.write_bytes(data)
    magic = {(False, False): "d4c3b2a1", (True, False): "a1b2c3d4", (False, True): "4d3cb2a1",
             (True, True): "a1b23c4d"}[(big, nanos)]
    assert data[:4].hex() == magic
    cols, log = read_all(path)
    assert not log.problems
    assert list(cols["ts"]) == stamps
    assert list(cols["sport"]) == [1000, 1001, 1002]
    assert list(cols["status"]) == [PacketStatus.OK] * 3
    offs = [24]
    for _, f in frames[:-1]:
        offs.append(offs[-1] + 16 + len(f))
    assert list(cols["record_off"]) == offs


def test_pcap_linktype_field_upper_bits_ignored(tmp_path):
    """The top 4 bits of the pcap link-type field carry FCS information, not the type."""
    data = bytearray(pcap_bytes([(T0, Ether(**MAC) / udp(0))]))
    struct.pack_into("<I", data, 20, 1 | 0x10000000)
    (tmp_path / "fcs.pcap").write_bytes(bytes(data))
    cols, log = read_all(tmp_path / "fcs.pcap")
    assert not log.problems and cols["status"][0] == PacketStatus.OK


def test_many_records_across_small_chunks(tmp_path):
    """Records straddling the read-chunk boundary are carried over, not lost or split."""
    shapes = [bytes(Ether(**MAC) / udp(i, size=7 * i)) for i in range(50)]
    frames = [(T0 + i * 1000, shapes[(i * 7) % 50]) for i in range(2000)]
    path = tmp_path / "many.pcap"
    path.write_bytes(pcap_bytes(frames))
    whole, _ = read_all(path)
    for chunk in (1000, 4096, 65536):
        cols, log = read_all(path, chunk_bytes=chunk)
        assert not log.problems
        for k in ("ts", "sport", "ip_len", "record_off", "status", "payload_len"):
            assert np.array_equal(cols[k], whole[k]), (chunk, k)
    assert len(whole["ts"]) == 2000


# --------------------------------------------------------------------------- pcapng


def _opt(code: int, value: bytes, e: str) -> bytes:
    return struct.pack(e + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(btype: int, body: bytes, e: str) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def shb(e: str = "<") -> bytes:
    body = struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1)
    body += _opt(4, b"vpnid tests", e) + _opt(0, b"", e)  # shb_userappl, opt_endofopt
    return _block(0x0A0D0D0A, body, e)


def idb(linktype: int, e: str = "<", tsresol: int | None = None, tsoffset: int | None = None,
        snaplen: int = 0, name: str = "eth0") -> bytes:
    body = struct.pack(e + "HHI", linktype, 0, snaplen)
    opts = _opt(2, name.encode(), e)  # if_name
    if tsresol is not None:
        opts += _opt(9, bytes([tsresol]), e)
    if tsoffset is not None:
        opts += _opt(14, struct.pack(e + "q", tsoffset), e)
    return _block(1, body + opts + _opt(0, b"", e), e)


def epb(iface: int, units: int, frame: object, e: str = "<", wire: int | None = None, cut: int | None = None) -> bytes:
    data = bytes(frame)
    orig = wire if wire is not None else len(data)
    data = data[:cut] if cut is not None else data
    body = struct.pack(e + "IIIII", iface, units >> 32, units & 0xFFFFFFFF, len(data), orig)
    body += data + b"\0" * (-len(data) % 4)
    body += _opt(2, struct.pack(e + "I", 1), e) + _opt(0, b"", e)  # epb_flags: inbound
    return _block(6, body, e)


def spb(frame: object, e: str = "<") -> bytes:
    data = bytes(frame)
    return _block(3, struct.pack(e + "I", len(data)) + data, e)


def opb(iface: int, units: int, frame: object, e: str = "<") -> bytes:
    data = bytes(frame)
    body = struct.pack(e + "HHIIII", iface, 0, units >> 32, units & 0xFFFFFFFF, len(data), len(data)) + data
    return _block(2, body, e)


def test_pcapng_interfaces_resolutions_and_block_kinds(tmp_path):
    sec = T0 // NS
    e = "<"
    blocks = [
        shb(e),
        idb(1, e),  # 0: Ethernet, default microseconds
        idb(101, e, tsresol=9),  # 1: raw IP, nanoseconds
        idb(113, e, tsresol=0x80 | 20, tsoffset=100),  # 2: SLL, 2^-20 s, +100 s offset
        idb(147, e),  # 3: an unsupported link type (USER0): its packets are skipped
        _block(4, struct.pack(e + "HH", 1, 8) + bytes([10, 0, 0, 1]) + b"host" + struct.pack(e + "HH", 0, 0), e),
        epb(0, sec * 1_000_000 + 250_000, Ether(**MAC) / udp(0)),  # t = sec + 0.25
        epb(1, sec * NS + 123_456_789, udp(1)),
        epb(2, (sec << 20) + (1 << 19), CookedLinux(proto=0x0800) / udp(2)),  # sec + 100.5
        epb(3, sec * 1_000_000, b"\x00" * 40),
        spb(Ether(**MAC) / udp(3)),  # interface 0, no timestamp of its own
        _block(5, struct.pack(e + "III", 0, 0, 0), e),  # interface statistics: skipped
        _block(0x0BAD, b"custom", e),  # unknown block type: skipped
        opb(1, sec * NS + 7, udp(4)),
        epb(0, sec * 1_000_000 + 500_000, Ether(**MAC) / udp(5)),
    ]
    path = tmp_path / "multi.pcapng"
    path.write_bytes(b"".join(blocks))
    log = ErrorLog(quiet=True)
    stats = InputStats(str(path))
    batches = list(iter_packet_batches(path, log, stats))
    cols = {k: np.concatenate([b.cols[k] for b in batches]) for k in batches[0].cols}
    assert not log.problems  # an unsupported interface is a warning, not an error
    assert stats.linktypes == {1, 101, 113, 147}
    assert list(cols["linktype"]) == [1, 101, 113, 147, 1, 101, 1]
    ok = cols["status"] == PacketStatus.OK
    assert list(ok) == [True, True, True, False, True, True, True]
    assert list(cols["sport"][ok]) == [1000, 1001, 1002, 1003, 1004, 1005]
    t_prev = sec * NS + 100 * NS + NS // 2
    assert list(cols["ts"]) == [
        sec * NS + 250_000_000, sec * NS + 123_456_789, t_prev, sec * NS,
        sec * NS,  # the simple packet block takes the timestamp of the packet before it
        sec * NS + 7, sec * NS + 500_000_000,
    ]
    offsets = np.cumsum([0] + [len(b) for b in blocks])
    packet_blocks = [6, 7, 8, 9, 10, 13, 14]
    assert list(cols["record_off"]) == [int(offsets[i]) for i in packet_blocks]


def test_pcapng_big_endian_section_after_little_endian(tmp_path, capsys):
    sec = T0 // NS
    le = shb("<") + idb(1, "<") + epb(0, sec * 1_000_000, Ether(**MAC) / udp(0), "<")
    be = (shb(">") + idb(101, ">", tsresol=3) + idb(1, ">")
          + epb(0, sec * 1000 + 5, udp(1), ">") + epb(1, sec * 1_000_000 + 6000, Ether(**MAC) / udp(2), ">")
          + spb(udp(3), ">"))
    path = tmp_path / "sections.pcapng"
    path.write_bytes(le + be)
    cols, log = read_all(path)
    assert not log.problems
    assert list(cols["linktype"]) == [1, 101, 1, 101]  # interface numbering restarts per section
    assert list(cols["status"]) == [PacketStatus.OK] * 4
    assert list(cols["sport"]) == [1000, 1001, 1002, 1003]
    assert list(cols["ts"]) == [sec * NS, sec * NS + 5_000_000, sec * NS + 6_000_000, sec * NS + 6_000_000]
    table = read_flows(path)
    assert table.num_rows == 4


def test_pcapng_snaplen_cut_packets(tmp_path):
    pkt = Ether(**MAC) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=5, dport=6, flags="A") / Raw(b"x" * 1400)
    path = tmp_path / "cut.pcapng"
    path.write_bytes(shb() + idb(1, snaplen=96) + epb(0, 1, pkt, cut=96) + epb(0, 2, pkt, cut=96))
    cols, _ = read_all(path)
    assert list(cols["cap_len"]) == [96, 96]
    assert list(cols["wire_len"]) == [len(pkt)] * 2
    flows = read_flows(path).to_pylist()
    assert len(flows) == 1
    assert flows[0]["bytes"] == 2 * len(pkt[IP])
    assert flows[0]["truncated_packets"] == 2
    assert flows[0]["src2dst_payload_bytes"] == 2 * 1400


# --------------------------------------------------------------------------- inputs


def _flows_sans_capture(table):
    return table.drop(["capture"]).to_pylist()


def test_gzip_inputs_read_like_plain_ones(tmp_path):
    frames = [(T0 + i * NS, Ether(**MAC) / udp(i % 3)) for i in range(10)]
    plain = tmp_path / "a.pcap"
    plain.write_bytes(pcap_bytes(frames))
    ng = tmp_path / "b.pcapng"
    ng.write_bytes(shb() + idb(1) + b"".join(epb(0, t // 1000, f) for t, f in frames))
    for src in (plain, ng):
        gz = tmp_path / (src.name + ".gz")
        gz.write_bytes(gzip.compress(src.read_bytes()))
        expected = _flows_sans_capture(read_flows(src))
        assert len(expected) == 3
        assert _flows_sans_capture(read_flows(gz)) == expected
        # recognised by content, not by name
        renamed = tmp_path / (src.stem + ".bin")
        shutil.copy(gz, renamed)
        assert _flows_sans_capture(read_flows(renamed)) == expected


def test_directory_and_glob_inputs(tmp_path):
    d = tmp_path / "caps"
    (d / "sub").mkdir(parents=True)
    (d / "b.pcap").write_bytes(pcap_bytes([(T0, Ether(**MAC) / udp(1))]))
    (d / "a.pcap").write_bytes(pcap_bytes([(T0, Ether(**MAC) / udp(2)), (T0 + NS, Ether(**MAC) / udp(3))]))
    (d / "sub" / "c.cap").write_bytes(gzip.compress(pcap_bytes([(T0, Ether(**MAC) / udp(4))])))
    (d / "notes.txt").write_text("not a capture\n")
    expected = [str(d / "a.pcap"), str(d / "b.pcap"), str(d / "sub" / "c.cap")]
    assert expand_inputs([d]) == expected
    table = read_flows(d)
    assert table.column("capture").to_pylist() == [expected[0], expected[0], expected[1], expected[2]]
    assert table.column("src_port").to_pylist() == [1002, 1003, 1001, 1004]
    log = ErrorLog(quiet=True)
    globbed = read_flows(str(d / "*.pcap"), log=log)
    assert globbed.column("capture").to_pylist() == expected[:1] * 2 + expected[1:2]
    assert not log.problems
    read_flows(str(d / "*.nothing"), log=log)
    assert len(log.problems) == 1 and "matches no file" in log.problems[0].message


def test_unknown_link_type_is_a_warning_and_the_file_is_skipped(tmp_path, capsys):
    bad = tmp_path / "dvb.pcap"
    bad.write_bytes(pcap_bytes([(T0, Ether(**MAC) / udp(0))], linktype=147))
    good = tmp_path / "good.pcap"
    good.write_bytes(pcap_bytes([(T0, Ether(**MAC) / udp(1))]))
    log = ErrorLog()
    table = read_flows(bad, good, log=log)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln]
    assert len(lines) == 1
    assert "warning" in lines[0] and str(bad) in lines[0] and "147" in lines[0] and "skipped" in lines[0]
    assert log.exit_status == 0
    assert table.column("capture").to_pylist() == [str(good)]


def test_stats_count_what_was_read(tmp_path):
    from scapy.layers.l2 import ARP

    frames = [(T0, Ether(**MAC) / udp(0)), (T0 + 1, Ether(**MAC) / ARP()),
              (T0 + 2, Ether(**MAC) / IP(src="1.1.1.1", dst="2.2.2.2") / TCP() / Raw(b"x" * 100))]
    path = tmp_path / "s.pcap"
    path.write_bytes(pcap_bytes(frames, snaplen=44))  # keeps IP+UDP, cuts the TCP header
    stats = InputStats(str(path))
    list(iter_packet_batches(path, ErrorLog(quiet=True), stats))
    assert stats.packets == 3
    assert stats.not_ip == 1
    assert stats.truncated == 1  # the TCP header was cut by the snap length
    assert stats.bytes_read == sum(len(f) for _, f in frames)  # wire lengths
    assert stats.linktypes == {1}
    assert stats.ok


@pytest.mark.parametrize(("snaplen", "cut", "warned"), [
    (14 + 20 + 8 + 64, 0, False),  # every UDP payload keeps its first 64 bytes: nothing to say
    (14 + 20 + 8 + 48, 0, False),  # 48 kept: only the tail of the heads is gone
    (14 + 20 + 8 + 47, 2, True),  # the two long payloads keep 47 bytes
    (64, 2, True),  # a classic headers-only snap length: 22 payload bytes kept
])
def test_stats_and_warning_for_payloads_cut_by_the_snap_length(tmp_path, capsys, snaplen, cut, warned):
    frames = [(T0, Ether(**MAC) / udp(0, size=200)), (T0 + 1, Ether(**MAC) / udp(0, size=1000)),
              (T0 + 2, Ether(**MAC) / udp(0, size=20)),  # short: whole even at 64 bytes
              (T0 + 3, Ether(**MAC) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=53))]  # no payload
    path = tmp_path / "snap.pcap"
    path.write_bytes(pcap_bytes(frames, snaplen=snaplen))
    stats = InputStats(str(path))
    log = ErrorLog()
    list(iter_packet_batches(path, log, stats))
    assert stats.payload_packets == 3
    assert stats.payload_cut == cut
    err = capsys.readouterr().err
    assert ("warning" in err and str(path) in err and f"{cut / 3:.0%} of the 3 packets" in err
            and "snapshot length" in err) == warned
    assert log.exit_status == 0  # a warning: the flows are still whole
    flows = read_flows(path, log=ErrorLog(quiet=True)).to_pylist()
    assert [f["src2dst_payload_bytes"] for f in flows] == [1220]  # sizes come from the wire lengths


def test_cut_payload_warnings_print_five_times_per_run(tmp_path, capsys):
    frames = [(T0 + i, Ether(**MAC) / udp(0, size=300)) for i in range(3)]
    for k in range(7):
        (tmp_path / f"cut{k}.pcap").write_bytes(pcap_bytes(frames, snaplen=64))
    log = ErrorLog()
    table = read_flows(tmp_path, log=log)
    assert table.num_rows == 7
    lines = capsys.readouterr().err.splitlines()
    assert [ln for ln in lines if "snapshot length cut them" in ln] == lines[:5]
    assert "cut0.pcap" in lines[0] and "cut4.pcap" in lines[4]
    assert lines[5:] == ["vpnid: warning: more inputs with payloads cut by the snapshot length, not shown"]
    assert log.exit_status == 0


@pytest.mark.parametrize(("big", "v6", "warned"), [
    (12, False, True),  # a host's capture: a dozen TCP super-packets among a hundred segments
    (9, False, False),  # too few to say
    (12, True, True),  # IPv6 counts as over IPv4: 1500 + 20 bytes of header is a full frame
])
def test_tcp_segments_merged_by_a_host_are_reported(tmp_path, capsys, big, v6, warned):
    """TCP packets longer than a 1500-byte MTU: a capture made on a host (offloads), and a model for it."""
    from scapy.layers.inet6 import IPv6

    def seg(i: int, size: int):
        ip = IPv6(src="2001:db8::1", dst="2001:db8::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2")
        return T0 + i, Ether(**MAC) / ip / TCP(sport=40000, dport=443, flags="A") / Raw(b"x" * size)

    header = 40 + 20 if v6 else 20 + 20
    full = 1500 + (20 if v6 else 0) - header  # a full frame's payload: not merged
    frames = [seg(i, 8000 if i < big else full) for i in range(100)]
    path = tmp_path / "host.pcap"
    path.write_bytes(pcap_bytes(frames))
    stats = InputStats(str(path))
    log = ErrorLog()
    list(iter_packet_batches(path, log, stats))
    assert (stats.tcp_payload_packets, stats.tcp_merged) == (100, big)
    err = capsys.readouterr().err
    assert (f"{big} of the 100 TCP packets carrying payload are longer than a 1500-byte MTU" in err
            and "--model host-capture" in err and str(path) in err) == warned
    assert log.exit_status == 0


def test_transport_headers_cut_by_the_snap_length_are_reported(tmp_path, capsys):
    """At 64 bytes a frame, TCP over IPv6 (14 + 40 + 20 bytes of headers) keeps no whole TCP header:
    those packets belong to no flow, and the reader says how many."""
    from scapy.layers.inet6 import IPv6

    v6 = [(T0 + i, Ether(**MAC) / IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(sport=1, dport=2, flags="A")
           / Raw(b"x" * 100)) for i in range(4)]
    v4 = [(T0 + 10 + i, Ether(**MAC) / udp(0, size=10)) for i in range(4)]
    path = tmp_path / "v6.pcap"
    path.write_bytes(pcap_bytes(v6 + v4, snaplen=64))
    stats = InputStats(str(path))
    log = ErrorLog()
    list(iter_packet_batches(path, log, stats))
    assert stats.truncated == 4
    err = capsys.readouterr().err
    assert "4 of the 8 packets lost part of the headers a flow needs" in err and str(path) in err
    assert read_flows(path, log=ErrorLog(quiet=True)).num_rows == 1  # only the UDP flow
    assert log.exit_status == 0


def test_input_paths_may_be_pathlike(tmp_path):
    p = tmp_path / "p.pcap"
    p.write_bytes(pcap_bytes([(T0, Ether(**MAC) / udp(0))]))
    assert read_flows(Path(p)).num_rows == read_flows(str(p)).num_rows == 1
