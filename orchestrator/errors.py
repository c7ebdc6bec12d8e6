"""Dagster's error records as the text events carry (shared by the event and automation publishers)."""

from __future__ import annotations

from typing import Any

from libs.common.text import clip

MAX_ERROR = 2000


def cut_error(text: str | None) -> str | None:
    """`text` stripped and clipped to MAX_ERROR characters."""
    if text is None:
        return None
    return clip(text.strip(), MAX_ERROR)


def root_error(error: Any) -> str | None:
    """The innermost cause of a SerializableErrorInfo, as `Class: message` (what the user raised)."""
    if error is None:
        return None
    while getattr(error, "cause", None) is not None:
        error = error.cause
    message = str(getattr(error, "message", "") or "").strip()
    cls_name = getattr(error, "cls_name", None)
    if cls_name and f"{cls_name}:" not in message.split("\n", 1)[0]:
        message = f"{cls_name}: {message}"
    return message or None
