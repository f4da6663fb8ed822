"""The ledger's commands: `billing project`, `billing reconcile`, `billing rebuild`, `billing recover`,
`billing verify`, `billing events tail`.

Each one first makes sure both stores answer, so an unreachable one is a single line on stderr; failures
become CommandError (one line, exit status 2); progress goes to a terminal's stderr and results to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
from pymongo.errors import PyMongoError

from billing.bootstrap import Context, bootstrap
from billing.core.config import DRAIN_TIMEOUT_SECONDS, Settings
from billing.core.errors import ApiError
from billing.core.parsing import ParseError, id_text
from billing.infra.stores import close_redis, connect_mongo, connect_redis
from billing.ledger.scripts import PartitionCountChanged
from billing.ledger.unavailable import store_unavailable
from billing.projection.recovery import (
    Progress,
    ReconcileReport,
    RedisNotEmpty,
    no_progress,
    project_everything,
    rebuild,
    reconcile,
)
from billing.projection.store import LedgerStore
from billing.projection.verify import verify_chains
from billing.terminal import Command, CommandError, StepProgress, one_line
from billing.views.descriptions import negotiate_language
from billing.views.events import MAX_LIMIT, MAX_WAIT

log = logging.getLogger("billing.ledger.scripts")

NEEDS_STORES = "needs BILLING_REDIS_URL and BILLING_MONGO_URL (the embedded stores live inside one process)"
# The settings every ledger command reads; `billing <command> --help` lists them with their defaults.
STORE_SETTINGS = (
    "redis_url",
    "redis_mode",
    "mongo_url",
    "mongo_db",
    "redis_prefix",
    "partitions",
    "request_timeout_seconds",
)
PROJECTOR_SETTINGS = ("projector_batch", "projector_block_ms", "projector_claim_idle_ms")

# What a command does once connected: the exit status and the text for stdout.
Work = Callable[[Context, Progress], Awaitable[tuple[int, str]]]


async def _reach(settings: Settings) -> tuple[Any, Any]:
    """Both stores, each asked once before any work, so an unreachable one is named in one line."""
    redis, mongo = connect_redis(settings), connect_mongo(settings)
    try:
        try:
            await cast(Awaitable[bool], redis.ping())  # redis-py types its commands as sync-or-async
        except Exception as exc:
            if not store_unavailable(exc):
                raise
            raise CommandError(f"Redis unreachable (BILLING_REDIS_URL): {one_line(exc)}") from None
        try:
            await mongo.command("ping")
        except PyMongoError as exc:
            raise CommandError(f"MongoDB unreachable (BILLING_MONGO_URL): {one_line(exc)}") from None
    except BaseException:
        await _close(redis, mongo)
        raise
    return redis, mongo


async def _close(redis: Any, mongo: Any) -> None:
    await close_redis(redis)
    mongo.client.close()


async def _with_context(settings: Settings, work: Work, progress: Progress) -> tuple[int, str]:
    redis, mongo = await _reach(settings)
    try:
        ctx = await bootstrap(settings, redis=redis, mongo=mongo)
        try:
            try:
                await ctx.ledger.claim_partition_count()
            except PartitionCountChanged as exc:
                raise CommandError(str(exc)) from None
            return await work(ctx, progress)
        finally:
            await ctx.stop()
    finally:
        await _close(redis, mongo)  # the bootstrap leaves clients it was given to their owner


def _run(settings: Settings, work: Work, show_progress: bool = True) -> int:
    """Run the work on a fresh event loop; store failures become one line, the result goes to stdout."""
    if settings.embedded:
        raise CommandError(NEEDS_STORES)
    try:
        if show_progress:
            with StepProgress() as progress:
                code, text = asyncio.run(_with_context(settings, work, progress))
        else:
            code, text = asyncio.run(_with_context(settings, work, no_progress))
    except CommandError:
        raise
    except Exception as exc:
        if not store_unavailable(exc):
            raise
        store = "MongoDB" if isinstance(exc, PyMongoError) else "Redis"
        raise CommandError(f"{store} failed: {one_line(exc)}") from None
    if text:
        print(text, flush=True)
    return code


async def project(ctx: Context, progress: Progress = no_progress) -> tuple[int, str]:
    """Run the projector alone until SIGTERM or SIGINT."""
    projector = ctx.projector
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await projector.start()
    log.info("projecting %d outbox streams into MongoDB as consumer %s", len(projector.streams), projector.consumer)
    await stop.wait()
    await projector.stop()
    log.info("projector stopped: %s", projector.stats())
    return 0, ""


async def _reconcile_report(ctx: Context, drain_timeout: float, progress: Progress) -> ReconcileReport:
    try:
        return await reconcile(
            ctx.redis,
            ctx.ledger.keys,
            LedgerStore(ctx.mongo),
            ctx.projector,
            drain_timeout,
            progress=progress,
        )
    except TimeoutError as exc:
        raise CommandError(f"could not project the outbox first: {one_line(exc)}") from None


async def run_reconcile(ctx: Context, drain_timeout: float, progress: Progress = no_progress) -> tuple[int, str]:
    report = await _reconcile_report(ctx, drain_timeout, progress)
    lines = [report.summary(), *(f"  MISMATCH {mismatch}" for mismatch in report.mismatches)]
    return (0 if report.ok else 1), "\n".join(lines)


async def run_rebuild(
    ctx: Context, force: bool, drain_timeout: float, progress: Progress = no_progress
) -> tuple[int, str]:
    if force:  # Redis may still hold transactions MongoDB lacks: project them before overwriting
        progress("project the outbox into MongoDB", 0, None)
        try:
            await project_everything(ctx.redis, ctx.ledger.keys, ctx.projector, drain_timeout)
        except TimeoutError as exc:
            raise CommandError(f"could not project the outbox first: {one_line(exc)}") from None
    try:
        report = await rebuild(
            ctx.redis,
            ctx.ledger.keys,
            LedgerStore(ctx.mongo),
            force=force,
            progress=progress,
            closed_ttl_seconds=ctx.settings.reservation_closed_ttl_seconds,
            recognized_ttl_seconds=ctx.settings.reservation_recognized_ttl_seconds,
        )
    except RedisNotEmpty as exc:
        raise CommandError(f"refused: {exc}") from None
    return 0, report.summary()


async def run_verify(
    ctx: Context, user_id: int | None, drain_timeout: float, progress: Progress = no_progress
) -> tuple[int, str]:
    """Compare Redis with the ledger as reconcile does (projecting the outbox first), then re-compute the hash
    chains (every user's, or one user's)."""
    totals = await _reconcile_report(ctx, drain_timeout, progress)
    report = await verify_chains(LedgerStore(ctx.mongo), user_id, progress)
    report.totals = totals
    return (0 if report.ok else 1), report.summary()


async def run_recover(ctx: Context, progress: Progress = no_progress) -> tuple[int, str]:
    """Complete every transfer between partitions left in transit (as each worker's loop does)."""
    assert ctx.transit_recovery is not None
    completed = await ctx.transit_recovery.run_once()
    return 0, f"recover: {completed} transfers in transit completed"


def _recover(settings: Settings, args: argparse.Namespace) -> int:
    return _run(settings, run_recover, show_progress=False)


def _configure_recover(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Complete the transfers between partitions whose request died between the debit and the credit "
        "(every `billing serve` worker does it within seconds): credit each, or reverse it when the recipient "
        "cannot take it. Safe to run at any time, alongside the service."
    )


async def tail_events(ctx: Context, after: str | None, limit: int | None) -> tuple[int, str]:
    """Print the event feed (GET /v1/events, read from the stores), one JSON line per event, following it with
    long polls: until `limit` events were printed, or SIGTERM or SIGINT. The position to resume from goes to
    stderr at the end."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    lang = negotiate_language(None)
    printed = 0
    stopping = asyncio.create_task(stop.wait())
    try:
        while limit is None or printed < limit:
            page_size = MAX_LIMIT if limit is None else min(MAX_LIMIT, limit - printed)
            query = {"limit": str(page_size), "wait": str(MAX_WAIT), **({"after": after} if after else {})}
            reading = asyncio.create_task(ctx.events.page(query, lang))
            await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():  # stopped while waiting: the page is not taken
                reading.cancel()
                break
            try:
                page = reading.result()
            except ApiError as exc:
                raise CommandError(f"--after: {exc.detail}") from None
            for event in page["items"]:
                sys.stdout.write(orjson.dumps(event).decode() + "\n")
            sys.stdout.flush()
            printed += len(page["items"])
            after = page["next"]
            if stop.is_set():
                break
    finally:
        stopping.cancel()
    if after:
        print(f"next: {after}", file=sys.stderr, flush=True)
    return 0, ""


def _events(settings: Settings, args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise CommandError("--limit must be at least 1")
    return _run(settings, lambda ctx, progress: tail_events(ctx, args.after, args.limit), show_progress=False)


def _configure_events(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "tail: print the event feed (every ledger transaction, as GET /v1/events gives it), one JSON line per "
        "event, following it until --limit events or SIGTERM/SIGINT; then the position to resume from "
        "(`next: <cursor>`) on stderr. It reads the stores directly, so it needs no token; its cursors "
        "are the API's when BILLING_SECRET is the servers'."
    )
    parser.add_argument("action", choices=["tail"], help="what to do: tail (the only action)")
    parser.add_argument(
        "--after",
        default=None,
        metavar="CURSOR",
        help="start after this position (a `next` of the API or of an earlier tail; default: the oldest event)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="stop after N events (default: follow until stopped)",
    )


def _project(settings: Settings, args: argparse.Namespace) -> int:
    return _run(settings, project, show_progress=False)  # it runs until stopped: its log says what it does


def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    return _run(settings, lambda ctx, progress: run_reconcile(ctx, args.drain_timeout, progress))


def _rebuild(settings: Settings, args: argparse.Namespace) -> int:
    return _run(settings, lambda ctx, progress: run_rebuild(ctx, args.force, args.drain_timeout, progress))


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    return _run(settings, lambda ctx, progress: run_verify(ctx, args.user, args.drain_timeout, progress))


def _drain_timeout(parser: argparse.ArgumentParser, when: str) -> None:
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=DRAIN_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"{when}how long to wait for the outbox to reach MongoDB (default: %(default)s)",
    )


def _configure_project(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Project the Redis outbox into MongoDB until SIGTERM or SIGINT, for deployments that run "
        "`billing serve` with BILLING_PROJECTOR_ENABLED=false; any number may run at once."
    )


def _configure_reconcile(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Prove that Redis balances, reservations and totals equal the MongoDB ledger, first projecting "
        "the outbox. Exit status 0: they agree; 1: mismatches (listed on stdout); 2: could not check."
    )
    _drain_timeout(parser, "")


def _configure_rebuild(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Restore Redis (balances, reservations, catalog, totals, ids) from the MongoDB ledger. "
        "Refuses (exit status 2) when Redis already holds accounts under the prefix, unless --force."
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="project the outbox, then delete and overwrite the accounts already in Redis (default: refuse)",
    )
    _drain_timeout(parser, "with --force: ")


def _configure_verify(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Prove the MongoDB ledger is as projected: re-compute every user's hash chain (each transaction's "
        "`hash`) in id order and name the first transaction of each user where it breaks (edited, or a "
        "transaction before it deleted), and compare Redis with the ledger as `billing reconcile` does "
        "(single mode; the whole ledger even with --user). Exit status 0: all hold; 1: a break or mismatch "
        "(listed on stdout); 2: could not check."
    )
    parser.add_argument(
        "--user",
        type=_user_id,
        default=None,
        metavar="ID",
        help="re-compute this user's chain only (default: every user's)",
    )
    _drain_timeout(parser, "")


def _user_id(text: str) -> int:
    try:
        return id_text(text)
    except ParseError as exc:
        raise argparse.ArgumentTypeError(f"a user id {exc}") from None


COMMANDS: dict[str, Command] = {
    "project": Command(
        "run the outbox projector alone (Redis -> MongoDB)",
        STORE_SETTINGS + PROJECTOR_SETTINGS,
        _configure_project,
        _project,
    ),
    "reconcile": Command(
        "check that Redis agrees with the MongoDB ledger",
        STORE_SETTINGS + PROJECTOR_SETTINGS,
        _configure_reconcile,
        _reconcile,
    ),
    "recover": Command(
        "complete the transfers between partitions left in transit",
        STORE_SETTINGS,
        _configure_recover,
        _recover,
    ),
    "rebuild": Command(
        "restore an empty Redis from the MongoDB ledger",
        STORE_SETTINGS + PROJECTOR_SETTINGS,
        _configure_rebuild,
        _rebuild,
    ),
    "verify": Command(
        "check the ledger's hash chains and that Redis agrees with it",
        STORE_SETTINGS + PROJECTOR_SETTINGS,
        _configure_verify,
        _verify,
    ),
    "events": Command(
        "events tail: print the event feed as JSON lines, following it",
        (*STORE_SETTINGS, "secret"),
        _configure_events,
        _events,
    ),
}
