"""Number and time formatting shared by the terminal summary, the plots and the page."""

from __future__ import annotations

import datetime as dt


def human_bytes(value: float | int | None) -> str:
    """1234567 -> '1.2 MB' (decimal units, as network tools count)."""
    if value is None:
        return "-"
    v = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(v) < 1000 or unit == "TB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1000
    return f"{v:.1f} PB"  # pragma: no cover - unreachable


def human_count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def short_time(value: str | dt.datetime | None) -> str:
    """ISO timestamp -> 'YYYY-MM-DD HH:MM:SS' (UTC) for tables."""
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        value = value.isoformat()
    return value.replace("T", " ")[:19]


def seen_range(first: str | dt.datetime | None, last: str | dt.datetime | None) -> str:
    """'2024-03-01 09:00:05 → 09:57:34' (the date of the end only when it differs)."""
    a, b = short_time(first), short_time(last)
    if a == "-" or b == "-":
        return f"{a} → {b}"
    return f"{a} → {b[11:]}" if a[:10] == b[:10] else f"{a} → {b}"
