"""Text for everything people read: shortening (a cut text always ends with an ellipsis) and durations."""

from __future__ import annotations

ELLIPSIS = "…"


def clip(text: str, width: int) -> str:
    """`text` if it fits in `width` characters, else its first `width - 1` characters and "…".

    The cut falls at the last word boundary of the kept part when that keeps at least half of it, so a reader
    never sees a word cut in two ("ODBC Driver 18 for…", not "ODBC Driver 18 for SQ").
    """
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    if len(text) <= width:
        return text
    kept = text[: width - 1]
    boundary = kept.rstrip().rfind(" ")
    if boundary >= (width - 1) // 2 and not text[width - 1].isspace():
        kept = kept[:boundary]
    return kept.rstrip() + ELLIPSIS


def duration(seconds: float) -> str:
    """A duration as people read it in reasons: `42s`, `1m35s`, `3h05m`, `2d04h` (never negative)."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
