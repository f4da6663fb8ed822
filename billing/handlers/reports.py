"""The revenue report: a signed link for accounting, and the CSV behind that link (no token)."""

from __future__ import annotations

from billing.errors import ApiError
from billing.handlers.base import BaseHandler

REPORT_READERS = frozenset({"accounting"})
_FLAGS = {"1": True, "true": True, "0": False, "false": False}


def bom_flag(raw: str | None) -> bool | None:
    """`bom=1|0|true|false` or absent (None); anything else is a 400."""
    if raw is None:
        return None
    if raw.lower() not in _FLAGS:
        raise ApiError("validation_error", "bom must be 1 or 0", [{"field": "bom", "message": "must be 1 or 0"}])
    return _FLAGS[raw.lower()]


class RevenueReportHandler(BaseHandler):
    roles = REPORT_READERS
    route_name = "/v1/reports/revenue"

    def get(self) -> None:
        month = self.get_query_argument("month", None)
        bom = bom_flag(self.get_query_argument("bom", None))
        self.write_json(200, self.ctx.reports.signed_link(month, self.origin.base_url, bom))


class RevenueCsvHandler(BaseHandler):
    route_name = "/v1/reports/revenue/{month}.csv"

    async def get(self, month: str) -> None:
        period = self.ctx.reports.verify_link(
            month, self.get_query_argument("expires", None), self.get_query_argument("signature", None)
        )
        bom = bom_flag(self.get_query_argument("bom", None))
        content = await self.ctx.reports.csv_bytes(period.label, self.ctx.settings.report_bom if bom is None else bom)
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="revenue-{period.label}.csv"')
        self.finish(content)
