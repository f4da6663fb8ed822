"""billing.views.csv_cells.text_cell: caller text that a spreadsheet would run as a formula gets a leading '."""

from __future__ import annotations

import csv
import io

import pytest

from billing.core.money import format_kopecks
from billing.views.csv_cells import text_cell


@pytest.mark.parametrize(
    ("text", "cell"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1", "'+1"),
        ("-2", "'-2"),
        ("@SUM(1)", "'@SUM(1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("", ""),
        ("Ads", "Ads"),
        ("a=b", "a=b"),
        (" =1", " =1"),
        ("'=1", "'=1"),
    ],
)
def test_text_cell(text: str, cell: str) -> None:
    assert text_cell(text) == cell


def test_a_negative_total_of_the_service_stays_a_number_beside_a_neutralized_name() -> None:
    buffer = io.StringIO(newline="")
    csv.writer(buffer, delimiter=";", lineterminator="\r\n").writerow((text_cell("-2"), format_kopecks(-5_000)))
    assert buffer.getvalue() == "'-2;-50.00\r\n"
