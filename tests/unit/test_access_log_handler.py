"""The access log handler: lines gathered for a short interval, written in order, nothing lost at flush."""

from __future__ import annotations

import asyncio
import io
import logging

from billing.infra import observability
from billing.infra.observability import LINES_AT_MOST, WRITE_EVERY_SECONDS, AccessLineHandler


def record(message: str) -> logging.LogRecord:
    return logging.makeLogRecord({"msg": message, "levelno": logging.INFO, "levelname": "INFO"})


async def test_lines_are_written_together_after_the_interval_and_in_order(monkeypatch) -> None:
    interval = max(WRITE_EVERY_SECONDS, 0.3)  # long enough that a stalled test machine cannot pass it unseen
    monkeypatch.setattr(observability, "WRITE_EVERY_SECONDS", interval)
    stream = io.StringIO()
    handler = AccessLineHandler(stream)
    handler.write_line('{"n":1}\n')
    handler.write_line('{"n":2}\n')
    await asyncio.sleep(0)
    assert stream.getvalue() == ""  # gathered, not yet written
    await asyncio.sleep(interval + 0.1)
    assert stream.getvalue() == '{"n":1}\n{"n":2}\n'
    handler.write_line('{"n":3}\n')
    handler.emit(record("plain record"))  # a record the usual way never overtakes queued lines
    handler.write_line('{"n":4}\n')
    handler.flush()  # logging.shutdown() flushes: nothing is left behind
    assert stream.getvalue().splitlines() == ['{"n":1}', '{"n":2}', '{"n":3}', "plain record", '{"n":4}']


def test_without_an_event_loop_a_line_is_written_at_once() -> None:
    stream = io.StringIO()
    AccessLineHandler(stream).write_line('{"n":1}\n')
    assert stream.getvalue() == '{"n":1}\n'


async def test_a_full_buffer_is_written_at_once(monkeypatch) -> None:
    monkeypatch.setattr(observability, "WRITE_EVERY_SECONDS", 0.3)  # the timer cannot be what writes them
    stream = io.StringIO()
    handler = AccessLineHandler(stream)
    for n in range(LINES_AT_MOST - 1):
        handler.write_line(f'{{"n":{n}}}\n')
    assert stream.getvalue() == ""
    handler.write_line('{"n":"last"}\n')
    assert len(stream.getvalue().splitlines()) == LINES_AT_MOST  # without waiting for the timer
    handler.write_line('{"n":"after"}\n')
    await asyncio.sleep(0.4)
    assert stream.getvalue().splitlines()[-1] == '{"n":"after"}'
