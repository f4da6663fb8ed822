"""Transfers between partitions whose process died between their steps, completed by real `billing serve`
workers: the state a SIGKILL leaves after the debit, and after the credit, is made by the same scripts with
no process left to finish; then `billing serve --workers 2` starts, and its two workers' recovery loops race
to complete every transit. Nothing is lost or doubled, and a retry with the same Idempotency-Key answers the
final outcome."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
import requests
from redis.asyncio import Redis

from billing.api.auth import Authenticator
from billing.ledger.outcomes import Applied
from billing.ledger.scripts import Idempotency, Ledger
from billing.ledger.service import OPERATIONS, MoneyOperations
from tests.support.servers import MongoWireServer, RedisServer
from tests.support.service import BillingProcess

TOKEN = "xfer-crash-payments-token"
TOKENS = {TOKEN: ["payments"]}
SENDER, RECIPIENT = 1, 2  # partitions 15 and 5 of 16
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


class Died(Exception):
    """The process died here."""


def stop_after(ledger: Ledger, step: str) -> None:
    async def hook(at: str, _transfer_id: int) -> None:
        if at == step:
            raise Died(at)

    ledger.between_transfer_steps = hook


def transfer_body(amount: str) -> dict[str, Any]:
    return {"from_user_id": SENDER, "to_user_id": RECIPIENT, "amount": amount}


async def leave_in_transit(ledger: Ledger, scope: str, cases: list[tuple[str, str | None, str]]) -> None:
    """Each (step, key, amount): a transfer whose process died after that step."""
    operations = MoneyOperations(ledger)
    spec = OPERATIONS["transfer"]
    for step, key, amount in cases:
        stop_after(ledger, step)
        request = spec.model.model_validate(transfer_body(amount))
        with pytest.raises(Died):
            await operations.execute(spec, request, Idempotency(scope, key) if key else None, "ru")
    ledger.between_transfer_steps = None


async def test_workers_complete_transfers_left_between_their_steps_once(
    own_redis: RedisServer, mongo_server: MongoWireServer
) -> None:
    redis = Redis.from_url(own_redis.url)
    ledger = Ledger(redis, "billing:", 90_000, partitions=16)
    service = BillingProcess(own_redis.url, mongo_server.url, TOKENS, workers=2, mongo_db=f"x_{uuid.uuid4().hex[:8]}")
    try:
        assert ledger.keys.partition_of(SENDER) != ledger.keys.partition_of(RECIPIENT)
        service.start()
        deposit = {"user_id": SENDER, "amount": "1000.00"}
        answer = requests.post(f"{service.url}/v1/deposits", json=deposit, headers=HEADERS, timeout=10)
        assert answer.status_code == 201, answer.text
        service.kill_group()  # no worker is left to complete what follows

        scope = Authenticator(TOKENS).authenticate(f"Bearer {TOKEN}").name
        cases = [("debited", "after-debit", "10.00"), ("credited", "after-credit", "20.00"), ("debited", None, "5.00")]
        await leave_in_transit(ledger, scope, cases)
        assert len(await ledger.open_transits()) == 3
        assert await ledger.balance(SENDER) == (1000_00 - 35_00, 0)
        assert await ledger.balance(RECIPIENT) == (20_00, 0)  # only the one stopped after its credit

        service.start()  # two workers, each with its recovery loop
        deadline = time.monotonic() + 60  # a bound against hanging; the loops take transits 1 s old
        while await ledger.open_transits():
            assert time.monotonic() < deadline, await ledger.open_transits()
            await asyncio.sleep(0.1)

        assert await ledger.balance(RECIPIENT) == (35_00, 0)
        assert await ledger.balance(SENDER) == (1000_00 - 35_00, 0)
        sender, recipient = ledger.keys.partition_of(SENDER), ledger.keys.partition_of(RECIPIENT)
        assert (await ledger.partition_totals(sender))["transfers_out"] == 35_00
        assert (await ledger.partition_totals(recipient))["transfers_in"] == 35_00
        for _step, key, amount in cases:
            if key is None:
                continue
            answers = [
                requests.post(
                    f"{service.url}/v1/transfers",
                    json=transfer_body(amount),
                    headers={**HEADERS, "Idempotency-Key": key},
                    timeout=10,
                )
                for _ in range(2)
            ]
            for retry in answers:
                assert retry.status_code == 201, retry.text
                assert retry.headers.get("Idempotent-Replayed") == "true"
            assert answers[0].json() == answers[1].json()
            assert answers[0].json()["transaction"]["amount"] == amount
        assert await ledger.balance(RECIPIENT) == (35_00, 0)  # the retries moved nothing
        retried = await MoneyOperations(ledger).execute(
            OPERATIONS["transfer"],
            OPERATIONS["transfer"].model.model_validate(transfer_body("10.00")),
            Idempotency(scope, "after-debit"),
            "ru",
        )
        assert isinstance(retried, Applied) and retried.replayed
    finally:
        service.stop()
        await redis.aclose()
