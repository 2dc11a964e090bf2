"""A throw-away certificate authority for one lab run (OpenVPN, ocserv, nginx, DTLS, stunnel).

Why EC keys: generating a P-256 key takes milliseconds, RSA seconds; the lab makes a new
PKI for every run so nothing secret is ever stored in the repository.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from classifier.lab.netns import LabError

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pki:
    """Paths of the CA certificate and of the ``server`` and ``client`` key pairs."""

    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(args: list[str], cwd: Path) -> None:
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False)
    if res.returncode != 0:
        raise LabError(f"openssl {args[0]} failed: {res.stderr.strip()[-300:]}")


def make_pki(directory: Path, server_ip: str, server_name: str = "vpnid-lab-server") -> Pki:
    """Create a CA plus server and client certificates under ``directory``.

    The server certificate carries ``serverAuth`` and the server's address and name as
    subjectAltName (curl, openconnect and OpenVPN's ``remote-cert-tls server`` check them).
    """
    d = directory / "pki"
    d.mkdir(parents=True, exist_ok=True)
    _openssl(["req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.crt", "-days", "30",
              "-subj", "/CN=vpnid lab CA"], d)
    ext = {
        "server": f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyAgreement\n"
                  f"extendedKeyUsage=serverAuth\nsubjectAltName=IP:{server_ip},DNS:{server_name}\n",
        "client": "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyAgreement\n"
                  "extendedKeyUsage=clientAuth\n",
    }
    for who, text in ext.items():
        (d / f"{who}.ext").write_text(text)
        cn = server_name if who == "server" else "vpnid-lab-client"
        _openssl(["req", *_EC, "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN={cn}"], d)
        _openssl(["x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                  "-CAcreateserial", "-days", "30", "-out", f"{who}.crt", "-extfile", f"{who}.ext"], d)
    return Pki(d / "ca.crt", d / "ca.key", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key")
