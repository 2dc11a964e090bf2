"""Real browsers (N = 144-149): Chromium over HTTPS and QUIC, Firefox, Chromium through proxies.

Why: curl and Python speak TLS the way OpenSSL does; most HTTPS on a real network comes
from browsers, whose TLS stack (BoringSSL) and HTTP/2 client look different on the wire.
Chromium's ClientHello carries a post-quantum key share (X25519MLKEM768, 1.2 KB of it), so
the hello alone is 1.7-2.4 KB and takes two TCP segments; it adds GREASE values and an
encrypted-client-hello placeholder, resumes sessions from tickets, opens up to six
connections per host over HTTP/1.1, and sends its HTTP/2 settings, window update and
header blocks right after the handshake. A large first flight and a burst of client
bytes after the handshake are also what a proxy carrying TLS shows, so a model that
never saw a browser could take one for a tunnel.

Configuration: nginx as ``web_server`` (HTTP/2 in three runs of four, TLS 1.3 as
``tls_protocols`` draws it) serving pages of 3-16 images, scripts and style sheets from
the site's objects; Chromium (Debian's ``chromium``, ``--headless``, ``--no-sandbox``
as root, background networking and component updates off so that it only talks to the
lab's server) loads one page per process with ``--dump-dom``, keeping one profile
directory for the run, so later loads resume TLS sessions and revalidate cached objects.

Over QUIC (``quic-chromium``): the same pages from ngtcp2's ``gtlsserver`` (HTTP/3 on
UDP 443), Chromium told to use QUIC for that origin (``--origin-to-force-quic-on``) and
to trust the run's certificate by its key's hash (QUIC takes no certificate exceptions
otherwise). Browsers send most of their Google and CDN traffic over QUIC, whose
encrypted, padded datagrams (1250-byte Initials, coalesced packets, ACK-only replies)
are the UDP negative a tunnel detector meets most.

Firefox (``https-firefox``): Debian's ``firefox-esr`` with NSS, another TLS stack and
HTTP/2 client (its own settings, priorities and header order), loading the same kind of
pages with ``--screenshot``; it trusts the run's CA through an NSS database made with
``certutil`` in its profile, and prefs (``user.js``) turn off its background requests.

Through a proxy (``shadowsocks-browser``, ``trojan-browser``, ``vmess-browser``: VPN
scenarios): Chromium browsing the same pages over HTTPS (nginx on the proxied port
8443) through the proxy client's SOCKS5 port (``--proxy-server=socks5://127.0.0.1:1080``),
which is how such proxies are used: a browser's TLS, with its 1.8 KB ClientHello, inside
the proxy's stream, one proxied connection per browser connection.
"""

from __future__ import annotations

import base64
import hashlib
import random
import subprocess
from functools import partial

from classifier.lab.netns import LabError
from classifier.lab.scenarios import Scenario, register
from classifier.lab.scenarios.negatives import register_negative, start_nginx
from classifier.lab.scenarios.obfuscated import (
    PROXIED_HTTPS_PORT,
    SS_METHOD,
    SS_PORT,
    TROJAN_PORT,
    VMESS_PORT,
    start_shadowsocks,
    start_trojan,
    start_vmess,
)
from classifier.lab.scenarios.services import page_loads, web_server, write_site
from classifier.lab.session import Session

#: Flags that keep Chromium to the page it is asked for: no sync, updates, safe-browsing
#: lookups or first-run work, which would try hosts the lab's namespaces cannot reach.
QUIET_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors", "--no-first-run",
               "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--disable-default-apps", "--disable-extensions", "--metrics-recording-only",
               "--disable-features=MediaRouter,OptimizationHints,Translate,DialMediaRouteProvider",
               "--password-store=basic", "--use-mock-keychain")


def _page(rng: random.Random, names: list[str]) -> str:
    """An HTML page that makes the browser fetch 3-16 of the site's objects as images, scripts and styles."""
    tags = []
    for obj in rng.sample(names, rng.randint(3, 16)):
        kind = rng.random()
        if kind < 0.6:
            tags.append(f'<img src="/{obj}" alt="">')
        elif kind < 0.85:
            tags.append(f'<script src="/{obj}"></script>')
        else:
            tags.append(f'<link rel="stylesheet" href="/{obj}">')
    text = "".join(rng.choice("abcdefghij klmnopqrstuvwxyz") for _ in range(rng.randint(2000, 30000)))
    return f"<!doctype html><html><head><title>lab</title></head><body><p>{text}</p>{''.join(tags)}</body></html>"


