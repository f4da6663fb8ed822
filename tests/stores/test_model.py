"""Stateful property test: the money service against a plain Python model of balances and reservations.

Hypothesis drives random sequences of deposits, withdrawals, transfers, reserves (with and without expires_in),
recognitions (partial and full), cancels, refunds (partial, whole and over the charge), the passing of time,
sweeps of the expiry sweeper, replays with the same Idempotency-Key, key reuse, and invalid requests through
billing.ledger.service.MoneyOperations (the layer the HTTP handlers and the batch endpoint share), on fakeredis
and on a real redis-server, each example under a fresh key prefix. After every step the replies, every
balance, every reservation (its status, deadline and whether its record has a TTL), the totals hash and the
outbox length must agree with the model.

Time is the test's: every partition's clock starts far in the future (a partition's clock never goes back,
lua/_prelude.lua clock(), so the scripts stamp exactly it) and moves only when the `wait` rule raises it.

Longer run: BILLING_MODEL_EXAMPLES=2000 BILLING_MODEL_STEPS=100 .venv/bin/pytest tests/stores/test_model.py
"""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar

import fakeredis
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from redis.asyncio import Redis

from billing.api.jsonbody import parse_json_object
from billing.api.outcomes import Answer
from billing.core.config import default
from billing.core.errors import ApiError
from billing.core.money import MAX_BALANCE_KOPECKS, format_kopecks
from billing.core.timefmt import format_ms
from billing.ledger.expiry import ReservationSweeper
from billing.ledger.scripts import Idempotency, Ledger, partition_of
from billing.ledger.service import OPERATIONS, MoneyOperations, validate
from tests.support.answers import run_one

EXAMPLES = int(os.environ.get("BILLING_MODEL_EXAMPLES", "50"))
STEPS = int(os.environ.get("BILLING_MODEL_STEPS", "30"))
USERS = (1, 2, 3)  # each in a partition of its own
PARTITIONS: int = default("partitions")
SERVICES = (1, 2)
ORDERS = (1, 2)
SCOPES = ("alice", "bob")
DEFAULT_TTL: int = default("reservation_ttl_seconds")
START_MS = 4_102_444_800_000  # 2100-01-01: every partition's clock, ahead of the real one for the whole run

users = st.sampled_from(USERS)
refs = st.tuples(users, st.sampled_from(SERVICES), st.sampled_from(ORDERS))
amounts = st.one_of(st.integers(1, 5_000), st.sampled_from([1, 100, 2_500, 10_000, 100_000]))
spellings = st.sampled_from(["string", "decimal", "int-if-whole"])
# None: no key; otherwise the scope (a token's id) to send a fresh key from
key_scopes = st.one_of(st.none(), st.sampled_from(SCOPES))


def spell(kopecks: int, how: str) -> Any:
    """One amount written the ways a JSON body can carry it (the parser turns numbers into int or Decimal)."""
    if how == "decimal":
        return Decimal(kopecks).scaleb(-2)
    if how == "int-if-whole" and kopecks % 100 == 0:
        return kopecks // 100
    return format_kopecks(kopecks)


@dataclass
class Resv:
    amount: int
    expires_at: int
    status: str = "reserved"  # as stored: one past its deadline stays reserved until something releases it
    recognized: int | None = None
    refunded: int = 0


