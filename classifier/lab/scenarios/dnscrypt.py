"""Encrypted DNS (N = 158): DNSCrypt v2 between a stub resolver and a resolver.

Why: a DNSCrypt query is random after its first eight bytes (the resolver's client magic)
and padded to a multiple of 64 bytes, and the answer is random after its own eight; a
model that never met it took the public corpus's DNSCrypt exchanges (one padded query, one
padded answer per flow) for a tunnel's handshake. The stub opens a fresh UDP socket per
query, so a resolver busy for a minute leaves dozens of two-packet flows, some of them
longer when names are retried, beside the cleartext certificate lookups on the same port.

Configuration:

- server namespace: dnsdist (Debian 12, built with libsodium) holds a DNSCrypt bind on
  198.18.158.1:443 with provider ``2.dnscrypt-cert.lab.example``, a provider key pair and a
  resolver certificate it makes at start-up (``generateDNSCryptProviderKeys``,
  ``generateDNSCryptCertificate``), and forwards the decrypted queries to dnsmasq on
  127.0.0.1:53, which answers for ``lab.example``;
- client namespace: dnscrypt-proxy 2.0.45 (Debian 11's package: Debian 12 no longer ships
  it; fetched and checked by ``classifier.lab.debian_archive``) with the resolver as its
  only, static server (an ``sdns://`` stamp built from the provider's public key), its
  cache off so every query goes out, listening on 127.0.0.1:53;
- traffic: ``dig`` asks the stub bursts of 1-8 names (A, AAAA, TXT, MX) with pauses
  between, as a browser's lookups come.

Held out of training (``training=False``): the threshold is set on scores of scenarios
each left out of fitting, and no other negative sends short, fully random datagrams, so
left out it scored like a tunnel and pushed the threshold over most tunnels' flows
(docs/model.md, Results: "Tried and left out: DNSCrypt in training"). It measures how the
model alone treats an encrypted protocol it never saw; the signature stage names it.
"""

from __future__ import annotations

import base64
import struct
import time

from classifier.lab import debian_archive
from classifier.lab.netns import LabError
from classifier.lab.scenarios.negatives import register_negative
from classifier.lab.session import Session
from classifier.lab.traffic import start_dnsmasq

DNSCRYPT_PORT = 443
PROVIDER = "2.dnscrypt-cert.lab.example"
#: dnscrypt-proxy from Debian 11 (a static Go binary: no libraries beside it).
DNSCRYPT_PROXY = ("bullseye", ("dnscrypt-proxy",), "usr/sbin/dnscrypt-proxy")

DNSDIST_CONF = """\
setLocal("127.0.0.1:5399")
addACL("198.18.0.0/15")
setSecurityPollSuffix("")
generateDNSCryptProviderKeys("{work}/provider.public", "{work}/provider.private")
generateDNSCryptCertificate("{work}/provider.private", "{work}/resolver.cert", "{work}/resolver.key",
                            {serial}, os.time() - 60, os.time() + 86400)
addDNSCryptBind("{ip}:{port}", "{provider}", "{work}/resolver.cert", "{work}/resolver.key")
newServer({{address="127.0.0.1:53"}})
"""

PROXY_CONF = """\
listen_addresses = ['127.0.0.1:53']
server_names = ['lab']
ipv4_servers = true
ipv6_servers = false
dnscrypt_servers = true
doh_servers = false
require_dnssec = false
require_nolog = false
require_nofilter = false
force_tcp = false
timeout = 2500
cert_refresh_delay = 240
netprobe_timeout = 0
ignore_system_dns = true
fallback_resolvers = ['{ip}:53']
cache = false
block_ipv6 = false
log_level = 2

[static]
  [static.'lab']
  stamp = '{stamp}'
"""


