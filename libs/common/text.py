"""Text shortening for everything people read: a cut text always ends with an ellipsis."""

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