@dataclass
class Model:
    """The specification in plain Python: what each operation must answer and leave behind."""

    accounts: dict[int, list[int]] = field(default_factory=dict)  # user -> [available, reserved]
    reservations: dict[tuple[int, int, int], Resv] = field(default_factory=dict)
    deposited: int = 0
    withdrawn: int = 0
    revenue: int = 0
    refunded: int = 0
    movements: int = 0  # outbox entries
    now: int = START_MS  # every partition's clock (ms)
    keys: dict[tuple[str, str], tuple[str, dict[str, Any], Answer]] = field(default_factory=dict)

    def balance(self, user: int) -> dict[str, Any]:
        available, reserved = self.accounts[user]
        return {"user_id": user, "available": format_kopecks(available), "reserved": format_kopecks(reserved)}

    def due(self, resv: Resv) -> bool:
        return resv.status == "reserved" and self.now >= resv.expires_at

    def shown(self, resv: Resv) -> str:
        """The status a read or an answer shows."""
        return "expired" if self.due(resv) else resv.status

    def expire(self, user: int, resv: Resv) -> None:
        """A due reservation released: back to available, a release in the outbox."""
        account = self.accounts[user]
        account[1] -= resv.amount
        account[0] += resv.amount
        resv.status = "expired"
        self.movements += 1
        event("a reservation expired")

    def sweep(self) -> int:
        due = [(ref, resv) for ref, resv in self.reservations.items() if self.due(resv)]
        for ref, resv in due:
            self.expire(ref[0], resv)
        return len(due)

    def apply(self, op: str, r: Any) -> tuple[int, str | None]:
        """Mutate the model as the operation must; return the expected status and error code."""
        return getattr(self, f"_{op}")(r)

    def _deposit(self, r: Any) -> tuple[int, str | None]:
        account = self.accounts.get(r.user_id, [0, 0])
        if sum(account) + r.amount > MAX_BALANCE_KOPECKS:
            return 409, "balance_limit_exceeded"
        account[0] += r.amount
        self.accounts[r.user_id] = account
        self.deposited += r.amount
        self.movements += 1
        return 201, None

    def _withdrawal(self, r: Any) -> tuple[int, str | None]:
        if r.user_id not in self.accounts:
            return 404, "account_not_found"
        if self.accounts[r.user_id][0] < r.amount:
            return 409, "insufficient_funds"
        self.accounts[r.user_id][0] -= r.amount
        self.withdrawn += r.amount
        self.movements += 1
        return 201, None

    def _transfer(self, r: Any) -> tuple[int, str | None]:
        if r.from_user_id not in self.accounts:
            return 404, "account_not_found"
        if self.accounts[r.from_user_id][0] < r.amount:
            return 409, "insufficient_funds"
        target = self.accounts.get(r.to_user_id, [0, 0])
        if sum(target) + r.amount > MAX_BALANCE_KOPECKS:
            return 409, "balance_limit_exceeded"
        self.accounts[r.from_user_id][0] -= r.amount
        target[0] += r.amount
        self.accounts[r.to_user_id] = target
        # one outbox entry in each partition the transfer touches
        self.movements += 1 if partition_of(r.from_user_id, PARTITIONS) == partition_of(r.to_user_id, PARTITIONS) else 2
        return 201, None

    def _reserve(self, r: Any) -> tuple[int, str | None]:
        ref = (r.user_id, r.service_id, r.order_id)
        existing = self.reservations.get(ref)
        if existing is not None:
            if self.due(existing):
                self.expire(r.user_id, existing)
            return (200, None) if existing.amount == r.amount else (409, "reservation_conflict")
        if r.user_id not in self.accounts:
            return 404, "account_not_found"
        account = self.accounts[r.user_id]
        if account[0] < r.amount:
            return 409, "insufficient_funds"
        account[0] -= r.amount
        account[1] += r.amount
        lifetime = DEFAULT_TTL if r.expires_in is None else r.expires_in
        self.reservations[ref] = Resv(r.amount, self.now + lifetime * 1000)
        self.movements += 1
        return 201, None

    def _recognize(self, r: Any) -> tuple[int, str | None]:
        resv = self.reservations.get((r.user_id, r.service_id, r.order_id))
        if resv is None:
            return 404, "reservation_not_found"
        if resv.status == "recognized" and resv.recognized == r.amount:
            return 200, None
        if self.due(resv):
            self.expire(r.user_id, resv)
        if resv.status == "expired":
            return 409, "reservation_expired"
        if resv.status != "reserved":
            return 409, "reservation_closed"
        if r.amount > resv.amount:
            return 409, "amount_exceeds_reservation"
        account = self.accounts[r.user_id]
        account[1] -= resv.amount
        account[0] += resv.amount - r.amount
        self.revenue += r.amount
        resv.status, resv.recognized = "recognized", r.amount
        self.movements += 1
        return 200, None

    def _cancel(self, r: Any) -> tuple[int, str | None]:
        resv = self.reservations.get((r.user_id, r.service_id, r.order_id))
        if resv is None:
            return 404, "reservation_not_found"
        if resv.status == "cancelled":
            return 200, None
        if self.due(resv):
            self.expire(r.user_id, resv)
        if resv.status == "expired":
            return 409, "reservation_expired"
        if resv.status != "reserved":
            return 409, "reservation_closed"
        account = self.accounts[r.user_id]
        account[1] -= resv.amount
        account[0] += resv.amount
        resv.status = "cancelled"
        self.movements += 1
        return 200, None

    def _refund(self, r: Any) -> tuple[int, str | None]:
        resv = self.reservations.get((r.user_id, r.service_id, r.order_id))
        if resv is None:
            return 404, "reservation_not_found"
        if resv.status != "recognized" or resv.recognized is None:
            return 409, "reservation_not_recognized"
        if resv.refunded + r.amount > resv.recognized:
            return 409, "refund_exceeds_charge"
        account = self.accounts[r.user_id]
        if sum(account) + r.amount > MAX_BALANCE_KOPECKS:
            return 409, "balance_limit_exceeded"
        account[0] += r.amount
        resv.refunded += r.amount
        self.refunded += r.amount
        self.movements += 1
        return 201, None


