"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
from typing import Any

from billing.api.handlers.base import BaseHandler
from billing.core.errors import problem_body


class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(200, {"status": "ok"})


class ReadyHandler(BaseHandler):
    async def get(self) -> None:
        checks: dict[str, Any] = {
            "redis": await _probe(self.ctx.redis.ping()),
            "mongodb": await _probe(self.ctx.mongo.command("ping")),
        }
        checks.update(await self.ctx.projector.readiness())
        checks.update(await self.ctx.sequence_guard.readiness())
        if checks["redis"] == "ok" and checks["mongodb"] == "ok" and checks.get("ledger_sequence", "ok") == "ok":
            self.write_json(200, {"status": "ok", "checks": checks})
            return
        detail = "Redis or MongoDB does not answer"
        verdict = checks.get("ledger_sequence", "ok")
        if verdict.startswith("behind"):
            detail = "Redis's ledger sequence is behind MongoDB: money writes are refused until `billing rebuild`"
        elif verdict != "ok":  # the partition count: another one in Redis, or not confirmed yet
            detail = self.ctx.sequence_guard.refusal or f"{verdict}: money writes wait for Redis"
        self.set_header("Retry-After", "1")
        self.write_json(503, {**problem_body("unavailable", detail), "checks": checks})


async def _probe(awaitable: Any) -> str:
    try:
        async with asyncio.timeout(1.0):
            await awaitable
        return "ok"
    except Exception as exc:  # readiness reports, never raises
        return f"error: {type(exc).__name__}"