def _write_pages(s: Session, rng: random.Random, names: list[str]) -> None:
    for i in range(8):
        (s.work / "www" / f"page{i}.html").write_text(_page(rng, names))


def chromium_setup(s: Session) -> None:
    """nginx serving the site plus 8 pages of objects; HTTP/2 in three runs of four."""
    rng = s.rng()
    _write_pages(s, rng, web_server(s, http2=rng.random() < 0.75))


def _spki_hash(cert: str) -> str:
    """base64 SHA-256 of the certificate's public key, as ``--ignore-certificate-errors-spki-list`` wants."""
    pem = subprocess.run(["openssl", "x509", "-pubkey", "-noout", "-in", cert], capture_output=True,
                         check=True, timeout=10).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pem, capture_output=True,
                         check=True, timeout=10).stdout
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def quic_chromium_setup(s: Session) -> None:
    """gtlsserver (HTTP/3) serving the site and 8 pages; Chromium's flags to use QUIC and trust its key."""
    rng = s.rng()
    _write_pages(s, rng, write_site(s))
    pki = s.pki()
    proc = s.lab.spawn(s.server_ns, ["gtlsserver", "-q", "-d", str(s.work / "www"), s.server_ip, "443",
                                     str(pki.server_key), str(pki.server_cert)], "quic-server")
    s.lab.wait_port(s.server_ns, 443, "udp", procs=[proc])
    s.extra["chromium_flags"] = ("--enable-quic", f"--origin-to-force-quic-on={s.server_ip}:443",
                                 f"--ignore-certificate-errors-spki-list={_spki_hash(str(pki.server_cert))}")


#: Firefox prefs that keep it to the page it is asked for (no telemetry, updates, captive-portal
#: or connectivity checks, safe-browsing lists, remote settings or push connections).
FIREFOX_PREFS = {
    "app.update.enabled": False, "app.normandy.enabled": False, "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False, "browser.safebrowsing.downloads.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False, "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False, "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False, "services.settings.server": "data:,",
    "dom.push.enabled": False, "extensions.update.enabled": False, "browser.region.network.url": "",
    "network.trr.mode": 5, "network.dns.disablePrefetch": True, "network.prefetch-next": False,
    "browser.shell.checkDefaultBrowser": False, "browser.startup.homepage_override.mstone": "ignore",
}


def firefox_setup(s: Session) -> None:
    """nginx as for Chromium; a Firefox profile that trusts the run's CA (``certutil``) and stays quiet."""
    import json

    chromium_setup(s)
    profile = s.work / "firefox-profile"
    profile.mkdir()
    (profile / "user.js").write_text("".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n"
                                             for k, v in FIREFOX_PREFS.items()))
    for argv in (["certutil", "-N", "--empty-password", "-d", f"sql:{profile}"],
                 ["certutil", "-A", "-n", "vpnid-lab-ca", "-t", "C,,", "-i", str(s.pki().ca), "-d", f"sql:{profile}"]):
        res = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        if res.returncode:
            raise LabError(f"{' '.join(argv[:2])} failed: {res.stderr.strip()[-300:]}")


def firefox_traffic(s: Session) -> None:
    """Page loads, one Firefox process each (``--screenshot``), think time between, one profile for the run."""
    rng = s.rng()
    profile, shot = s.work / "firefox-profile", s.work / "shot.png"

    def load() -> bool:
        url = f"https://{s.server_ip}/page{rng.randrange(8)}.html"
        shot.unlink(missing_ok=True)
        argv = ["firefox-esr", "--headless", "--no-remote", "--profile", str(profile), "--screenshot", str(shot), url]
        res = s.lab.run(s.client_ns, argv, check=False, timeout=40, env={"HOME": str(s.work), "MOZ_HEADLESS": "1"})
        return res.returncode == 0 and shot.exists()

    page_loads(s, rng, load, "Firefox")


