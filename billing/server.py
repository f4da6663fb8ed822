"""Serving: bind the socket, pre-fork workers, run the app, stop gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

import tornado.httpserver
import tornado.netutil

from billing.api.handlers.base import MAX_BODY_BYTES
from billing.app import make_app
from billing.bootstrap import Context, bootstrap
from billing.core.config import Settings
from billing.infra.metrics import mark_process_dead
from billing.ledger.scripts import PartitionCountChanged

log = logging.getLogger("billing.server")

SHUTDOWN_GRACE_SECONDS = 10.0
# Workers that die before they serve, this many in a row: the supervisor stops (exit 1) instead of restarting
# them forever while its socket takes connections nobody answers.
START_FAILURES_LIMIT = 5
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Python collects its youngest generation every 700 allocations of container objects. A batch request keeps tens of
# thousands of them alive until its answer is written, and at 700 the collector walks them again and again as they
# age through the generations; at this threshold a batch of 1000 deposits sees one or two young collections.
GC_YOUNG_THRESHOLD = 20_000


def settle_collector() -> None:
    """Once a worker is built: everything built so far (modules, app, context) lives as long as the worker, so it
    moves out of the collector's sight (the full collections a batch's many objects trigger do not walk it each
    time: in process, bench.hotpath, 21.6 -> 16.0 µs of worker CPU per batched deposit), and young collections
    come every GC_YOUNG_THRESHOLD allocations (two workers under 4 concurrent batches of 1000 deposits, medians
    of 8 runs: 18.9 µs per deposit against 19.7 at Python's 700; single requests unchanged)."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


async def run_worker(settings: Settings, sockets: list[socket.socket], ready: Callable[[], None] | None = None) -> None:
    ctx = await bootstrap(settings)
    await ctx.start()
    app = make_app(ctx)
    server = tornado.httpserver.HTTPServer(app, max_body_size=MAX_BODY_BYTES, xheaders=False)
    server.add_sockets(sockets)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    settle_collector()
    if ready is not None:
        ready()
    await stop.wait()
    log.info("worker %d stopping: no new connections, finishing requests in flight", os.getpid())
    server.stop()
    ctx.events.waker.release()  # held long polls of the event feed answer now instead of holding the drain
    await _drain(server, ctx)
    await ctx.stop()
    flush_gathered(ctx)
    log.info("worker %d stopped", os.getpid())


def flush_gathered(ctx: Context) -> None:
    """Write the access lines and metric updates still gathered: the worker leaves with os._exit."""
    ctx.metrics.flush()
    for handler in logging.getLogger("billing.access").handlers:
        handler.flush()


async def _drain(server: tornado.httpserver.HTTPServer, ctx: Context) -> None:
    """Let requests in flight finish (their responses reach the client), then close every connection.

    close_all_connections() alone closes the streams at once, cutting off a request whose Lua script
    has run but whose response is not yet written; so first wait for the in-flight count to reach zero.
    """
    deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
    observer = ctx.request_observer
    while observer.in_flight > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    if observer.in_flight > 0:
        log.warning("shutdown grace period over with %d request(s) in flight", observer.in_flight)
    try:
        async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
            await server.close_all_connections()
    except TimeoutError:
        log.warning("shutdown grace period over; closing remaining connections")


def bind_worker_sockets(host: str, port: int, workers: int) -> list[list[socket.socket]]:
    """Listening sockets for each worker slot, bound here so a busy port fails before any fork.

    With SO_REUSEPORT each worker gets sockets of its own on the same port and the kernel spreads
    new connections evenly over them. One shared socket lets whichever worker wakes first accept a
    whole burst of keep-alive connections (Tornado accepts up to 128 per wake-up), leaving the other
    workers idle: measured with wrk, 32 connections all landed on one of two workers.
    """
    if workers <= 1 or not hasattr(socket, "SO_REUSEPORT"):
        shared = tornado.netutil.bind_sockets(port, host, reuse_port=False)
        return [shared] * max(workers, 1)
    first = tornado.netutil.bind_sockets(port, host, reuse_port=True)
    port = first[0].getsockname()[1]  # a port of 0 picks one: every slot takes that same one
    return [first] + [tornado.netutil.bind_sockets(port, host, reuse_port=True) for _ in range(workers - 1)]


def serve(settings: Settings, host: str, port: int, workers: int) -> None:
    slots = bind_worker_sockets(host, port, workers)
    log.info("billing listening on http://%s:%d with %d worker(s)", host, port, workers)
    if workers <= 1:
        try:
            asyncio.run(run_worker(settings, slots[0]))
        except PartitionCountChanged as exc:  # a setting, not a crash: one line, no traceback
            log.error("cannot start: %s", exc)
            sys.exit(1)
        return
    _supervise(settings, slots, workers)


def exit_with_supervisor(supervisor: int) -> None:
    """Make this worker get SIGTERM when its supervisor dies (Linux PR_SET_PDEATHSIG).

    A worker that outlived a SIGKILLed supervisor would keep serving unsupervised, with the port
    held, so the service could not be started again on it.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _supervise(settings: Settings, slots: list[list[socket.socket]], workers: int) -> None:
    """Fork one worker per socket slot; forward SIGTERM/SIGINT; restart crashed workers on their slot.

    Each worker reports through a pipe that it is ready to serve; START_FAILURES_LIMIT workers in a row dying
    before that make the supervisor give up, stopping the others, with exit status 1.
    """
    children: dict[int, tuple[int, int]] = {}  # pid -> (slot, read end of its readiness pipe)
    stopping = False
    failed_starts = 0

    def spawn(slot: int) -> None:
        supervisor = os.getpid()
        ready_read, ready_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(ready_read)
            exit_with_supervisor(supervisor)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.environ["BILLING_WORKER_ID"] = str(slot)
            mine = slots[slot]
            for other in {id(s): s for group in slots for s in group if s not in mine}.values():
                other.close()  # a socket no process accepts on would strand the connections hashed to it
            for _pid, (_slot, fd) in children.items():
                os.close(fd)

            def ready() -> None:
                os.write(ready_write, b"r")
                os.close(ready_write)

            try:
                asyncio.run(run_worker(settings, mine, ready))
                code = 0
            except PartitionCountChanged as exc:  # a setting, not a crash: one line, no traceback
                log.error("worker cannot start: %s", exc)
                code = 1
            except Exception:
                log.exception("worker crashed")
                code = 1
            os._exit(code)
        os.close(ready_write)
        children[pid] = (slot, ready_read)

    def was_ready(fd: int) -> bool:
        os.set_blocking(fd, False)
        try:
            return os.read(fd, 1) == b"r"
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        # The supervisor holds the listening socket too: close it, or new connections would queue in the
        # backlog unanswered instead of being refused while the workers finish what they have.
        for sock in {id(s): s for group in slots for s in group}.values():
            with contextlib.suppress(OSError):
                sock.close()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for slot in range(workers):
        spawn(slot)
    gave_up = False
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        child = children.pop(pid, None)
        if child is None:
            continue
        slot, ready_fd = child
        mark_process_dead(pid)
        failed_starts = 0 if was_ready(ready_fd) else failed_starts + 1
        if stopping:
            continue
        if failed_starts >= START_FAILURES_LIMIT:
            log.error("%d workers in a row exited before serving; giving up (see their errors above)", failed_starts)
            gave_up = True
            forward(signal.SIGTERM, None)
            continue
        log.error("worker %d exited with status %d; starting a new one", pid, status)
        time.sleep(0.2)
        spawn(slot)
    sys.exit(1 if gave_up else 0)
