"""The monthly revenue report: the aggregation reports/revenue.jsonc, CSV bytes, a file cache, signed links."""

from __future__ import annotations

import csv
import io
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from bson.decimal128 import Decimal128

from billing.core.config import Settings
from billing.core.money import format_kopecks
from billing.core.timefmt import load_zone
from billing.infra.pipelines import load_pipeline
from billing.projection.store import TRANSACTIONS
from billing.views.csv_cells import text_cell
from billing.views.report_links import LinkSigner
from billing.views.report_month import Month, parse_month

log = logging.getLogger("billing.views.reports")

BOM = "\ufeff".encode()
HEADER = ("service", "total")
LINE_END = "\r\n"  # RFC 4180; Excel and LibreOffice read it, and so does every csv module
# A month is closed for caching only this long after its end, so that charges still on their way
# through the outbox (history lags by up to ~1 s, more if MongoDB was down) are never frozen out.
CACHE_GRACE = timedelta(minutes=10)
# In the cache file's name: raised whenever the same ledger gives other bytes (v2: formula-like names
# neutralized), so a file cached by an older build is never served again.
CACHE_FORMAT = "v2"

REVENUE = load_pipeline("revenue")  # reports/revenue.jsonc: charges per service
REFUNDS = load_pipeline("revenue_refunds")  # reports/revenue_refunds.jsonc: refunds per service

LagProbe = Callable[[], Awaitable[dict[str, Any] | None]]


class Reports:
    """ctx.reports: totals, CSV bytes (cached for closed months), signed links and their check."""

    def __init__(
        self,
        mongo: Any,
        settings: Settings,
        lag_probe: LagProbe | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.mongo = mongo
        self.settings = settings
        self.zone = load_zone(settings.report_tz)
        self.reports_dir = Path(settings.reports_dir)
        self.lag_probe = lag_probe
        self.clock = clock
        secret = settings.secret
        if not secret:  # `billing serve` fills in a generated secret (and warns) before its workers fork
            secret = secrets.token_urlsafe(32)
        self.signer = LinkSigner(secret, settings.report_link_ttl_seconds, clock)

    def month(self, text: str | None) -> Month:
        """Parse and validate a "YYYY-MM" month (400 validation_error otherwise)."""
        return parse_month(text, self.zone)

    # ---- figures -----------------------------------------------------------------------------

    async def totals(self, month: str) -> list[tuple[str, int]]:
        """(service display name, revenue in kopecks) per service with a charge or a refund in the month, by
        name: its charges minus its refunds, so a month that refunds more than it charges has a negative total."""
        period = self.month(month)
        bounds = {"start": period.start, "end": period.end}
        collection = self.mongo[TRANSACTIONS]
        totals: dict[Any, int] = {}
        names: dict[Any, str] = {}
        for pipeline, sign in ((REVENUE, 1), (REFUNDS, -1)):
            async for group in collection.aggregate(pipeline.bind(**bounds)):
                service_id = group["_id"]
                totals[service_id] = totals.get(service_id, 0) + sign * kopecks(group["total"])
                found = [doc.get("name") for doc in group.get("service") or []]
                if found and isinstance(found[0], str) and found[0]:
                    names[service_id] = found[0]
        rows = [
            (names.get(service_id) or f"service {service_id}", service_id if isinstance(service_id, int) else -1, total)
            for service_id, total in totals.items()
        ]
        rows.sort(key=lambda row: (row[0], row[1]))  # str order is Unicode code point order
        return [(name, total) for name, _, total in rows]

    async def build_csv(self, month: str) -> bytes:
        """The report straight from MongoDB, without a BOM: header, then `name;total` lines."""
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, delimiter=";", quotechar='"', quoting=csv.QUOTE_MINIMAL, lineterminator=LINE_END)
        writer.writerow(HEADER)
        for name, total in await self.totals(month):
            writer.writerow((text_cell(name), format_kopecks(total)))
        return buffer.getvalue().encode("utf-8")

    # ---- the cache ---------------------------------------------------------------------------

    def cache_path(self, period: Month) -> Path:
        zone = self.settings.report_tz.replace("/", "_")
        return self.reports_dir / f"revenue-{period.label}-{zone}-{CACHE_FORMAT}.csv"

    def is_closed(self, period: Month) -> bool:
        """True once the month (plus CACHE_GRACE) is over: only then may a file stand for the ledger."""
        now = datetime.fromtimestamp(self.clock(), tz=UTC)
        return now >= period.end + CACHE_GRACE

    async def csv_bytes(self, month: str, bom: bool = False) -> bytes:
        """The report's bytes: from the cache for a closed month, else rebuilt (and cached once closed)."""
        period = self.month(month)
        content: bytes | None = None
        closed = self.is_closed(period)
        if closed:
            content = self._read_cache(period)
        if content is None:
            content = await self.build_csv(period.label)
            if closed and await self._projection_settled():
                self._write_cache(period, content)
        return BOM + content if bom else content

    def _read_cache(self, period: Month) -> bytes | None:
        try:
            return self.cache_path(period).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("report cache unreadable, rebuilding: %s", exc)
            return None

    def _write_cache(self, period: Month, content: bytes) -> None:
        try:
            write_atomically(self.cache_path(period), content)
        except OSError as exc:  # the cache is an optimisation: serve the report anyway
            log.warning("could not write report cache %s: %s", self.cache_path(period), exc)

    async def _projection_settled(self) -> bool:
        """No outbox entries waiting for MongoDB (or no projector to ask): the ledger is complete."""
        if self.lag_probe is None:
            return True
        try:
            lag = await self.lag_probe()
        except Exception as exc:  # an unknown lag is not a settled one
            log.warning("projector lag unknown, report not cached: %s", exc)
            return False
        return not lag or int(lag.get("entries", 0)) == 0

    # ---- links -------------------------------------------------------------------------------

    def signed_link(self, month: str | None, base_url: str, bom: bool | None = None) -> dict[str, str]:
        """{month, url, expires_at}; the URL is absolute, on BILLING_PUBLIC_URL or else on base_url."""
        period = self.month(month)
        return self.signer.link(period.label, self.settings.public_url or base_url, bom)

    def verify_link(self, month: str, expires: str | None, signature: str | None) -> Month:
        """Check a downloaded link (403 invalid_signature when tampered, expired or for another month)."""
        self.signer.verify(month, expires, signature)
        return self.month(month)


