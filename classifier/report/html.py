"""``report.html``: one self-contained page answering "which VPN use is not registered?".

Why self-contained: the page is attached to tickets and read offline, so it carries its
CSS, its plots (base64 PNG) and a few lines of script (sortable tables) and loads
nothing from anywhere. Every value is HTML-escaped; evidence sentences describe
verdicts and never carry payload bytes (payload heads are dropped before any output).
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from classifier.report import aggregate as agg
from classifier.report import plots
from classifier.report.format import human_bytes, human_count, seen_range, short_time

if TYPE_CHECKING:  # pragma: no cover
    from classifier.report.build import ReportContext

#: Findings listed on the page; the rest are in unregistered.parquet.
MAX_FINDINGS = 300

_CSS = """
:root { --fg:#111827; --muted:#6b7280; --line:#e5e7eb; --bg:#f9fafb; --bad:#dc2626; --good:#16a34a; --accent:#1d4ed8; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif; color:var(--fg); background:var(--bg); }
header { background:#0f172a; color:#f8fafc; padding:22px 32px 18px; }
header h1 { margin:0 0 4px; font-size:22px; font-weight:650; letter-spacing:.2px; }
header .sub { color:#cbd5e1; font-size:13px; }
header .sub code { color:#e2e8f0; }
main { max-width:1280px; margin:0 auto; padding:20px 32px 40px; }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding:18px 20px; margin:18px 0; }
h2 { font-size:16px; margin:0 0 10px; }
p.note { color:var(--muted); margin:6px 0 10px; font-size:13px; }
.cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(160px,1fr)); gap:12px; margin:18px 0; }
.card { background:#fff; border:1px solid var(--line); border-radius:10px; padding:12px 14px; }
.card .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.4px; }
.card .v { font-size:24px; font-weight:650; margin-top:2px; }
.card .s { color:var(--muted); font-size:12px; }
.card.bad .v { color:var(--bad); } .card.good .v { color:var(--good); }
img.plot { display:block; max-width:100%; height:auto; margin:6px 0 4px; }
table { border-collapse:collapse; width:100%; font-size:12.5px; }
th, td { text-align:left; padding:6px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#f3f4f6; font-weight:600; cursor:pointer; white-space:nowrap; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
td.addr { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; white-space:nowrap; }
td.ev { color:#374151; min-width:260px; }
td.ev .ex { color:var(--muted); font-size:11.5px; font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; }
tr:hover td { background:#f9fafb; }
.tag { display:inline-block; padding:1px 7px; border-radius:999px; font-size:11.5px; font-weight:600; }
.tag.bad { background:#fee2e2; color:#991b1b; } .tag.good { background:#dcfce7; color:#166534; }
.tag.proto { background:#e0e7ff; color:#3730a3; }
.scroll { overflow-x:auto; border:1px solid var(--line); border-radius:8px; }
h3 { font-size:14px; margin:16px 0 8px; }
td.when { white-space:nowrap; font-variant-numeric:tabular-nums; }
dl.meta { display:grid; grid-template-columns:max-content 1fr; gap:4px 16px; margin:0; font-size:13px; }
dl.meta dt { color:var(--muted); } dl.meta dd { margin:0; word-break:break-all; }
.empty { color:var(--muted); font-style:italic; padding:8px 0; }
footer { color:var(--muted); font-size:12px; text-align:center; padding:10px 0 30px; }
"""

_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
    var idx = Array.prototype.indexOf.call(th.parentNode.children, th);
    rows.sort(function (a, b) {
      var x = a.cells[idx].dataset.v || a.cells[idx].textContent, y = b.cells[idx].dataset.v || b.cells[idx].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  document.body.dataset.plots = String(imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length);
});
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any, text: str | None = None) -> str:
    shown = text if text is not None else human_count(value)
    return f'<td class="num" data-v="{_e(value if value is not None else "")}">{_e(shown)}</td>'


def _bytes(value: Any) -> str:
    return _num(value, human_bytes(value))


def _table(head: list[tuple[str, bool]], rows: list[str], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{_e(empty)}</p>'
    ths = "".join(f'<th class="num">{_e(h)}</th>' if num else f"<th>{_e(h)}</th>" for h, num in head)
    return (f'<div class="scroll"><table class="sortable"><thead><tr>{ths}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _card(key: str, value: str, sub: str = "", cls: str = "") -> str:
    return (f'<div class="card {cls}"><div class="k">{_e(key)}</div><div class="v">{_e(value)}</div>'
            f'<div class="s">{_e(sub)}</div></div>')


def _img(png: bytes, alt: str) -> str:
    return f'<img class="plot" alt="{_e(alt)}" src="{plots.data_uri(png)}">'


def _endpoint_rows(table: pa.Table, n: int) -> list[str]:
    rows = []
    for r in table.slice(0, n).to_pylist():
        rows.append(
            f'<tr><td class="addr">{_e(r["address"])}</td>{_num(r["flows"])}{_bytes(r["bytes"])}'
            f'{_num(r["peers"])}<td>{_e(r["protocols"])}</td>'
            f'<td class="when">{_e(seen_range(r["first_seen"], r["last_seen"]))}</td></tr>'
        )
    return rows


def _server(r: dict[str, Any]) -> str:
    proto = {6: "tcp", 17: "udp", 50: "esp", 47: "gre", 132: "sctp"}.get(r.get("ip_proto"), str(r.get("ip_proto")))
    port = r.get("server_port")
    return f"{r['server_ip']}" + (f" {port}/{proto}" if port is not None else f" ({proto})")


def _as_server(r: dict[str, Any]) -> dict[str, Any]:
    """A flow row in the shape ``_server`` reads (responder address, port, IP protocol)."""
    return {"server_ip": r["dst_ip"], "server_port": r["dst_port"], "ip_proto": r["ip_proto"]}


def render_html(summary: dict[str, Any], vpn: pa.Table, use: pa.Table, unreg: pa.Table,
                context: ReportContext) -> str:
    """The whole page as a string."""
    f = summary["flows"]
    top = context.top
    mix = agg.protocol_mix(vpn)
    clients = agg.top_endpoints(vpn, "client")
    servers = agg.top_endpoints(vpn, "server")
    colors = plots.protocol_colors(mix.column("vpn_protocol").to_pylist())

    # -- figures ----------------------------------------------------------------------
    if vpn.num_rows:
        edges, names, data, width = agg.time_series(vpn)
        time_fig = _img(plots.traffic_over_time(edges, names, data, width, colors), "VPN traffic over time by protocol")
        mix_fig = _img(plots.protocol_mix(mix), "Protocol mix")
    else:
        time_fig = mix_fig = '<p class="empty">No VPN traffic was found in the inputs.</p>'
    if clients.num_rows:
        top_fig = _img(plots.top_endpoints(clients, servers), "Top unregistered clients and servers")
    else:
        top_fig = '<p class="empty">No unregistered VPN use: nothing to rank.</p>'

    # -- cards ------------------------------------------------------------------------
    vpn_share = f"{100 * f['vpn'] / f['total']:.1f}% of flows" if f["total"] else ""
    cards = "".join([
        _card("Flows", human_count(f["total"]), human_bytes(f["bytes"])),
        _card("VPN flows", human_count(f["vpn"]), f"{human_bytes(f['vpn_bytes'])} · {vpn_share}"),
        _card("Registered", human_count(f["registered"]), "VPN flows with a registered endpoint", "good"),
        _card("Unregistered", human_count(f["unregistered"]), human_bytes(f["unregistered_bytes"]),
              "bad" if f["unregistered"] else "good"),
        _card("Unregistered clients", human_count(summary["vpn_use"]["unregistered_clients"]),
              f"{human_count(summary['vpn_use']['unregistered_servers'])} servers",
              "bad" if summary["vpn_use"]["unregistered_clients"] else "good"),
    ])

    # -- tables -----------------------------------------------------------------------
    mix_rows = [
        f'<tr><td><span class="tag proto">{_e(r["vpn_protocol"])}</span></td>{_num(r["flows"])}{_bytes(r["bytes"])}'
        f'{_num(r["registered_flows"])}{_num(r["unregistered_flows"])}{_num(r["clients"])}</tr>'
        for r in mix.to_pylist()
    ]
    endpoint_head = [("address", False), ("flows", True), ("bytes", True), ("peers", True),
                     ("protocols", False), ("seen (UTC)", False)]
    finding_rows = []
    for r in unreg.slice(0, MAX_FINDINGS).to_pylist():
        conf = r["confidence"]
        finding_rows.append(
            f'<tr><td class="addr">{_e(r["client_ip"])}</td><td class="addr">{_e(_server(r))}</td>'
            f'<td><span class="tag proto">{_e(r["vpn_protocol"])}</span></td>{_num(r["flows"])}{_bytes(r["bytes"])}'
            f'<td class="when">{_e(seen_range(r["first_seen"], r["last_seen"]))}</td>'
            f'<td class="when" data-v="{_e(conf)}">{_e(r["detection"] or "-")}'
            f'{_e(f" · {conf:.2f}" if conf is not None else "")}</td>'
            f'<td class="ev">{_e(r["evidence"])}'
            f'<div class="ex">{_e(r["example_capture"])} flow {_e(r["example_flow_id"])}</div></td></tr>'
        )
    more = ""
    if unreg.num_rows > MAX_FINDINGS:
        more = (f'<p class="note">Showing the {MAX_FINDINGS} largest of {unreg.num_rows:,} findings; '
                f"all are in <code>unregistered.parquet</code>.</p>")
    review = summary["for_review"]
    review_rows = [
        f'<tr><td class="addr">{_e(r["src_ip"])}</td><td class="addr">{_e(_server(_as_server(r)))}</td>'
        f'<td class="when" data-v="{_e(r["p_vpn"])}">{r["p_vpn"]:.3f}</td>{_num(r["packets"])}{_bytes(r["bytes"])}'
        f'<td class="when">{_e(seen_range(r["first_seen"], r["last_seen"]))}</td>'
        f'<td class="ev">{_e(r["evidence"])}<div class="ex">{_e(r["capture"])} flow {_e(r["flow_id"])}</div></td></tr>'
        for r in review["top"]
    ]
    if review["floor"] is None:
        review_note = "The review list was turned off for this report."
    else:
        review_note = (f"{review['flows']:,} flows the model scored at P(VPN) of {review['floor']:g} or more but "
                       f"under its threshold, so they are not findings: proxies and tunnels inside TLS often land "
                       f"here. Highest first; the {len(review_rows):,} shown, all in <code>for_review.parquet</code>.")
    reg_rows = [
        f"<tr><td>{_e(r['registration_id'])}</td><td>{_e(r['organization'])}</td>{_num(r['flows'])}"
        f"{_bytes(r['bytes'])}{_num(r['clients'])}</tr>"
        for r in agg.registered_use(vpn).to_pylist()
    ]

    # -- provenance -------------------------------------------------------------------
    reg = summary.get("registry") or {}
    model = summary.get("model")
    meta_items = [
        ("generated", summary["generated_at"]),
        ("vpnid", summary["version"]),
        ("inputs", ", ".join(summary["inputs"])),
        ("time span (UTC)", f"{short_time(summary['time_span']['first_seen'])} – "
                            f"{short_time(summary['time_span']['last_seen'])}"),
        ("detection", ("signatures + model " + f"{model['name']}" if model else "signatures only (no model)")
                      + " · VPN flows found by " + ", ".join(f"{k} {v:,}" for k, v in
                                                             f.get("vpn_by_detection", {}).items())),
        ("registry", f"{reg.get('path')} · {reg.get('entries', 0)} entries"
                     + (f" · {reg['skipped_rows']} invalid rows skipped" if reg.get("skipped_rows") else "")),
        ("registry sha256", reg.get("sha256")),
        ("addresses", "pseudonymized (Crypto-PAn, prefix-preserving)" if summary["anonymized"] else "as captured"),
    ]
    meta = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in meta_items)
    errors = ""
    if summary["errors"]:
        items = "".join(f"<li>{_e(x)}</li>" for x in summary["errors"][:50])
        errors = f'<p class="note">Problems reading the inputs ({len(summary["errors"])}):</p><ul>{items}</ul>'

    verdict = (f"{f['unregistered']:,} of {f['vpn']:,} VPN flows have no registered endpoint."
               if f["vpn"] else "No VPN flows were found.")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vpnid report: unregistered VPN use</title>
<style>{_CSS}</style></head>
<body>
<header><h1>Unregistered VPN use</h1>
<div class="sub">{_e(verdict)} Generated {_e(summary["generated_at"])} by vpnid {_e(summary["version"])}
from {len(summary["inputs"])} input(s).</div></header>
<main>
<div class="cards">{cards}</div>
<section id="time"><h2>VPN traffic over time by protocol</h2>{time_fig}</section>
<section id="protocols"><h2>Protocol mix</h2>{mix_fig}
{_table([("protocol", False), ("flows", True), ("bytes", True), ("registered flows", True),
         ("unregistered flows", True), ("clients", True)], mix_rows, "No VPN flows.")}</section>
<section id="top"><h2>Top unregistered clients and servers</h2>{top_fig}
<h3>Clients</h3>{_table(endpoint_head, _endpoint_rows(clients, top), "None.")}
<h3>Servers</h3>{_table(endpoint_head, _endpoint_rows(servers, top), "None.")}</section>
<section id="findings"><h2>Unregistered findings and their evidence</h2>
<p class="note">One row per client, server and protocol with no registered endpoint. The evidence is that of the
strongest flow (a signature verdict before a model one, then by confidence), with the capture and <code>flow_id</code> that find it in
<code>flows.parquet</code>.</p>{more}
{_table([("client", False), ("server", False), ("protocol", False), ("flows", True), ("bytes", True),
         ("seen (UTC)", False), ("verdict", False), ("evidence and example flow", False)], finding_rows, "No unregistered VPN use.")}</section>
<section id="registered"><h2>Registered VPN use</h2>
{_table([("registration id", False), ("organization", False), ("flows", True), ("bytes", True), ("clients", True)],
        reg_rows, "No VPN flow matched the registry.")}</section>
<section id="review"><h2>For review: close to the threshold</h2>
<p class="note">{review_note}</p>
{_table([("client", False), ("server", False), ("P(VPN)", True), ("packets", True), ("bytes", True),
         ("seen (UTC)", False), ("evidence and flow", False)], review_rows, "No flow close to the threshold.")}</section>
<section id="about"><h2>About this report</h2>
<p class="note">A VPN flow is registered when its source or destination address lies in a registry entry valid at the
flow's first packet. Tunnels without encryption (GRE, IP-in-IP, ...) are not counted as VPN use.</p>
<dl class="meta">{meta}</dl>{errors}</section>
</main>
<footer>vpnid {_e(summary["version"])} · flows.parquet, vpn_use.parquet, unregistered.parquet, for_review.parquet
and summary.json hold the full data behind this page.</footer>
<script>{_JS}</script>
</body></html>
"""
