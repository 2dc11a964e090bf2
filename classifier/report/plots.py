"""The report's figures, rendered to PNG bytes for inlining in the HTML page.

Why PNG in base64 rather than SVG or a JavaScript chart library: the page must be one
self-contained file an analyst can attach to a ticket or open offline, and a PNG
renders the same in every browser and mail client. ``matplotlib.figure.Figure`` is used
directly (no pyplot): no global state, no display backend, safe in a sensor process.
"""

from __future__ import annotations

import base64
import datetime as dt
import io

import numpy as np
import pyarrow as pa

from classifier.report.format import human_bytes

_PALETTE = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#0891b2", "#ca8a04", "#db2777", "#4b5563",
            "#65a30d", "#7c3aed", "#0d9488", "#b91c1c")
UNREGISTERED = "#dc2626"
REGISTERED = "#16a34a"
_DPI = 110


def protocol_colors(names: list[str]) -> dict[str, str]:
    """A stable colour per protocol name (sorted, so every figure agrees)."""
    return {n: _PALETTE[i % len(_PALETTE)] for i, n in enumerate(sorted(set(names)))}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    return fig


def _style(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="both", color="#e5e7eb", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.tick_params(colors="#374151", labelsize=9)


def _bytes_axis(axis) -> None:
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _pos: human_bytes(v)))


def to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, facecolor="white")
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def traffic_over_time(edges: np.ndarray, names: list[str], data: np.ndarray, width_s: float,
                      colors: dict[str, str]) -> bytes:
    """Stacked bars: VPN bytes per time bin, one colour per protocol."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    fig = _figure(10.8, 3.4)
    ax = fig.add_subplot()
    _style(ax)
    starts = [dt.datetime.fromtimestamp(e / 1e9, dt.UTC).replace(tzinfo=None) for e in edges[:-1]]
    bar_w = dt.timedelta(seconds=width_s) * 0.9
    bottom = np.zeros(len(starts))
    order = np.argsort(-data.sum(axis=1), kind="stable")  # largest protocol at the bottom
    for i in order:
        ax.bar(starts, data[i], width=bar_w, bottom=bottom, align="edge", color=colors[names[i]],
               label=names[i], linewidth=0)
        bottom += data[i]
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    _bytes_axis(ax.yaxis)
    ax.set_ylabel("bytes per bin", fontsize=9, color="#374151")
    ax.set_xlabel(f"UTC; {_step_text(width_s)} bins; a flow's bytes are counted at its start",
                  fontsize=8.5, color="#6b7280")
    ax.legend(fontsize=8, frameon=False, ncols=min(len(names), 8), loc="lower left", bbox_to_anchor=(0, 1.0))
    return to_png(fig)


def _step_text(width_s: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if width_s >= size and width_s % size == 0:
            return f"{int(width_s // size)} {unit}"
    return f"{width_s:g} s"


def protocol_mix(mix: pa.Table) -> bytes:
    """Horizontal bars per protocol: registered and unregistered flows, bytes as labels."""
    names = mix.column("vpn_protocol").to_pylist()[::-1]
    reg = np.asarray(mix.column("registered_flows").to_pylist()[::-1], float)
    unreg = np.asarray(mix.column("unregistered_flows").to_pylist()[::-1], float)
    nbytes = mix.column("bytes").to_pylist()[::-1]
    fig = _figure(10.8, 0.9 + 0.42 * len(names))
    ax = fig.add_subplot()
    _style(ax)
    ax.grid(axis="y", visible=False)
    y = np.arange(len(names))
    ax.barh(y, unreg, color=UNREGISTERED, label="unregistered", height=0.6)
    ax.barh(y, reg, left=unreg, color=REGISTERED, label="registered", height=0.6)
    for yi, total, b in zip(y, reg + unreg, nbytes, strict=True):
        ax.text(total, yi, f"  {int(total)} flows, {human_bytes(b)}", va="center", fontsize=8, color="#374151")
    ax.set_yticks(y, names)
    ax.set_xlabel("flows", fontsize=9, color="#374151")
    ax.set_xlim(0, max(1.0, float((reg + unreg).max(initial=0))) * 1.35)
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    return to_png(fig)


def top_endpoints(clients: pa.Table, servers: pa.Table, n: int = 10) -> bytes:
    """Two panels: unregistered VPN bytes of the top clients and the top servers."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(10.8, 0.9 + 0.32 * max(min(n, clients.num_rows), min(n, servers.num_rows), 1))
    axes = fig.subplots(1, 2)
    for ax, table, title in ((axes[0], clients, "Top unregistered clients"),
                             (axes[1], servers, "Top unregistered servers")):
        _style(ax)
        ax.grid(axis="y", visible=False)
        t = table.slice(0, n)
        labels = t.column("address").to_pylist()[::-1]
        values = np.asarray(t.column("bytes").to_pylist()[::-1], float)
        y = np.arange(len(labels))
        ax.barh(y, values, color=UNREGISTERED, height=0.6)
        ax.set_yticks(y, labels, fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        _bytes_axis(ax.xaxis)
        ax.set_xlim(0, max(1.0, float(values.max(initial=0))) * 1.1)
        ax.set_title(f"{title} (bytes)", fontsize=10, loc="left", color="#111827")
    return to_png(fig)
