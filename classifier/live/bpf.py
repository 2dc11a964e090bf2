"""BPF filters for the capture socket: compile a tcpdump expression, attach it in the kernel.

Why in the kernel: frames the filter rejects never reach the ring, so they cost no copy
and cannot cause drops. The expression is compiled by libpcap (through scapy) or, when
that is unavailable, by ``tcpdump -ddd``; the program's accept value is set to the snap
length, so the kernel also truncates what it keeps.
"""

from __future__ import annotations

import ctypes
import shutil
import socket
import struct
import subprocess

from classifier.errors import UsageError

SO_ATTACH_FILTER = 26
BPF_RET_K = 0x06  # BPF_RET | BPF_K

#: libpcap data link names for ``tcpdump -y``, by LINKTYPE value.
_DLT_NAMES = {1: "EN10MB", 101: "RAW"}

Insn = tuple[int, int, int, int]


def compile_bpf(expression: str, linktype: int, snaplen: int) -> list[Insn]:
    """Compile a tcpdump filter expression for ``linktype`` into (code, jt, jf, k) tuples."""
    try:
        insns = _compile_scapy(expression, linktype)
    except ImportError:
        insns = _compile_tcpdump(expression, linktype)
    return with_snaplen(insns, snaplen)


def snap_only(snaplen: int) -> list[Insn]:
    """A program that accepts every frame, cut to ``snaplen`` bytes."""
    return [(BPF_RET_K, 0, 0, snaplen)]


def with_snaplen(insns: list[Insn], snaplen: int) -> list[Insn]:
    """Make every accepting return keep ``snaplen`` bytes (libpcap compiles its own value in)."""
    return [(c, jt, jf, snaplen if c == BPF_RET_K and k != 0 else k) for c, jt, jf, k in insns]


def _compile_scapy(expression: str, linktype: int) -> list[Insn]:
    try:
        from scapy.arch.common import compile_filter
        from scapy.error import Scapy_Exception
    except (ImportError, OSError) as exc:
        raise ImportError(str(exc)) from exc
    try:
        prog = compile_filter(expression, linktype=linktype)
    except Scapy_Exception as exc:
        raise UsageError(f"--bpf {expression!r}: {exc}") from None
    return [(prog.bf_insns[i].code, prog.bf_insns[i].jt, prog.bf_insns[i].jf, prog.bf_insns[i].k)
            for i in range(prog.bf_len)]


def _compile_tcpdump(expression: str, linktype: int) -> list[Insn]:
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        raise UsageError("--bpf needs libpcap (for scapy) or tcpdump to compile the filter; neither was found")
    dlt = _DLT_NAMES.get(linktype, "EN10MB")
    proc = subprocess.run([tcpdump, "-ddd", "-y", dlt, expression], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        msg = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit status {proc.returncode}"
        raise UsageError(f"--bpf {expression!r}: {msg}")
    lines = proc.stdout.split()
    count = int(lines[0])
    values = list(map(int, lines[1:1 + 4 * count]))
    return [tuple(values[i:i + 4]) for i in range(0, 4 * count, 4)]  # type: ignore[misc]


def attach(sock: socket.socket, insns: list[Insn]) -> None:
    """SO_ATTACH_FILTER: the kernel copies the program, so the buffer need not outlive the call."""
    raw = b"".join(struct.pack("HBBI", *i) for i in insns)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HP", len(insns), ctypes.addressof(buf))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as exc:
        raise UsageError(f"the kernel refused the BPF filter: {exc.strerror or exc}") from None
