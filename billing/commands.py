"""The ledger's commands: `billing project`, `billing reconcile`, `billing rebuild`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from billing.bootstrap import Context, build_context
from billing.core.config import Settings
from billing.infra import redis_raw
from billing.projection.projector import Projector
from billing.projection.recovery import RedisNotEmpty, rebuild, reconcile
from billing.projection.store import LedgerStore

log = logging.getLogger("billing.ledger.scripts")

NEEDS_STORES = "billing: {} needs BILLING_REDIS_URL and BILLING_MONGO_URL (the embedded stores live in one process)"


async def _with_context(settings: Settings, work: Callable[[Context], Any]) -> int:
    ctx = await build_context(settings)
    try:
        return await work(ctx)
    finally:
        redis_raw.close(ctx.redis)
        await ctx.redis.aclose()


async def project(ctx: Context) -> int:
    """Run the projector alone until SIGTERM or SIGINT."""
    projector = Projector.from_context(ctx)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await projector.start()
    log.info("projecting %s into MongoDB as consumer %s", ctx.ledger.keys.outbox, projector.consumer)
    await stop.wait()
    await projector.stop()
    log.info("projector stopped: %s", projector.stats())
    return 0


async def run_reconcile(ctx: Context, drain_timeout: float) -> int:
    projector = Projector.from_context(ctx)
    try:
        report = await reconcile(ctx.redis, ctx.ledger.keys, LedgerStore(ctx.mongo), projector, drain_timeout)
    except TimeoutError as exc:
        print(f"reconcile: could not project the outbox first: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    for mismatch in report.mismatches:
        print(f"  MISMATCH {mismatch}")
    return 0 if report.ok else 1


async def run_rebuild(ctx: Context, force: bool, drain_timeout: float) -> int:
    if force:  # Redis may still hold transactions MongoDB lacks: project them before overwriting
        try:
            await Projector.from_context(ctx).drain(timeout=drain_timeout)
        except TimeoutError as exc:
            print(f"rebuild: could not project the outbox first: {exc}", file=sys.stderr)
            return 2
    try:
        report = await rebuild(ctx.redis, ctx.ledger.keys, LedgerStore(ctx.mongo), force=force)
    except RedisNotEmpty as exc:
        print(f"rebuild: refused: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


def _needs_stores(name: str, settings: Settings) -> None:
    if settings.embedded:
        raise SystemExit(NEEDS_STORES.format(name))


def _project(settings: Settings, args: argparse.Namespace) -> int:
    _needs_stores("project", settings)
    return asyncio.run(_with_context(settings, project))


def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    _needs_stores("reconcile", settings)
    return asyncio.run(_with_context(settings, lambda ctx: run_reconcile(ctx, args.drain_timeout)))


def _rebuild(settings: Settings, args: argparse.Namespace) -> int:
    _needs_stores("rebuild", settings)
    return asyncio.run(_with_context(settings, lambda ctx: run_rebuild(ctx, args.force, args.drain_timeout)))


def _configure_project(parser: argparse.ArgumentParser) -> None:
    parser.description = "Project the Redis outbox into MongoDB (for deployments with BILLING_PROJECTOR_ENABLED=false)"


def _configure_reconcile(parser: argparse.ArgumentParser) -> None:
    parser.description = "Prove Redis balances and reservations equal the MongoDB ledger; exit 1 on any mismatch"
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to project the outbox first")


def _configure_rebuild(parser: argparse.ArgumentParser) -> None:
    parser.description = "Restore Redis (balances, reservations, catalog, totals, ids) from the MongoDB ledger"
    parser.add_argument("--force", action="store_true", help="overwrite accounts already in Redis")
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="with --force: seconds to project first")


COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[Settings, argparse.Namespace], int]]] = {
    "project": (_configure_project, _project),
    "reconcile": (_configure_reconcile, _reconcile),
    "rebuild": (_configure_rebuild, _rebuild),
}
