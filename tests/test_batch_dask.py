"""``vpnid batch`` on a real Dask cluster (a scheduler and two workers on loopback) gives
the same dataset, byte for byte, as the local process pool."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from classifier.batch.split import split_pcap
from classifier.cli.main import main

BIN = Path(sys.executable).parent
DASK = BIN / "dask"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, even by SIGKILL (no leftovers)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    return subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, preexec_fn=_die_with_parent)


@pytest.fixture
def cluster(tmp_path: Path):
    if not DASK.exists():
        pytest.skip(f"dask command line not installed at {DASK}")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [_spawn([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                    tmp_path / "scheduler.log")]
    try:
        for i in range(2):
            procs.append(_spawn([str(DASK), "worker", address, "--host", "127.0.0.1", "--nworkers", "1",
                                 "--nthreads", "1", "--no-dashboard", "--memory-limit", "0",
                                 "--name", f"w{i}", "--local-directory", str(tmp_path / f"w{i}")],
                                tmp_path / f"worker{i}.log"))
        from distributed import Client

        deadline = time.monotonic() + 45
        while True:
            try:
                with Client(address, timeout=5) as c:
                    c.wait_for_workers(2, timeout=max(1.0, deadline - time.monotonic()))
                break
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    logs = "\n".join(p.read_text(errors="replace")[-800:] for p in tmp_path.glob("*.log"))
                    pytest.fail(f"Dask cluster did not come up:\n{logs}")
                time.sleep(0.5)
        yield address
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)


def test_dask_cluster_gives_the_local_dataset_byte_for_byte(cluster: str, tmp_path: Path, capsys) -> None:
    from test_batch_merge import _synthetic

    _synthetic(tmp_path / "whole.pcap")
    pieces = [str(p) for p in split_pcap(tmp_path / "whole.pcap", tmp_path / "rot", seconds=2)]
    lab = Path(__file__).resolve().parents[1] / "pcaps"
    pieces += [str(p) for p in sorted(lab.glob("wireguard*.pcap"))[:2]]

    local = tmp_path / "local"
    assert main(["batch", *pieces, "-o", str(local), "--workers", "2", "--no-model"]) == 0
    capsys.readouterr()
    remote = tmp_path / "remote"
    assert main(["batch", *pieces, "-o", str(remote), "--scheduler", cluster, "--workers", "2",
                 "--no-model"]) == 0
    err = capsys.readouterr().err
    assert "Dask cluster" in err and f"[{len(pieces)}/{len(pieces)}]" in err

    parts_local = sorted(p.name for p in local.glob("part-*.parquet"))
    parts_remote = sorted(p.name for p in remote.glob("part-*.parquet"))
    assert parts_local and parts_local == parts_remote
    for name in parts_local:
        assert (local / name).read_bytes() == (remote / name).read_bytes(), name

    # A rerun against the cluster finds everything done and leaves the dataset alone.
    assert main(["batch", *pieces, "-o", str(remote), "--scheduler", cluster, "--no-model"]) == 0
    assert "already up to date" in capsys.readouterr().err
