"""report.html: self-contained, escaped, and rendered by a real browser (headless Chromium)."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from _flowtables import classified

from classifier.registry import Registry
from classifier.report import ReportBuilder, ReportContext

PROTOS = [(1, "wireguard", 51820), (10, "openvpn", 1194), (20, "ipsec-ike", 500), (22, "ipsec-esp", 4500),
          (40, "l2tp", 1701)]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    reg = Registry.from_records([
        {"ip": "198.18.1.0/24", "organization": "Indus Bank", "registration_id": "PTA-1", "category": "bank"},
        {"ip": "198.18.20.2", "organization": "Embassy", "registration_id": "PTA-2", "category": "embassy"},
    ])
    rows = []
    for i in range(120):
        n, proto, port = PROTOS[i % len(PROTOS)]
        rows.append(dict(src_ip=f"198.18.{n}.{2 + i % 3}", dst_ip=f"198.18.{n}.1", proto=proto, dst_port=port,
                         t=i * 30, bytes=1000 * (1 + i % 7), packets=10 + i))
    rows.append(dict(src_ip="198.18.66.2", dst_ip="198.18.66.1", proto="openvpn", t=45,
                     evidence="<script>alert('x')</script> & more"))
    rows.extend(dict(src_ip="10.0.0.2", dst_ip="10.0.0.1", t=i) for i in range(20))
    out = tmp_path_factory.mktemp("html") / "report"
    b = ReportBuilder(out, ReportContext(inputs=["lab.pcap"], registry=reg.describe()))
    b.add(reg.annotate(classified(rows)))
    b.finish()
    return out / "report.html"


def test_page_is_self_contained_and_escaped(report):
    text = report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), "nothing loaded from elsewhere"
    assert "<link" not in text
    assert "<script>alert" not in text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in text
    uris = re.findall(r'<img class="plot" alt="([^"]+)" src="data:image/png;base64,([^"]+)"', text)
    assert [alt for alt, _ in uris] == ["VPN traffic over time by protocol", "Protocol mix",
                                       "Top unregistered clients and servers"]
    from PIL import Image

    for _, data in uris:
        img = Image.open(io.BytesIO(base64.b64decode(data)))
        assert img.format == "PNG" and img.width >= 800 and img.height >= 200
        assert len(np.unique(np.asarray(img.convert("L")))) > 10, "the plot is not blank"
    for needle in ("Unregistered findings and their evidence", "Top unregistered clients and servers",
                   "198.18.66.2", "PTA-1", "Indus Bank"):
        assert needle in text


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run_chromium(exe: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (make ci-deps installs it)")
def test_page_renders_in_headless_chromium(report, tmp_path):
    exe = _chromium()
    dom = _run_chromium(exe, tmp_path, "--dump-dom", report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    # the page's load handler counts the images that decoded with a non-zero width
    assert re.search(r'<body[^>]*data-plots="3"', dom.stdout), dom.stdout[:500]
    assert dom.stdout.count('<img class="plot"') == 3
    shot = tmp_path / "page.png"
    res = _run_chromium(exe, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", report.as_uri())
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2400)
    # the dark header band is at the top, and the body is not one flat colour
    assert sum(img.getpixel((640, 10))) < 150
    pixels = np.asarray(img.resize((128, 240))).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 50
