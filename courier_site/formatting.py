"""Numbers as operators read them: byte sizes (1.5 MB) and durations (2 min 5 s)."""

from __future__ import annotations

UNITS = ("B", "KB", "MB", "GB", "TB")


def human_bytes(value: int | float | None) -> str:
    """1536 -> "1.5 KB" (powers of 1024); None -> ""."""
    if value is None:
        return ""
    size = float(value)
    for unit in UNITS:
        if abs(size) < 1024 or unit == UNITS[-1]:
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} {UNITS[-1]}"


def human_seconds(value: float | None) -> str:
    """0.25 -> "0.25 s", 125 -> "2 min 5 s", 7384 -> "2 h 3 min"; None -> ""."""
    if value is None:
        return ""
    if value < 10:
        return f"{value:.2f} s".replace(".00 s", " s")
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
