"""Column widths for the dashboard's tables so that they fit a 900 px window without scrolling.

Streamlit's grid (`st.dataframe`) draws columns of fixed pixel widths on a canvas and scrolls
sideways when they add up to more than its container; it stretches them to fill a wider one.
`fit_table` gives every column a fixed width, lets one text column take what is left of the
900 px budget (`FIT_PX`, the table's width beside the narrowed sidebar of `LAYOUT_CSS`), and
asks for rows tall enough to wrap that column's longest text (the grid wraps text only in rows
taller than 64 px), so no label is cut either. Nothing here imports Streamlit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

#: the table's width at a 900 px window: 900 - the 16rem sidebar (256) - 2 x 2rem padding,
#: less the grid's own border and scrollbar (measured in headless Chromium)
FIT_PX = 556
ROW_MARKER_PX = 32  # the selection checkbox column of a selectable table
ROW_PX = 35  # Streamlit's default row height
LINE_PX = 19  # one more wrapped line
#: character widths of the grid's 14 px Source Sans (canvas measureText in Chromium); other
#: characters (lower case) take `_OTHER_PX`
_NARROW = dict.fromkeys(" ", 2.8) | dict.fromkeys("'·.,:;|!il", 3.5) | {"%": 11.6}
_WIDE = dict.fromkeys("0123456789", 7.0) | dict.fromkeys("ABCDEFGHIJKLMNOPQRSTUVWXYZmwMW", 8.0)
_OTHER_PX = 6.6
CELL_PAD_PX = 17  # the grid's padding inside a cell, both sides, plus a pixel of rounding
MIN_TEXT_PX = 140
MAX_LINES = 4


class TableLayout(NamedTuple):
    """Widths for `st.column_config` and the row height for `st.dataframe(row_height=...)`."""

    widths: dict[str, int]
    """pixel width of every column named in the call, the text column included"""
    row_height: int
    """pixels; over 64 when the text column's longest entry needs more than one line"""
    lines: int
    """lines the longest text entry takes (at most `MAX_LINES`; longer text is cut)"""


def fit_table(fixed: Mapping[str, int], text_column: str, texts: Iterable[str], *,
              selectable: bool = False, budget: int = FIT_PX) -> TableLayout:
    """Widths that fit `budget` pixels: `fixed` as given, `text_column` the rest.

    Args:
        fixed: pixel width of each column but the text column (those shown only).
        text_column: the column that takes the remaining width and wraps.
        texts: that column's entries on this page (the longest decides the row height).
        selectable: the table has a row-selection checkbox column.
        budget: the table's width in pixels.

    Returns:
        A `TableLayout`; the text column never gets less than `MIN_TEXT_PX`.
    """
    used = sum(fixed.values()) + (ROW_MARKER_PX if selectable else 0)
    text_px = max(MIN_TEXT_PX, budget - used)
    room = text_px - CELL_PAD_PX
    widest = max((text_width(t) for t in texts), default=0.0) * 1.04  # the estimate's error
    # wrapping at spaces leaves part of each line empty: a fifth more than the bare width
    lines = 1 if widest <= room else min(MAX_LINES, math.ceil(widest * 1.2 / room))
    row = ROW_PX if lines == 1 else max(68, ROW_PX + 1 + LINE_PX * (lines - 1))
    return TableLayout({**fixed, text_column: text_px}, row, lines)


def text_width(text: str) -> float:
    """The width in pixels of `text` on one line of the grid (an estimate within a few %)."""
    return sum(_NARROW.get(c) or _WIDE.get(c) or _OTHER_PX for c in str(text))


def table_height(n_rows: int, row_height: int, most: int = 760) -> int:
    """The height that shows `n_rows` rows and the header without an inner scrollbar, capped."""
    return min(row_height * n_rows + ROW_PX + 3, most)
