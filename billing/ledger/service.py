"""The service layer for money movements: validated request -> one ledger script -> its outcome.

HTTP handlers and the batch endpoint both go through here, so an operation behaves the same either way.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson
from pydantic import ValidationError
from redis.exceptions import NoScriptError

from billing.core.errors import ApiError, validation_errors
from billing.core.schemas import (
    CancelRequest,
    DepositRequest,
    RecognizeRequest,
    RefundRequest,
    Request,
    ReserveRequest,
    TransferRequest,
    WithdrawalRequest,
)
from billing.ledger.outcomes import BatchResult, InTransit, KeyReused, NotRun, Outcome, Refused
from billing.ledger.scripts import (
    BATCH_CHUNK,
    DEBIT,
    BatchOperationFailed,
    Idempotency,
    IdempotencyKeyReused,
    Ledger,
    decode_batch_reply,
    fingerprint,
    recorded_fingerprint,
)
from billing.ledger.unavailable import store_unavailable

log = logging.getLogger("billing.ledger.service")

ScriptCall = tuple[str, list[str], list[Any]]


@dataclass(frozen=True)
class OperationSpec:
    """One money operation: its request model and how it becomes a script call (its HTTP route and who may
    call it are the API's: billing/api/routes.py)."""

    name: str
    # How idempotency records name the operation in their fingerprints: fixed text, not the route, since the
    # records outlive a deploy (BILLING_IDEMPOTENCY_TTL_SECONDS) and a route may move.
    recorded_as: str
    model: type[Request]
    to_call: Callable[[Ledger, Any], ScriptCall]


OPERATIONS: dict[str, OperationSpec] = {
    spec.name: spec
    for spec in (
        OperationSpec(
            "deposit",
            "POST /v1/deposits",
            DepositRequest,
            lambda ledger, r: ledger.deposit_call(r.user_id, r.amount, r.comment),
        ),
        OperationSpec(
            "withdrawal",
            "POST /v1/withdrawals",
            WithdrawalRequest,
            lambda ledger, r: ledger.withdraw_call(r.user_id, r.amount, r.comment),
        ),
        OperationSpec(
            "transfer",
            "POST /v1/transfers",
            TransferRequest,
            lambda ledger, r: ledger.transfer_call(r.from_user_id, r.to_user_id, r.amount, r.comment),
        ),
        OperationSpec(
            "reserve",
            "POST /v1/reservations",
            ReserveRequest,
            lambda ledger, r: ledger.reserve_call(
                r.user_id, r.service_id, r.order_id, r.amount, r.service_name, r.comment, r.expires_in
            ),
        ),
        OperationSpec(
            "recognize",
            "POST /v1/reservations/recognize",
            RecognizeRequest,
            lambda ledger, r: ledger.recognize_call(r.user_id, r.service_id, r.order_id, r.amount),
        ),
        OperationSpec(
            "cancel",
            "POST /v1/reservations/cancel",
            CancelRequest,
            lambda ledger, r: ledger.cancel_call(r.user_id, r.service_id, r.order_id, r.comment),
        ),
        OperationSpec(
            "refund",
            "POST /v1/refunds",
            RefundRequest,
            lambda ledger, r: ledger.refund_call(r.user_id, r.service_id, r.order_id, r.amount, r.comment),
        ),
    )
}


def validate(spec: OperationSpec, data: Any) -> Request:
    try:
        # The model's validator (a documented class attribute) itself: what model_validate() calls after checking
        # its keyword arguments, a cost per operation of a batch.
        request: Request = spec.model.__pydantic_validator__.validate_python(data)
        return request
    except ValidationError as exc:
        raise ApiError("validation_error", "Request is not valid", validation_errors(exc)) from None


def request_fingerprint(spec: OperationSpec, request: Request) -> str:
    """Same operation and same validated fields give the same fingerprint, whichever way they were sent.

    The canonical form is the sorted JSON of the validated fields (a later field left out while absent: see
    Request.LATER_FIELDS). Request models are flat (ints, strings,
    None), so their __dict__ is exactly model_dump(), without its cost (tests/unit/test_fast_paths.py).
    """
    fields = request.__dict__
    if request.LATER_FIELDS and any(fields[name] is None for name in request.LATER_FIELDS):
        fields = {k: v for k, v in fields.items() if not (v is None and k in request.LATER_FIELDS)}
    return fingerprint(spec.recorded_as, orjson.dumps(fields, option=orjson.OPT_SORT_KEYS))


def batch_runs(touched: Sequence[frozenset[int]], shared: Sequence[frozenset[Hashable]]) -> list[list[int]]:
    """The script runs of a batch, as lists of item indexes, given the partitions each item touches and what
    it may write that items of other partitions see (its Idempotency-Key's record or pointer at the key's
    home, a service's name).

    A run is of one partition (its items in their order, at most BATCH_CHUNK), and the runs are sent in one
    pipeline, which Redis executes in order. Items are gathered per partition into segments in which items
    of different partitions cannot see each other: none touches two partitions, and nothing shared is
    written from two of them. So the order of a segment's runs does not matter. An item that
    would break this starts a new segment, and one touching two partitions (a transfer between them) runs
    alone: the batch gives every item exactly the state it would see if the items ran one by one.
    """
    runs: list[list[int]] = []
    segment: dict[int, list[int]] = {}
    owners: dict[Hashable, int] = {}  # something shared -> the partition whose items use it in the segment

    def flush() -> None:
        for indexes in segment.values():
            runs.extend(indexes[start : start + BATCH_CHUNK] for start in range(0, len(indexes), BATCH_CHUNK))
        segment.clear()
        owners.clear()

    for index, (partitions, keys) in enumerate(zip(touched, shared, strict=True)):
        if len(partitions) > 1:
            flush()
            runs.append([index])
            continue
        (partition,) = partitions
        # (loops, not any() over a generator and dict.fromkeys: this runs once per operation of a batch)
        for key in keys:
            if owners.get(key, partition) != partition:
                flush()
                break
        segment.setdefault(partition, []).append(index)
        for key in keys:
            owners[key] = partition
    flush()
    return runs


def _pipelines(runs: list[list[int]], calls: Sequence[tuple[str, Any, Any, Any, Any]]) -> list[list[list[int]]]:
    """The runs cut into pipelines, each ending at a run of a transfer between partitions (batch_runs runs it
    alone), which must be completed before anything after it runs."""
    groups: list[list[list[int]]] = [[]]
    for run in runs:
        groups[-1].append(run)
        if calls[run[0]][0] == DEBIT:
            groups.append([])
    return [group for group in groups if group]


def reached_money(result: BatchResult) -> TypeGuard[Outcome]:
    """Whether the operation reached the money: the ledger decided it, now or when it first ran."""
    return isinstance(result, Outcome)


def result_code(result: BatchResult) -> str | None:
    """The problem code of a result (billing.core.errors.PROBLEMS), None for one that succeeded."""
    if isinstance(result, Refused):
        return result.code
    if isinstance(result, KeyReused):
        return "idempotency_key_reused"
    if isinstance(result, NotRun):
        return "unavailable" if result.retryable else "internal_error"
    return None


class MoneyOperations:
    """Runs money operations on the ledger, one at a time or many in one pipeline."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        # observer(operation, problem code or None, replayed[, count]): metrics of script outcomes
        # (billing/infra/metrics.py); a batch calls it once per distinct outcome with how many had it
        self.observer: Callable[..., None] | None = None
        # Raises ApiError when money writes must be refused now (billing/projection/seq_guard.py); None: never.
        self.write_gate: Callable[[], None] | None = None

    def _observe(self, spec: OperationSpec, outcome: Outcome) -> None:
        if self.observer is not None:
            self.observer(spec.name, result_code(outcome), outcome.replayed)

    async def execute(self, spec: OperationSpec, request: Request, idem: Idempotency | None, lang: str) -> Outcome:
        """Run one operation; lang is recorded with its outcome (under an Idempotency-Key) for its replays."""
        if self.write_gate is not None:
            self.write_gate()
        name, keys, args = spec.to_call(self.ledger, request)
        fp = recorded_fingerprint(request_fingerprint(spec, request), lang) if idem else ""
        try:
            outcome = await self.ledger.run(name, idem, fp, keys, args)
        except IdempotencyKeyReused:
            if self.observer is not None:
                self.observer(spec.name, "idempotency_key_reused", False)
            raise ApiError("idempotency_key_reused", "This Idempotency-Key was used with another request") from None
        self._observe(spec, outcome)
        return outcome

    async def execute_many(
        self, items: Sequence[tuple[OperationSpec, Request, Idempotency | None]], lang: str
    ) -> list[BatchResult]:
        """Each item atomic and idempotent on its own, run by batch script runs (lua/_batch.lua) planned by
        batch_runs(), sent to Redis in one pipeline (a transfer between partitions ends one: its credit and
        settlement come before the runs after it): every operation sees the effects of all the items before
        it, as if they ran one by one. Results come in the items' order."""
        if self.write_gate is not None and items:
            self.write_gate()
        calls = []
        touched: list[frozenset[int]] = []
        shared: list[frozenset[Hashable]] = []
        for spec, request, idem in items:
            name, keys, args = spec.to_call(self.ledger, request)
            fp = recorded_fingerprint(request_fingerprint(spec, request), lang) if idem else ""
            calls.append((name, idem, fp, keys, args))
            touched.append(self.ledger.partitions_of_call(name, args))
            shared.append(self.ledger.shared_keys_of_call(name, idem, args))
        decoded: list[BatchResult | BatchOperationFailed | None] = [None] * len(items)
        claimed = await self.ledger.claim_pointers(calls)
        for index, ok in enumerate(claimed):
            if not ok:
                decoded[index] = KeyReused()
        runs = [kept for run in batch_runs(touched, shared) if (kept := [index for index in run if claimed[index]])]
        for group in _pipelines(runs, calls):
            raw = await self._pipeline([[calls[index] for index in run] for run in group])
            for run, reply in zip(group, raw, strict=True):
                if isinstance(reply, Exception):
                    # The run did not run: its function missing, or Redis refused it for now (retry), or the call.
                    retryable = isinstance(reply, NoScriptError) or store_unavailable(reply)
                    if store_unavailable(reply):
                        log.warning("batch script run of %d operations refused for now: %s", len(run), reply)
                    elif not retryable:
                        log.error("batch script run of %d operations refused, nothing changed: %s", len(run), reply)
                    outcomes: list[BatchResult | InTransit | BatchOperationFailed] = [NotRun(retryable)] * len(run)
                else:
                    outcomes = decode_batch_reply(reply)
                for index, outcome in zip(run, outcomes, strict=True):
                    # A transfer between partitions is completed before the next pipeline runs: the items
                    # after it see its credit, as one by one.
                    if isinstance(outcome, InTransit):
                        outcome = await self.ledger.complete_transfer(outcome, calls[index][1])
                    decoded[index] = outcome
        results: list[BatchResult] = []
        observed: Counter[tuple[str, str | None, bool]] = Counter()
        for (spec, _request, _idem), item in zip(items, decoded, strict=True):
            assert item is not None  # every operation is in one run
            if isinstance(item, BatchOperationFailed):
                # Each operation of a failed run changed nothing (lua/_batch.lua): retry it when Redis refused
                # its writes for now, else the ledger needs a look.
                if not store_unavailable(item):
                    log.error("batch operation %s failed and stopped its run, it changed nothing: %s", spec.name, item)
                result: BatchResult = NotRun(store_unavailable(item))
            else:
                result = item
            observed[spec.name, result_code(result), reached_money(result) and result.replayed] += 1
            results.append(result)
        if self.observer is not None:
            for (name, code, replayed), count in observed.items():
                self.observer(name, code, replayed, count)
        return results

    async def _pipeline(self, chunks: list[list[Any]]) -> list[Any]:
        """One batch run per chunk, all in one write; runs whose function was missing are sent again once."""
        results: list[Any] = [None] * len(chunks)
        pending = list(range(len(chunks)))
        for attempt in range(2):
            commands = [self.ledger.batch_command(chunks[index]) for index in pending]
            answers = await self.ledger.send_batches(commands)
            for index, answer in zip(pending, answers, strict=True):
                results[index] = answer
            # A run whose function was missing (NoScriptError) never ran, so it may be sent again once the library
            # is loaded, but only if no later run of this batch did run (operations keep their order); the others
            # answer 503.
            retry: list[int] = []
            for index in reversed(pending):
                if attempt > 0 or not isinstance(results[index], NoScriptError):
                    break
                retry.insert(0, index)
            if not retry:
                break
            await self.ledger.load_scripts()
            pending = retry
        return results
