"""A batch counts each of its operations in billing_operations_total, one increment per distinct outcome."""

from __future__ import annotations

from tests.http.test_ops_endpoints import value
from tests.support.api import Api


async def test_every_operation_of_a_batch_is_counted_by_its_outcome(api: Api) -> None:
    operations = [{"op": "deposit", "user_id": 7, "amount": "1.00"} for _ in range(5)]
    operations += [{"op": "withdrawal", "user_id": 8, "amount": "1.00"} for _ in range(3)]  # no account
    operations += [{"op": "deposit", "user_id": 7, "amount": "1.00", "idempotency_key": "k"} for _ in range(2)]
    operations += [{"op": "deposit", "user_id": 7, "amount": "2.00", "idempotency_key": "k"}]
    r = await api.post("/v1/batch", {"operations": operations}, token="tok-payments")
    assert [item["status"] for item in r.json["results"]] == [201] * 5 + [404] * 3 + [201, 201, 422]
    text = (await api.get("/metrics", token=None)).body.decode()
    ops = "billing_operations_total"
    assert value(text, ops, operation="deposit", code="ok", replayed="false") == 6
    assert value(text, ops, operation="deposit", code="ok", replayed="true") == 1
    assert value(text, ops, operation="deposit", code="idempotency_key_reused", replayed="false") == 1
    assert value(text, ops, operation="withdrawal", code="account_not_found", replayed="false") == 3
