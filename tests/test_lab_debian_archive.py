"""Fetching an earlier Debian release's packages for the lab: what is checked, what is refused.

The archive is a directory served through ``file://`` here, so these tests need no network;
``test_lab.py`` runs the scenarios that use the real archive.
"""

from __future__ import annotations

import hashlib
import lzma
import shutil
from pathlib import Path

import pytest

from classifier.lab import debian_archive
from classifier.lab.netns import LabError

RELEASE = """\
Origin: Debian
Suite: oldstable
SHA256:
 {index_sha}  {index_len} main/binary-amd64/Packages.xz
 0000000000000000000000000000000000000000000000000000000000000000  10 main/binary-arm64/Packages.xz
"""
PACKAGES = """\
Package: openvpn
Version: 2.5.1-3
Architecture: amd64
Filename: pool/main/o/openvpn/openvpn_2.5.1-3_amd64.deb
SHA256: {deb_sha}
Description: virtual private network daemon
 A continuation line: Package: not-a-field

Package: libssl1.1
Version: 1.1.1w-0+deb11u1
Architecture: arm64
Filename: pool/main/o/openssl/libssl1.1_arm64.deb
SHA256: 00
"""


def _archive(root: Path, deb: bytes, deb_sha: str | None = None) -> str:
    """A one-suite archive under ``root``; returns the SHA-256 its signed-looking Release lists."""
    index = lzma.compress(PACKAGES.format(deb_sha=deb_sha or hashlib.sha256(deb).hexdigest()).encode())
    pool = root / "pool/main/o/openvpn"
    pool.mkdir(parents=True)
    (pool / "openvpn_2.5.1-3_amd64.deb").write_bytes(deb)
    dists = root / "dists/bullseye/main/binary-amd64"
    dists.mkdir(parents=True)
    (dists / "Packages.xz").write_bytes(index)
    sha = hashlib.sha256(index).hexdigest()
    (root / "dists/bullseye/InRelease").write_text(RELEASE.format(index_sha=sha, index_len=len(index)))
    return sha


def test_the_release_file_and_package_index_are_read_as_apt_reads_them() -> None:
    release = RELEASE.format(index_sha="ab" * 32, index_len=7)
    assert debian_archive._sha256_listed(release, "main/binary-amd64/Packages.xz") == "ab" * 32
    with pytest.raises(LabError, match=r"no SHA-256 for main/binary-i386/Packages\.xz"):
        debian_archive._sha256_listed(release, "main/binary-i386/Packages.xz")
    found = debian_archive._stanzas(PACKAGES.format(deb_sha="cd" * 32), {"openvpn", "libssl1.1"}, "amd64")
    assert set(found) == {"openvpn"}  # libssl1.1 is listed for arm64 only
    assert found["openvpn"]["Version"] == "2.5.1-3" and found["openvpn"]["SHA256"] == "cd" * 32


@pytest.mark.skipif(not shutil.which("gpgv"), reason="gpgv is not installed (apt-get install gpgv)")
def test_a_release_file_without_debians_signature_is_refused_and_nothing_is_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _archive(tmp_path / "mirror", b"not really a package")
    monkeypatch.setattr(debian_archive, "ARCHIVE", (tmp_path / "mirror").as_uri())
    monkeypatch.setattr(debian_archive, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(debian_archive, "fetchable", lambda: True)
    with pytest.raises(LabError, match="dists/bullseye/InRelease: bad or unknown signature"):
        debian_archive.unpacked("bullseye", ("openvpn",))
    assert not debian_archive.is_unpacked("bullseye", ("openvpn",))
    assert list((tmp_path / "cache/debian").iterdir()) == []  # the temporary directory is gone too


def test_a_download_whose_digest_differs_from_the_signed_one_is_refused(tmp_path: Path) -> None:
    blob = tmp_path / "a.deb"
    blob.write_bytes(b"tampered")
    listed = hashlib.sha256(b"original").hexdigest()
    with pytest.raises(LabError) as err:
        debian_archive._checked(blob.as_uri(), listed)
    assert str(blob) in str(err.value) and listed in str(err.value)
    assert debian_archive._checked(blob.as_uri(), hashlib.sha256(b"tampered").hexdigest()) == b"tampered"


def test_an_unreachable_archive_names_the_address(tmp_path: Path) -> None:
    with pytest.raises(LabError, match=r"cannot fetch .*no-such-file"):
        debian_archive._get((tmp_path / "no-such-file").as_uri())


def test_a_program_runs_from_its_unpacked_tree_with_its_own_libraries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debian_archive, "CACHE", tmp_path)
    tree = tmp_path / "debian" / "bullseye-openvpn+libssl1.1"
    (tree / "usr/sbin").mkdir(parents=True)
    (tree / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (tree / debian_archive.DONE).write_text("openvpn 2.5.1-3\nlibssl1.1 1.1.1w-0+deb11u1\n")
    prog = debian_archive.program("bullseye", ("openvpn", "libssl1.1"), "usr/sbin/openvpn")
    assert prog.argv0 == str(tree / "usr/sbin/openvpn")
    assert prog.env == {"LD_LIBRARY_PATH": str(tree / "usr/lib/x86_64-linux-gnu")}
    assert prog.version == "openvpn 2.5.1-3"