def dnscrypt_stamp(address: str, public_key: bytes, provider: str) -> str:
    """The ``sdns://`` stamp naming a DNSCrypt resolver (DNS Stamps, protocol 0x01).

    Layout: protocol byte 0x01, eight bytes of properties (little endian; 0: no DNSSEC,
    logging or filtering promised), then address, provider public key and provider name,
    each prefixed by its length in one byte; base64url without padding.
    """
    if len(public_key) != 32:
        raise ValueError(f"a DNSCrypt provider public key is 32 bytes, not {len(public_key)}")
    body = b"\x01" + struct.pack("<Q", 0)
    for part in (address.encode(), public_key, provider.encode()):
        body += bytes([len(part)]) + part
    return "sdns://" + base64.urlsafe_b64encode(body).decode().rstrip("=")


def dnscrypt_setup(s: Session) -> None:
    """dnsmasq and dnsdist in the server namespace, dnscrypt-proxy in the client's."""
    start_dnsmasq(s, "127.0.0.1")
    conf = s.file("dnsdist.conf", DNSDIST_CONF.format(work=s.work, ip=s.server_ip, port=DNSCRYPT_PORT,
                                                      provider=PROVIDER, serial=s.rng().randrange(1, 1 << 30)))
    dnsdist = s.lab.spawn(s.server_ns, ["dnsdist", "--supervised", "--disable-syslog", "-C", str(conf)], "dnsdist")
    s.lab.wait_port(s.server_ns, DNSCRYPT_PORT, "udp", procs=[dnsdist])
    public = (s.work / "provider.public").read_bytes()
    stamp = dnscrypt_stamp(f"{s.server_ip}:{DNSCRYPT_PORT}", public, PROVIDER)
    prog = debian_archive.program(*DNSCRYPT_PROXY)
    proxy_conf = s.file("dnscrypt-proxy.toml", PROXY_CONF.format(ip=s.server_ip, stamp=stamp))
    proxy = s.lab.spawn(s.client_ns, [prog.argv0, "-config", str(proxy_conf)], "dnscrypt-proxy", env=prog.env,
                        cwd=s.work)
    s.lab.wait_port(s.client_ns, 53, "udp", procs=[proxy])
    # The stub answers only once it holds the resolver's certificate.
    s.lab.wait_for("an answer through dnscrypt-proxy", lambda: _ask(s, ["ready.lab.example", "A"]),
                   procs=[proxy, dnsdist])


def _ask(s: Session, query: list[str]) -> bool:
    res = s.lab.run(s.client_ns, ["dig", "+tries=1", "+time=3", "+short", "@127.0.0.1", *query],
                    check=False, timeout=10)
    return res.returncode == 0 and bool(res.stdout.strip())


def dnscrypt_traffic(s: Session) -> None:
    """Bursts of 1-8 lookups through the stub, pauses of 0.2-3 s (scaled) between bursts."""
    rng = s.rng()
    deadline = time.monotonic() + s.duration
    ok = 0
    while time.monotonic() < deadline:
        for _ in range(rng.randint(1, 8)):
            qtype = rng.choices(["A", "AAAA", "TXT", "MX"], weights=[6, 3, 1, 1])[0]
            name = "txt.lab.example" if qtype == "TXT" else f"h{rng.randrange(100000)}.lab.example"
            # the zone holds A and TXT records only: an empty answer is AAAA's and MX's right one
            ok += _ask(s, [name, qtype]) or qtype in ("AAAA", "MX")
        time.sleep(rng.uniform(0.2, 3.0) * s.profile.pause_scale)
    if not ok:
        raise LabError("no answer through DNSCrypt")


register_negative("dnscrypt", 158, "dnscrypt", "udp", DNSCRYPT_PORT,
                  ("dnsdist", "dnsmasq", "dig", "deb:bullseye/dnscrypt-proxy"), dnscrypt_setup, dnscrypt_traffic,
                  "dnsdist DNSCrypt bind + dnscrypt-proxy 2.0.45 (Debian 11) stub, cache off; dig bursts",
                  "DNSCrypt v2 over UDP: one padded, encrypted query and answer per flow, cleartext "
                  "certificate lookups on the same port.", training=False)