def proxied_chromium_setup(s: Session, start_proxy) -> None:
    """nginx (TLS, HTTP/2 in three runs of four) with the site and pages on PROXIED_HTTPS_PORT, then the
    proxy (``start_proxy``); Chromium goes through the proxy client's SOCKS5 port."""
    rng = s.rng()
    _write_pages(s, rng, write_site(s))
    start_nginx(s, tls=True, http2=rng.random() < 0.75, port=PROXIED_HTTPS_PORT)
    start_proxy(s)
    s.extra["chromium_flags"] = ("--proxy-server=socks5://127.0.0.1:1080",)
    s.extra["page_base"] = f"https://{s.server_ip}:{PROXIED_HTTPS_PORT}"


def chromium_traffic(s: Session) -> None:
    """Page loads, one Chromium process each, think time between, one profile for the run."""
    rng = s.rng()
    flags: tuple[str, ...] = s.extra.get("chromium_flags", ())  # type: ignore[assignment]
    base = s.extra.get("page_base", f"https://{s.server_ip}")
    profile = s.work / "chromium-profile"
    profile.mkdir(exist_ok=True)

    def load() -> bool:
        url = f"{base}/page{rng.randrange(8)}.html"
        argv = ["chromium", *QUIET_FLAGS, *flags, f"--user-data-dir={profile}", "--timeout=15000", "--dump-dom", url]
        res = s.lab.run(s.client_ns, argv, check=False, timeout=30)
        return res.returncode == 0 and b"<title>lab</title>" in res.stdout

    page_loads(s, rng, load, "Chromium")


register_negative("https-chromium", 144, "https", "tcp", 443, ("nginx", "openssl", "chromium"),
                  chromium_setup, chromium_traffic,
                  "nginx + headless Chromium; page loads of 3-16 objects, one profile per run",
                  "A real browser's HTTPS: BoringSSL's 1.8 KB post-quantum ClientHello, session resumption, "
                  "HTTP/2 (or six HTTP/1.1 connections) with a browser's settings and headers.")
register_negative("quic-chromium", 145, "quic", "udp", 443, ("gtlsserver", "openssl", "chromium"),
                  quic_chromium_setup, chromium_traffic,
                  "ngtcp2 gtlsserver (HTTP/3) + headless Chromium forced to QUIC; page loads of 3-16 objects",
                  "A real browser's QUIC: Chromium's padded Initials, coalesced handshake packets and HTTP/3 "
                  "streams, page by page.")
register_negative("https-firefox", 146, "https", "tcp", 443, ("nginx", "openssl", "firefox-esr", "certutil"),
                  firefox_setup, firefox_traffic,
                  "nginx + headless Firefox ESR (NSS), the run's CA in its profile; page loads of 3-16 objects",
                  "Another real browser's HTTPS: NSS's ClientHello and Firefox's HTTP/2 settings, priorities and "
                  "headers, page by page.")

register(Scenario(
    name="shadowsocks-browser", number=147, vpn=True, protocol="shadowsocks", transport="tcp", server_port=SS_PORT,
    notes=f"shadowsocks-libev {SS_METHOD}; headless Chromium browsing HTTPS through ss-local's SOCKS5 port",
    requires=("ss-server", "ss-local", "ss-tunnel", "nginx", "openssl", "chromium"),
    setup=partial(proxied_chromium_setup, start_proxy=start_shadowsocks), traffic=chromium_traffic,
    description="Shadowsocks carrying a browser: Chromium's HTTPS page loads, one proxied connection per "
                "browser connection, TLS inside random bytes.",
))
register(Scenario(
    name="trojan-browser", number=148, vpn=True, protocol="trojan", transport="tcp", server_port=TROJAN_PORT,
    notes="Trojan over TLS on 443; headless Chromium browsing HTTPS through its SOCKS5 port",
    requires=("trojan", "nginx", "openssl", "chromium"),
    setup=partial(proxied_chromium_setup, start_proxy=start_trojan), traffic=chromium_traffic,
    description="Trojan carrying a browser: Chromium's TLS (a 1.8 KB ClientHello) inside Trojan's TLS on 443.",
))
register(Scenario(
    name="vmess-browser", number=149, vpn=True, protocol="vmess", transport="tcp", server_port=VMESS_PORT,
    notes="V2Ray 4 VMess over TCP; headless Chromium browsing HTTPS through its SOCKS5 port",
    requires=("v2ray", "nginx", "openssl", "chromium"),
    setup=partial(proxied_chromium_setup, start_proxy=start_vmess), traffic=chromium_traffic,
    description="VMess carrying a browser: Chromium's HTTPS inside VMess.",
))