INVALID: list[tuple[str, Any]] = [
    ("deposit", {"user_id": 1, "amount": "1.005"}),
    ("deposit", {"user_id": 1, "amount": "-1"}),
    ("deposit", {"user_id": 1, "amount": "0.00"}),
    ("deposit", {"user_id": 1, "amount": Decimal("1000000000.01")}),
    ("deposit", {"user_id": 1, "amount": True}),
    ("deposit", {"user_id": "1", "amount": "1"}),
    ("deposit", {"user_id": 0, "amount": "1"}),
    ("deposit", {"user_id": 2**63, "amount": "1"}),
    ("deposit", {"user_id": 1, "amount": "1", "extra": 1}),
    ("withdrawal", {"user_id": 1}),
    ("withdrawal", {"user_id": 1, "amount": "1", "comment": "a\u0000"}),
    ("transfer", {"from_user_id": 1, "to_user_id": 1, "amount": "1"}),
    ("reserve", {"user_id": 1, "service_id": 1, "order_id": 1, "amount": None}),
    ("reserve", {"user_id": 1, "service_id": 1, "order_id": 1, "amount": "1", "service_name": ""}),
    ("recognize", {"user_id": 1, "service_id": 1, "order_id": -1, "amount": "1"}),
    ("reserve", {"user_id": 1, "service_id": 1, "order_id": 1, "amount": "1", "expires_in": 0}),
    ("reserve", {"user_id": 1, "service_id": 1, "order_id": 1, "amount": "1", "expires_in": 31_536_001}),
    ("reserve", {"user_id": 1, "service_id": 1, "order_id": 1, "amount": "1", "expires_in": "10"}),
    ("reserve", {"user_id": 1, "service_id": 1, "order_id": 1, "amount": "1", "expires_in": Decimal("10.5")}),
    ("reserve", {"user_id": 1, "service_id": 1, "order_id": 1, "amount": "1", "expires_in": True}),
    ("cancel", {"user_id": 1, "service_id": 1}),
    ("refund", {"user_id": 1, "service_id": 1, "order_id": 1}),
    ("refund", {"user_id": 1, "service_id": 1, "order_id": 1, "amount": "0.001"}),
    ("cancel", [1, 1, 1]),
    ("deposit", b'{"user_id": 1, "amount": NaN}'),
    ("deposit", b'{"user_id": 1, "amount": 1e999999}'),
    ("deposit", b'{"user_id": 1, "amount": "1.00"'),
]


