"""shown(): user-provided text escaped, isolated in <bdi>, every bidi and zero-width control a visible mark."""

from __future__ import annotations

from billing.console.display import shown

LISTED = [
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
    0x200E,
    0x200F,
    0x061C,
    *range(0x200B, 0x200E),
    0x2060,
    0xFEFF,
]


def test_every_listed_control_becomes_a_mark() -> None:
    for code in LISTED:
        html = shown(f"a{chr(code)}b")
        assert chr(code) not in html
        assert html.startswith('<bdi>a<span class="cc" dir="ltr" title="') and html.endswith("</span>b</bdi>")
        assert f"⟨U+{code:04X}⟩" in html


def test_markup_is_escaped_and_ordinary_text_untouched() -> None:
    assert shown('<script>"x"</script> & й ש') == "<bdi>&lt;script&gt;&quot;x&quot;&lt;/script&gt; &amp; й ש</bdi>"
    assert shown(None) == "" and shown("") == "<bdi></bdi>"


def test_inner_text_is_isolated_once_more() -> None:
    assert shown("за услугу «a\u202eb», заказ 1", "a\u202eb") == (
        '<bdi>за услугу «<bdi>a<span class="cc" dir="ltr" title="RIGHT-TO-LEFT OVERRIDE">⟨U+202E⟩</span>b</bdi>'
        "», заказ 1</bdi>"
    )
    assert shown("no name here", "absent") == "<bdi>no name here</bdi>"
