"""The short terminal summary of ``vpnid report`` (a rich table on standard output).

Why short: the terminal answers "how much unregistered VPN use, which protocols, who
are the biggest unregistered clients" at a glance; everything else is in the files
whose paths are printed last.
"""

from __future__ import annotations

from typing import Any

from classifier.report.format import human_bytes, human_count


def print_summary(summary: dict[str, Any], console: Any = None, top: int = 5) -> None:
    """Render ``summary`` (as in summary.json) with rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    f = summary["flows"]
    console.print(
        f"[bold]vpnid report[/bold]: {human_count(f['total'])} flows, {human_count(f['vpn'])} VPN "
        f"([green]{human_count(f['registered'])} registered[/green], "
        f"[{'red' if f['unregistered'] else 'green'}]{human_count(f['unregistered'])} unregistered[/])"
    )
    if summary["protocols"]:
        t = Table(title="VPN use by protocol", title_justify="left", header_style="bold")
        for name, just in (("protocol", "left"), ("flows", "right"), ("bytes", "right"),
                           ("registered", "right"), ("unregistered", "right"), ("clients", "right")):
            t.add_column(name, justify=just)
        for r in summary["protocols"]:
            t.add_row(r["vpn_protocol"], human_count(r["flows"]), human_bytes(r["bytes"]),
                      human_count(r["registered_flows"]),
                      f"[red]{human_count(r['unregistered_flows'])}[/red]" if r["unregistered_flows"]
                      else "0", human_count(r["clients"]))
        console.print(t)
    findings = summary["unregistered_findings"][:top]
    if findings:
        t = Table(title=f"Largest unregistered VPN use (of {summary['vpn_use']['unregistered_pairs']})",
                  title_justify="left", header_style="bold")
        for name, just in (("client", "left"), ("server", "left"), ("protocol", "left"),
                           ("flows", "right"), ("bytes", "right"), ("detection", "left")):
            t.add_column(name, justify=just)
        for r in findings:
            t.add_row(r["client_ip"], r["server_ip"], r["vpn_protocol"], human_count(r["flows"]),
                      human_bytes(r["bytes"]), r["detection"] or "-")
        console.print(t)
    review = summary["for_review"]
    if review["flows"]:
        console.print(f"{human_count(review['flows'])} more flows for review: the model's P(VPN) "
                      f"{review['floor']:g} or more, under its threshold (not findings)", highlight=False)
    out = summary["outputs"]
    console.print(f"report: {out['html']}  data: {out['flows']}, {out['vpn_use']}, {out['unregistered']}, "
                  f"{out['for_review']}, {out['summary']}", soft_wrap=True, highlight=False)
