"""clip(): cut text always ends with an ellipsis, never mid-word when a word boundary is near."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.common.text import ELLIPSIS, clip


def test_short_text_is_unchanged() -> None:
    assert clip("ODBC Driver 18", 20) == "ODBC Driver 18"
    assert clip("", 1) == ""


def test_cut_text_ends_with_an_ellipsis_at_a_word_boundary() -> None:
    text = "Can't open lib 'ODBC Driver 18 for SQL Server' : file not found"
    assert clip(text, 38) == "Can't open lib 'ODBC Driver 18 for…"


def test_a_long_word_is_cut_inside_it_with_an_ellipsis() -> None:
    assert clip("x" * 50, 10) == "x" * 9 + ELLIPSIS


def test_width_must_be_positive() -> None:
    with pytest.raises(ValueError):
        clip("abc", 0)


@given(st.text(), st.integers(min_value=1, max_value=200))
def test_clip_fits_and_keeps_a_prefix(text: str, width: int) -> None:
    out = clip(text, width)
    assert len(out) <= width
    if len(text) <= width:
        assert out == text
    else:
        assert out.endswith(ELLIPSIS)
        assert text.startswith(out[:-1])


def test_duration_reads_in_at_most_two_units() -> None:
    from libs.common.text import duration

    assert [duration(s) for s in (-3, 42.4, 95, 11_100, 187_200)] == ["0s", "42s", "1m35s", "3h05m", "2d04h"]
