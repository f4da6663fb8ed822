"""Where the data the stores run lives: the top-level lua/ and reports/ folders of a checkout (editable
installs), else their copies installed as the data packages billing.lua and billing.reports (setup.py)."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]


def data_dir(name: str, marker: str) -> Path:
    """The folder `name` (lua, reports): the checkout's when it holds `marker`, else the installed copy."""
    checkout = _PACKAGE.parent / name
    if (checkout / marker).exists():
        return checkout
    return _PACKAGE / name