@dataclass
class Backend:
    """One event loop and one Redis client shared by every example of a run."""

    loop: asyncio.AbstractEventLoop
    redis: Redis

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)


class LedgerMachine(RuleBasedStateMachine):
    backend: ClassVar[Backend]

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"model:{uuid.uuid4().hex[:12]}:"
        self.ledger = Ledger(self.backend.redis, self.prefix, 90_000)
        self.operations = MoneyOperations(self.ledger)
        self.sweeper = ReservationSweeper(self.ledger)
        self.set_clocks(START_MS)
        self.model = Model()
        self.key_counts = dict.fromkeys(SCOPES, 0)

    def teardown(self) -> None:
        async def clean() -> None:
            keys = [key async for key in self.backend.redis.scan_iter(match=f"{self.prefix}*", count=1000)]
            if keys:
                await self.backend.redis.delete(*keys)

        self.backend.run(clean())

    def set_clocks(self, ms: int) -> None:
        async def write() -> None:
            pipe = self.backend.redis.pipeline(transaction=False)
            for partition in self.ledger.keys.all():
                pipe.hset(self.ledger.keys.meta(partition), "clock", ms)
            await pipe.execute()

        self.backend.run(write())

    # ---- running one operation against both sides ------------------------------------------

    def execute(self, op: str, data: dict[str, Any], scope: str | None) -> None:
        spec = OPERATIONS[op]
        request = validate(spec, data)
        idem = None
        if scope is not None:
            key = f"k{self.key_counts[scope] % 3}"  # few key names: scopes share them, reuse happens
            self.key_counts[scope] += 1
            idem = Idempotency(scope, key)
            stored = self.model.keys.get((scope, key))
            if stored is not None:
                self.expect_keyed_again(spec, request, idem, stored)
                return
        expected_status, expected_code = self.model.apply(op, request)
        reply = self.backend.run(run_one(self.operations, spec, request, idem))
        assert not reply.replayed
        assert reply.status == expected_status, (op, data, reply)
        if expected_code is not None:
            assert reply.body["code"] == expected_code, (op, data, reply)
        else:
            self.check_body(op, request, reply.body)
        if idem is not None:
            self.model.keys[(idem.scope, idem.key)] = (op, request.model_dump(), reply)

    def expect_keyed_again(self, spec: Any, request: Any, idem: Idempotency, stored: Any) -> None:
        """A key already used in this scope: the same request replays, another one is refused."""
        op, dump, first = stored
        if op == spec.name and dump == request.model_dump():
            reply = self.backend.run(run_one(self.operations, spec, request, idem))
            assert reply.replayed and (reply.status, reply.body) == (first.status, first.body)
        else:
            with pytest.raises(ApiError) as refused:
                self.backend.run(run_one(self.operations, spec, request, idem))
            assert refused.value.code == "idempotency_key_reused"

    def check_body(self, op: str, request: Any, body: dict[str, Any]) -> None:
        m = self.model
        if op == "transfer":
            assert body["balance"] == m.balance(request.from_user_id)
            assert body["recipient_balance"] == m.balance(request.to_user_id)
            assert body["transaction"]["type"] == "transfer_out"
            assert body["recipient_transaction"]["type"] == "transfer_in"
            return
        assert body["balance"] == m.balance(request.user_id)
        if op in ("deposit", "withdrawal"):
            assert body["transaction"]["type"] == op
            assert body["transaction"]["amount"] == format_kopecks(request.amount)
            return
        resv = m.reservations[(request.user_id, request.service_id, request.order_id)]
        shown = body["reservation"]
        assert (shown["amount"], shown["status"]) == (format_kopecks(resv.amount), resv.status)
        assert shown["expires_at"] == format_ms(resv.expires_at)
        recognized = format_kopecks(resv.recognized) if resv.recognized is not None else None
        assert shown["recognized_amount"] == recognized
        assert shown["refunded_amount"] == format_kopecks(resv.refunded)
        if op == "refund":
            assert body["transaction"]["type"] == "refund"
            assert body["transaction"]["amount"] == format_kopecks(request.amount)

    # ---- rules ------------------------------------------------------------------------------

    @rule(user=users, amount=amounts, how=spellings, scope=key_scopes)
    def deposit(self, user: int, amount: int, how: str, scope: str | None) -> None:
        self.execute("deposit", {"user_id": user, "amount": spell(amount, how)}, scope)

    @rule(user=users, amount=amounts, how=spellings, scope=key_scopes, comment=st.sampled_from([None, "", "atm"]))
    def withdraw(self, user: int, amount: int, how: str, scope: str | None, comment: str | None) -> None:
        self.execute("withdrawal", {"user_id": user, "amount": spell(amount, how), "comment": comment}, scope)

    @rule(pair=st.permutations(USERS), amount=amounts, how=spellings, scope=key_scopes)
    def transfer(self, pair: list[int], amount: int, how: str, scope: str | None) -> None:
        data = {"from_user_id": pair[0], "to_user_id": pair[1], "amount": spell(amount, how)}
        self.execute("transfer", data, scope)

    @rule(
        ref=refs,
        amount=amounts,
        how=spellings,
        scope=key_scopes,
        expires_in=st.sampled_from([None, 1, 5, 60, Decimal("30.0"), 31_536_000]),
    )
    def reserve(
        self, ref: tuple[int, int, int], amount: int, how: str, scope: str | None, expires_in: Decimal | int | None
    ) -> None:
        user, service, order = ref
        data = {"user_id": user, "service_id": service, "order_id": order, "amount": spell(amount, how)}
        if expires_in is not None or amount % 2:  # absent, or null: the same
            data["expires_in"] = expires_in
        self.execute("reserve", data, scope)

    @rule(seconds=st.sampled_from([0.001, 1, 4, 5, 59, 61, DEFAULT_TTL]))
    def wait(self, seconds: float) -> None:
        """Time passes on every partition's clock (to a deadline exactly, often: the rules' lifetimes)."""
        self.model.now += int(seconds * 1000)
        self.set_clocks(self.model.now)

    @rule()
    def sweep(self) -> None:
        """The sweeper releases exactly the reservations past their deadline and still reserved."""
        expected = self.model.sweep()
        assert self.backend.run(self.sweeper.run_once()) == expected

    @precondition(lambda self: self.model.reservations)
    @rule(data=st.data(), how=spellings, scope=key_scopes, part=st.sampled_from(["full", "partial", "over", "any"]))
    def recognize(self, data: st.DataObject, how: str, scope: str | None, part: str) -> None:
        ref = data.draw(st.sampled_from(sorted(self.model.reservations)))
        reserved = self.model.reservations[ref].amount
        amount = {
            "full": reserved,
            "partial": max(1, reserved // 2),
            "over": reserved + 1,
            "any": data.draw(amounts),
        }[part]
        user, service, order = ref
        payload = {"user_id": user, "service_id": service, "order_id": order, "amount": spell(amount, how)}
        self.execute("recognize", payload, scope)

    @rule(ref=refs, scope=key_scopes)
    def recognize_unknown_or_any(self, ref: tuple[int, int, int], scope: str | None) -> None:
        user, service, order = ref
        self.execute("recognize", {"user_id": user, "service_id": service, "order_id": order, "amount": "1"}, scope)

    @precondition(lambda self: self.model.reservations)
    @rule(data=st.data(), scope=key_scopes)
    def cancel(self, data: st.DataObject, scope: str | None) -> None:
        user, service, order = data.draw(st.sampled_from(sorted(self.model.reservations)))
        self.execute("cancel", {"user_id": user, "service_id": service, "order_id": order}, scope)

    @rule(ref=refs, scope=key_scopes)
    def cancel_any(self, ref: tuple[int, int, int], scope: str | None) -> None:
        user, service, order = ref
        self.execute("cancel", {"user_id": user, "service_id": service, "order_id": order}, scope)

    @precondition(lambda self: self.model.reservations)
    @rule(data=st.data(), how=spellings, scope=key_scopes, part=st.sampled_from(["rest", "half", "over", "any"]))
    def refund(self, data: st.DataObject, how: str, scope: str | None, part: str) -> None:
        """Part of a recognized charge back (of any reservation: one not recognized is refused)."""
        ref = data.draw(st.sampled_from(sorted(self.model.reservations)))
        resv = self.model.reservations[ref]
        left = (resv.recognized or resv.amount) - resv.refunded
        amount = {
            "rest": max(1, left),
            "half": max(1, left // 2),
            "over": left + 1,
            "any": data.draw(amounts),
        }[part]
        user, service, order = ref
        payload = {"user_id": user, "service_id": service, "order_id": order, "amount": spell(amount, how)}
        self.execute("refund", payload, scope)

    @precondition(lambda self: self.model.keys)
    @rule(data=st.data(), how=spellings)
    def replay(self, data: st.DataObject, how: str) -> None:
        """The same request again under its key, the amount perhaps spelled another way: the first answer."""
        (scope, key) = data.draw(st.sampled_from(sorted(self.model.keys)))
        op, dump, first = self.model.keys[(scope, key)]
        fields = {k: v for k, v in dump.items() if v is not None}
        if "amount" in fields:
            fields["amount"] = spell(fields["amount"], how)
        request = validate(OPERATIONS[op], fields)
        reply = self.backend.run(run_one(self.operations, OPERATIONS[op], request, Idempotency(scope, key)))
        assert reply.replayed
        assert (reply.status, reply.body) == (first.status, first.body)

    @precondition(lambda self: self.model.keys)
    @rule(data=st.data(), other_op=st.sampled_from(sorted(OPERATIONS)))
    def reuse_key(self, data: st.DataObject, other_op: str) -> None:
        """The key with another request (another operation, or another amount): refused, nothing changes."""
        (scope, key) = data.draw(st.sampled_from(sorted(self.model.keys)))
        op, dump, _ = self.model.keys[(scope, key)]
        if other_op == op and "amount" in dump:
            fields = {k: v for k, v in dump.items() if v is not None}
            fields["amount"] = format_kopecks(dump["amount"] + 1)
        elif other_op == op:
            fields = {**dump, "comment": "another"}
        else:
            fields = {"user_id": 1, "amount": "1.00"} if other_op in ("deposit", "withdrawal") else None
            if other_op == "transfer":
                fields = {"from_user_id": 1, "to_user_id": 2, "amount": "1.00"}
            elif fields is None:
                fields = {"user_id": 1, "service_id": 1, "order_id": 1}
                if other_op != "cancel":
                    fields["amount"] = "1.00"
        request = validate(OPERATIONS[other_op], fields)
        with pytest.raises(ApiError) as refused:
            self.backend.run(run_one(self.operations, OPERATIONS[other_op], request, Idempotency(scope, key)))
        assert refused.value.code == "idempotency_key_reused"

    @rule(user=users, ref=refs)
    def read_balance_and_reservation(self, user: int, ref: tuple[int, int, int]) -> None:
        """The reads GET /v1/users/{id}/balance and GET /v1/reservations answer from."""
        balance = self.backend.run(self.ledger.balance(user))
        account = self.model.accounts.get(user)
        assert balance == (tuple(account) if account is not None else None)
        raw = self.backend.run(self.ledger.reservation(*ref))
        resv = self.model.reservations.get(ref)
        assert (raw is None) == (resv is None)
        if raw is not None and resv is not None:
            # a reservation past its deadline is never shown reserved, released or not
            assert (int(raw["amount"]), raw["status"]) == (resv.amount, self.model.shown(resv))
            assert int(raw["expires_at"]) == resv.expires_at

    @rule(case=st.sampled_from(INVALID))
    def invalid_request(self, case: tuple[str, Any]) -> None:
        op, data = case
        with pytest.raises(ApiError) as refused:
            validate(OPERATIONS[op], parse_json_object(data) if isinstance(data, bytes) else data)
        assert refused.value.code in ("validation_error", "invalid_json")

    # ---- after every step -------------------------------------------------------------------

    @invariant()
    def store_matches_model(self) -> None:
        keys = self.ledger.keys
        all_refs = [(u, s, o) for u in USERS for s in SERVICES for o in ORDERS]

        async def read() -> list[Any]:
            pipe = self.backend.redis.pipeline(transaction=True)
            for user in USERS:
                pipe.hmget(keys.account(user), "available", "reserved")
            for ref in all_refs:
                pipe.hgetall(keys.reservation(*ref))
            for ref in all_refs:
                pipe.ttl(keys.reservation(*ref))
            for partition in keys.all():
                pipe.zrange(keys.expiry(partition), 0, -1, withscores=True)
            for partition in keys.all():
                pipe.hgetall(keys.totals(partition))
                pipe.xlen(keys.outbox(partition))
            return await pipe.execute()

        answers = self.backend.run(read())
        count = len(USERS) + len(all_refs)
        accounts, reservations = answers[: len(USERS)], answers[len(USERS) : count]
        ttls = answers[count : count + len(all_refs)]
        indexes = answers[count + len(all_refs) : count + len(all_refs) + PARTITIONS]
        count += len(all_refs) + PARTITIONS
        totals: dict[bytes, int] = {}
        for raw in answers[count::2]:
            for k, v in raw.items():
                totals[k] = totals.get(k, 0) + int(v)
        outbox_length = sum(answers[count + 1 :: 2])
        for user, (available, reserved) in zip(USERS, accounts, strict=True):
            got = None if available is None else [int(available), int(reserved or 0)]
            assert got == self.model.accounts.get(user), (user, got, self.model.accounts)
            assert got is None or min(got) >= 0
        for ref, raw in zip(all_refs, reservations, strict=True):
            resv = self.model.reservations.get(ref)
            if resv is None:
                assert raw == {}, (ref, raw)
                continue
            h = {k.decode(): v.decode() for k, v in raw.items()}
            assert (int(h["amount"]), h["status"]) == (resv.amount, resv.status), (ref, h)
            assert int(h["expires_at"]) == resv.expires_at
            # a closed reservation's record expires, an open one's never does
            assert (ttls[all_refs.index(ref)] > 0) == (resv.status != "reserved"), (ref, h)
            assert h.get("recognized_amount") == (str(resv.recognized) if resv.recognized is not None else None)
            assert int(h.get("refunded_amount", 0)) == resv.refunded
        got_totals = {k.decode(): int(v) for k, v in totals.items()}
        m = self.model
        expected = {"deposited": m.deposited, "withdrawn": m.withdrawn, "revenue": m.revenue, "refunded": m.refunded}
        assert {k: got_totals.get(k, 0) for k in expected} == expected
        assert outbox_length == m.movements
        # the expiry indexes hold exactly the reservations still reserved, scored by their deadlines
        indexed = {(member.decode(), int(score)) for index in indexes for member, score in index}
        open_ = {(f"{u}:{s}:{o}", r.expires_at) for (u, s, o), r in m.reservations.items() if r.status == "reserved"}
        assert indexed == open_
        held = sum(sum(account) for account in m.accounts.values())
        assert held + m.revenue + m.withdrawn == m.deposited + m.refunded


@pytest.fixture
def backend(redis_backend: str, request: pytest.FixtureRequest) -> Any:
    loop = asyncio.new_event_loop()
    if redis_backend == "fakeredis":
        client: Redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    else:
        client = Redis.from_url(request.getfixturevalue("redis_server").url)
    yield Backend(loop, client)
    loop.run_until_complete(client.aclose())
    loop.close()


def test_service_agrees_with_the_model(backend: Backend) -> None:
    machine = type("Machine", (LedgerMachine,), {"backend": backend})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
