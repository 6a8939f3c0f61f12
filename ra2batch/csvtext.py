"""Text cells of the CSV files ra2batch writes, made safe to open in a spreadsheet.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to Excel,
LibreOffice Calc and Google Sheets (CSV or formula injection): a Patient_ID like ``=HYPERLINK(...)``
would run when a coordinator opens predictions.csv. Following OWASP's guidance, such a cell is
written with a leading single quote (``'=HYPERLINK(...)``), which spreadsheets show as text; every
other cell is written as it is. ``ra2batch evaluate`` reads the quote off again.
"""

from __future__ import annotations

from typing import Any, Iterable

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(values: Iterable[Any]) -> list[Any]:
    """``values`` with every text that a spreadsheet would run as a formula quoted; others as they are."""
    return [f"'{v}" if isinstance(v, str) and v.startswith(FORMULA_START) else v for v in values]


def restore(values: Iterable[Any]) -> list[Any]:
    """The text :func:`neutralise` quoted, back as it was."""
    return [v[1:] if isinstance(v, str) and v.startswith("'") and v[1:].startswith(FORMULA_START) else v
            for v in values]
