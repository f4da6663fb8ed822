"""Cells of the CSV files the service exports, safe to open in a spreadsheet."""

from __future__ import annotations

# Excel, LibreOffice and Google Sheets read a cell starting with one of these as a formula (OWASP "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def text_cell(text: str) -> str:
    """A cell of caller-supplied text (a service name, a comment): a leading ' where it would be a formula.

    Only for text that callers chose: numbers the service formats itself (`1234.50`, `-50.00`) go into the
    file as they are, so that spreadsheets still read them as numbers. Quoting is the csv writer's (RFC 4180).
    """
    return "'" + text if text.startswith(FORMULA_STARTS) else text