def kopecks(total: Any) -> int:
    """An aggregated Decimal128 (or plain integer) sum of kopecks back to an exact int."""
    value = total.to_decimal() if isinstance(total, Decimal128) else Decimal(total)
    if value != value.to_integral_value():
        raise ValueError(f"revenue sum is not a whole number of kopecks: {value}")
    return int(value)


def write_atomically(path: Path, content: bytes) -> None:
    """Write a file so readers see the old one or the whole new one, never a part (temp + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def run_cli(
    settings: Settings,
    month: str,
    output: str | None,
    bom: bool | None = None,
    working: Callable[[str], AbstractContextManager[object]] = lambda step: nullcontext(),
) -> int:
    """`billing report --month YYYY-MM [--output FILE]`: the same CSV as the link, to a file or stdout.

    `working(step)` surrounds the wait for MongoDB (the CLI shows it on a terminal); every failure is one
    line on stderr and exit status 2.
    """
    import asyncio
    import sys

    from pymongo.errors import PyMongoError

    from billing.core.errors import ApiError
    from billing.infra.stores import connect_mongo

    def fail(message: str) -> int:
        print(f"billing report: {' '.join(message.split())}", file=sys.stderr)
        return 2

    if not settings.mongo_url:
        return fail("needs BILLING_MONGO_URL (the embedded store lives inside the server)")
    # The command line signs no links: a key of its own keeps Reports from warning about BILLING_SECRET.
    settings = settings.model_copy(update={"secret": settings.secret or secrets.token_urlsafe(32)})

    async def build() -> bytes:
        mongo = connect_mongo(settings)
        try:
            return await Reports(mongo, settings).csv_bytes(month, settings.report_bom if bom is None else bom)
        finally:
            close = getattr(mongo.client, "close", None)
            if callable(close):
                close()

    try:
        with working(f"report {month}: reading the MongoDB ledger"):
            content = asyncio.run(build())
    except ApiError as exc:
        return fail(exc.detail)
    except PyMongoError as exc:
        # pymongo appends a multi-line topology description after ", Timeout: "
        return fail(f"MongoDB failed (BILLING_MONGO_URL): {str(exc).split(', Timeout: ')[0]}")
    try:
        if output is None or output == "-":
            sys.stdout.buffer.write(content)
            sys.stdout.buffer.flush()
        else:
            write_atomically(Path(output), content)
    except OSError as exc:
        return fail(f"cannot write {output or 'stdout'}: {exc.strerror or exc}")
    return 0
