"""How console pages show things: user-provided text isolated in <bdi> with bidi and zero-width controls shown
as visible marks; times in the report zone (local_time).

Comments and service names are stored exactly as sent; only their display is neutralized, so that a comment
with, say, U+202E (RIGHT-TO-LEFT OVERRIDE) cannot reorder what a support agent reads, and an invisible
character cannot hide in a name.
"""

from __future__ import annotations

import re
import unicodedata
from zoneinfo import ZoneInfo

from tornado.escape import xhtml_escape

from billing.core.parsing import timestamp
from billing.core.timefmt import ms_to_datetime

BIDI_CONTROLS = (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)
ZERO_WIDTH = (*range(0x200B, 0x200E), 0x2060, 0xFEFF)
_CONTROL = re.compile("[" + "".join(chr(c) for c in (*BIDI_CONTROLS, *ZERO_WIDTH)) + "]")


def _mark(match: re.Match[str]) -> str:
    char = match.group()
    name = unicodedata.name(char, "")
    return f'<span class="cc" dir="ltr" title="{name}">⟨U+{ord(char):04X}⟩</span>'


def _marked(text: str) -> str:
    return _CONTROL.sub(_mark, xhtml_escape(text))


def shown(text: str | None, inner: str | None = None) -> str:
    """HTML for user-provided text: escaped, each control a visible mark, all of it in <bdi>.

    inner: user-provided text within text (a service name inside a description), isolated once more.
    """
    if text is None:
        return ""
    if inner and inner in text:
        before, _, after = text.partition(inner)
        return f"<bdi>{_marked(before)}<bdi>{_marked(inner)}</bdi>{_marked(after)}</bdi>"
    return f"<bdi>{_marked(text)}</bdi>"


def local_time(moment: str | int | None, zone: ZoneInfo) -> str:
    """A time as every console page shows it: "2026-11-26 07:16:01" in `zone` (BILLING_REPORT_TZ), whose name
    the page gives next to it. `moment`: RFC 3339 with an offset (what the API's bodies hold) or epoch ms."""
    if moment is None or moment == "":
        return ""
    instant = ms_to_datetime(moment) if isinstance(moment, int) else timestamp(moment)
    return instant.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")
