"""Signed report links: what verifies and what is refused with 403 invalid_signature."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest

from billing.core.errors import ApiError
from billing.views.report_links import LinkSigner

NOW = datetime(2026, 11, 26, 4, 16, 1, 500000, tzinfo=UTC).timestamp()


def signer(secret: str = "s3cret", now: float = NOW) -> LinkSigner:
    return LinkSigner(secret, 3600, clock=lambda: now)


def query(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


def refused(signer: LinkSigner, month: str, expires: str | None, signature: str | None) -> str:
    with pytest.raises(ApiError) as caught:
        signer.verify(month, expires, signature)
    assert caught.value.code == "invalid_signature"
    assert caught.value.status == 403
    return caught.value.detail


def test_link_is_absolute_and_verifies() -> None:
    link = signer().link("2026-11", "http://host:8080/")
    assert link["month"] == "2026-11"
    assert link["url"].startswith("http://host:8080/v1/reports/revenue/2026-11.csv?expires=")
    assert link["expires_at"] == "2026-11-26T05:16:01.000Z"  # NOW + 1 h, whole seconds
    q = query(link["url"])
    assert int(q["expires"]) == int(NOW) + 3600
    signer(now=NOW + 3599).verify("2026-11", q["expires"], q["signature"])


def test_bom_choice_travels_in_the_link_unsigned() -> None:
    assert query(signer().link("2026-11", "http://h", bom=True)["url"])["bom"] == "1"
    assert "bom" not in query(signer().link("2026-11", "http://h")["url"])


def test_expired_link_is_refused() -> None:
    q = query(signer().link("2026-11", "http://h")["url"])
    assert "expired" in refused(signer(now=NOW + 3600), "2026-11", q["expires"], q["signature"])


@pytest.mark.parametrize("change", ["signature", "expires", "month", "secret"])
def test_tampered_link_is_refused(change: str) -> None:
    q = query(signer().link("2026-11", "http://h")["url"])
    month, expires, signature, checker = "2026-11", q["expires"], q["signature"], signer()
    if change == "signature":
        signature = ("0" if signature[0] != "0" else "1") + signature[1:]
    elif change == "expires":
        expires = str(int(expires) + 86400)
    elif change == "month":
        month = "2026-10"
    else:
        checker = signer("another secret")
    refused(checker, month, expires, signature)


@pytest.mark.parametrize(
    ("expires", "signature"),
    [(None, "ab"), ("1", None), ("", ""), ("12x", "ab"), ("١٢٣", "ab"), ("9" * 40, "ab"), ("1", "Ω" * 64)],
)
def test_malformed_parameters_are_refused(expires: str | None, signature: str | None) -> None:
    refused(signer(), "2026-11", expires, signature)


def test_non_ascii_month_is_refused() -> None:
    q = query(signer().link("2026-11", "http://h")["url"])
    refused(signer(), "２０２６-11", q["expires"], q["signature"])
