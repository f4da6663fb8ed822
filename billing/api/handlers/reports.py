"""The revenue report: a signed link for accounting, and the CSV behind that link (no token)."""

from __future__ import annotations

from collections.abc import Mapping

from billing.api.handlers.base import BaseHandler
from billing.core.parsing import ParseError, field_error, flag, query_value


def query_text(arguments: Mapping[str, list[bytes]], name: str) -> str | None:
    """A query parameter exactly as sent, or None; given twice it is a 400."""
    try:
        return query_value(arguments, name)
    except ParseError as exc:
        raise field_error(name, exc) from None


def bom_flag(arguments: Mapping[str, list[bytes]]) -> bool | None:
    """`bom=1|0|true|false` or absent (None); anything else is a 400."""
    raw = query_text(arguments, "bom")
    try:
        return None if raw is None else flag(raw)
    except ParseError as exc:
        raise field_error("bom", exc) from None


class RevenueReportHandler(BaseHandler):
    def get(self) -> None:
        month = query_text(self.request.query_arguments, "month")
        bom = bom_flag(self.request.query_arguments)
        self.write_json(200, self.ctx.reports.signed_link(month, self.origin.base_url, bom))


class RevenueCsvHandler(BaseHandler):
    async def get(self, month: str) -> None:
        query = self.request.query_arguments
        period = self.ctx.reports.verify_link(month, query_text(query, "expires"), query_text(query, "signature"))
        bom = bom_flag(query)
        content = await self.ctx.reports.csv_bytes(period.label, self.ctx.settings.report_bom if bom is None else bom)
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="revenue-{period.label}.csv"')
        self.finish(content)
