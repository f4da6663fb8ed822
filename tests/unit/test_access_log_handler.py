"""The access log handler: requests' entries gathered for a short interval, formatted and written in order,
nothing lost at flush."""

from __future__ import annotations

import asyncio
import io
import logging
import os

import orjson

from billing.infra import observability
from billing.infra.observability import LINES_AT_MOST, WRITE_EVERY_SECONDS, AccessEntry, AccessLineHandler

FINISHED_MS = 1_795_000_000_123  # 2026-11-18T11:06:40.123Z


def entry(n: object) -> AccessEntry:
    """A finished request's entry, told apart by its path."""
    return (FINISHED_MS, "POST", "/v1/deposits", f"/n/{n}", 201, 0.0015, "req-1", "payments", "10.0.0.1", None)


def paths(stream: io.StringIO) -> list[str]:
    return [orjson.loads(line)["path"] if line.startswith("{") else line for line in stream.getvalue().splitlines()]


def record(message: str) -> logging.LogRecord:
    return logging.makeLogRecord({"msg": message, "levelno": logging.INFO, "levelname": "INFO"})


async def test_entries_are_written_together_after_the_interval_and_in_order(monkeypatch) -> None:
    interval = max(WRITE_EVERY_SECONDS, 0.3)  # long enough that a stalled test machine cannot pass it unseen
    monkeypatch.setattr(observability, "WRITE_EVERY_SECONDS", interval)
    stream = io.StringIO()
    handler = AccessLineHandler(stream)
    handler.write_entry(entry(1))
    handler.write_entry(entry(2))
    await asyncio.sleep(0)
    assert stream.getvalue() == ""  # gathered, not yet written
    await asyncio.sleep(interval + 0.1)
    assert paths(stream) == ["/n/1", "/n/2"]
    handler.write_entry(entry(3))
    handler.emit(record("plain record"))  # a record the usual way never overtakes queued entries
    handler.write_entry(entry(4))
    handler.flush()  # logging.shutdown() flushes: nothing is left behind
    assert paths(stream) == ["/n/1", "/n/2", "/n/3", "plain record", "/n/4"]


async def test_a_line_shows_the_request_as_it_finished_not_as_it_was_written(monkeypatch) -> None:
    monkeypatch.setattr(observability, "WRITE_EVERY_SECONDS", 0.05)
    stream = io.StringIO()
    handler = AccessLineHandler(stream)
    handler.write_entry(entry(1))
    await asyncio.sleep(0.2)
    assert orjson.loads(stream.getvalue()) == {
        "time": "2026-11-18T11:06:40.123Z",  # when it finished, not when the line was written
        "method": "POST",
        "route": "/v1/deposits",
        "path": "/n/1",
        "status": 201,
        "duration_ms": 1.5,
        "request_id": "req-1",
        "token": "payments",
        "remote_ip": "10.0.0.1",
        "pid": os.getpid(),
    }


def test_without_an_event_loop_an_entry_is_written_at_once() -> None:
    stream = io.StringIO()
    AccessLineHandler(stream).write_entry(entry(1))
    assert paths(stream) == ["/n/1"]


async def test_a_full_buffer_is_written_at_once(monkeypatch) -> None:
    monkeypatch.setattr(observability, "WRITE_EVERY_SECONDS", 0.3)  # the timer cannot be what writes them
    stream = io.StringIO()
    handler = AccessLineHandler(stream)
    for n in range(LINES_AT_MOST - 1):
        handler.write_entry(entry(n))
    assert stream.getvalue() == ""
    handler.write_entry(entry("last"))
    assert len(stream.getvalue().splitlines()) == LINES_AT_MOST  # without waiting for the timer
    handler.write_entry(entry("after"))
    await asyncio.sleep(0.4)
    assert paths(stream)[-1] == "/n/after"
