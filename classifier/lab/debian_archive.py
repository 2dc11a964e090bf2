"""Older releases of a daemon, from an earlier Debian release's archive, for lab scenarios.

Why: a tunnel's handshake changes between releases (OpenVPN 2.5 numbers its control
messages where 2.6 counts acknowledgements), and the VPN servers in the field run many
of them. The machine's own packages give one release; Debian's archive still serves the
previous one. Its packages are unpacked into a cache directory (never installed: the
system's own release stays as it is) and run from there with their own libraries.

Every byte is checked the way apt checks it: the suite's ``InRelease`` must carry a good
signature from the Debian archive keyring (``gpgv``), the package index must have the
SHA-256 that file lists, and each package the SHA-256 the index lists. Nothing unsigned
is run.

``unpacked(suite, packages)`` returns the directory a set of packages was unpacked into,
fetching it the first time; ``program(...)`` the command and environment to run one of
its executables.
"""

from __future__ import annotations

import contextlib
import hashlib
import lzma
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from classifier.lab.netns import LabError

ARCHIVE = os.environ.get("VPNID_LAB_DEBIAN_MIRROR", "http://deb.debian.org/debian")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
#: Where unpacked packages are kept between runs (one directory per suite and package set).
CACHE = Path(os.environ.get("VPNID_LAB_CACHE", "/var/cache/vpnid-lab"))
#: Marks a complete unpacking (written last), with the packages and versions it holds.
DONE = ".vpnid-unpacked"


@dataclass(frozen=True)
class Program:
    """An executable unpacked from the archive: ``argv0`` plus the environment it needs, and
    ``version``, the package it came from as the unpacking recorded it ("openvpn 2.5.1-3")."""

    argv0: str
    env: dict[str, str]
    version: str


def fetchable() -> bool:
    """Can packages be fetched and checked here (``gpgv``, ``dpkg-deb`` and the keyring)?"""
    return all(shutil.which(t) for t in ("gpgv", "dpkg-deb")) and KEYRING.is_file()


def _arch() -> str:
    out = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "amd64"


def _target(suite: str, packages: tuple[str, ...]) -> Path:
    return CACHE / "debian" / f"{suite}-{'+'.join(packages)}"


def is_unpacked(suite: str, packages: tuple[str, ...]) -> bool:
    """Have ``packages`` of ``suite`` been fetched, checked and unpacked completely (the marker is written last)?"""
    return (_target(suite, packages) / DONE).is_file()


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return resp.read()
    except (urllib.error.URLError, OSError) as exc:
        raise LabError(f"cannot fetch {url}: {getattr(exc, 'reason', exc)} (Debian's archive; "
                       "VPNID_LAB_DEBIAN_MIRROR names another mirror)") from exc


def _verified_release(suite: str, work: Path) -> str:
    """The signed text of the suite's InRelease, once gpgv has checked its signature."""
    signed = work / "InRelease"
    signed.write_bytes(_get(f"{ARCHIVE}/dists/{suite}/InRelease"))
    text = work / "Release"
    res = subprocess.run(["gpgv", "--keyring", str(KEYRING), "--output", str(text), str(signed)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise LabError(f"{ARCHIVE}/dists/{suite}/InRelease: bad or unknown signature "
                       f"(keyring {KEYRING}): {res.stderr.strip().splitlines()[-1:]}")
    return text.read_text("utf-8", "replace")


def _sha256_listed(release: str, name: str) -> str:
    """The SHA-256 the Release file lists for ``name`` (a path under the suite)."""
    in_sha256 = False
    for line in release.splitlines():
        if not line.startswith(" "):
            in_sha256 = line.startswith("SHA256:")
            continue
        parts = line.split()
        if in_sha256 and len(parts) == 3 and parts[2] == name:
            return parts[0]
    raise LabError(f"the Release file lists no SHA-256 for {name}")


def _checked(url: str, sha256: str) -> bytes:
    data = _get(url)
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise LabError(f"{url}: SHA-256 {got} is not the {sha256} the signed index lists")
    return data


def _stanzas(index: str, wanted: set[str], arch: str) -> dict[str, dict[str, str]]:
    """The index entries of the wanted packages (the first of each name for ``arch`` or all)."""
    found: dict[str, dict[str, str]] = {}
    for block in index.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        name = fields.get("Package")
        if name in wanted and name not in found and fields.get("Architecture") in (arch, "all"):
            found[name] = fields
    return found


def unpacked(suite: str, packages: tuple[str, ...]) -> Path:
    """The directory ``packages`` of ``suite`` are unpacked into; fetched and checked the first time.

    ``packages`` names every package needed that the machine's own release lacks (no
    dependency resolution: the rest comes from the system). Unpacking goes to a temporary
    directory that is renamed when complete, so a failed or concurrent run never leaves a
    half-unpacked tree behind.
    """
    target = _target(suite, packages)
    if is_unpacked(suite, packages):
        return target
    if not fetchable():
        raise LabError(f"fetching {', '.join(packages)} from Debian {suite} needs gpgv, dpkg-deb and "
                       f"{KEYRING} (apt-get install gpgv dpkg debian-archive-keyring)")
    arch = _arch()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        work = Path(tmp)
        release = _verified_release(suite, work)
        index_name = f"main/binary-{arch}/Packages.xz"
        index = lzma.decompress(_checked(f"{ARCHIVE}/dists/{suite}/{index_name}",
                                         _sha256_listed(release, index_name))).decode("utf-8", "replace")
        entries = _stanzas(index, set(packages), arch)
        missing = [p for p in packages if p not in entries]
        if missing:
            raise LabError(f"Debian {suite} ({arch}) has no package {', '.join(missing)}")
        root = work / "root"
        versions = []
        for name in packages:
            fields = entries[name]
            deb = work / f"{name}.deb"
            deb.write_bytes(_checked(f"{ARCHIVE}/{fields['Filename']}", fields["SHA256"]))
            res = subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise LabError(f"dpkg-deb could not unpack {deb.name}: {res.stderr.strip()}")
            versions.append(f"{name} {fields.get('Version', '?')}")
        (root / DONE).write_text("\n".join(versions) + "\n")
        with contextlib.suppress(FileExistsError, OSError):
            root.rename(target)  # a concurrent run that finished first keeps its copy
    if not is_unpacked(suite, packages):
        raise LabError(f"unpacking {', '.join(packages)} from Debian {suite} into {target} failed")
    return target


def program(suite: str, packages: tuple[str, ...], executable: str) -> Program:
    """How to run ``executable`` (e.g. ``usr/sbin/openvpn``) of packages unpacked from ``suite``."""
    root = unpacked(suite, packages)
    libs = [str(d) for d in sorted(root.glob("usr/lib/*-linux-gnu*")) + sorted(root.glob("lib/*-linux-gnu*"))
            if d.is_dir()]
    versions = (root / DONE).read_text().split("\n")
    return Program(argv0=str(root / executable), env={"LD_LIBRARY_PATH": ":".join(libs)},
                   version=next((v for v in versions if v.startswith(packages[0] + " ")), packages[0]))
