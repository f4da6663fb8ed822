"""Sentences a user reads in their history: why money came and went, in Russian or English."""

from __future__ import annotations

from typing import Any

from billing.core.money import format_kopecks
from billing.core.parsing import accept_language

SUPPORTED_LANGUAGES = ("ru", "en")
DEFAULT_LANGUAGE = "ru"

_TEMPLATES = {
    "ru": {
        "deposit": "Пополнение баланса на {amount} ₽",
        "withdrawal": "Вывод {amount} ₽ с баланса",
        "transfer_out": "Перевод {amount} ₽ пользователю {counterparty}",
        "transfer_in": "Перевод {amount} ₽ от пользователя {counterparty}",
        "reserve": "Резервирование {amount} ₽ для оплаты услуги {service}, заказ {order}",
        "charge": "Списание {amount} ₽ за услугу {service}, заказ {order}",
        "release": "Возврат {amount} ₽ из резерва: услуга {service}, заказ {order}",
        "service_named": "«{name}»",
        "service_unnamed": "№{id}",
    },
    "en": {
        "deposit": "Deposit of {amount} RUB",
        "withdrawal": "Withdrawal of {amount} RUB",
        "transfer_out": "Transfer of {amount} RUB to user {counterparty}",
        "transfer_in": "Transfer of {amount} RUB from user {counterparty}",
        "reserve": "{amount} RUB reserved to pay for service {service}, order {order}",
        "charge": "Charge of {amount} RUB for service {service}, order {order}",
        "release": "{amount} RUB returned from a reservation: service {service}, order {order}",
        "service_named": "“{name}”",
        "service_unnamed": "#{id}",
    },
}


def negotiate_language(header: str | None) -> str:
    """Pick ru or en from an Accept-Language header by quality (q=0: not that one); Russian by default."""
    return accept_language(header, SUPPORTED_LANGUAGES, DEFAULT_LANGUAGE)


def describe(txn_type: str, amount: int, lang: str, refs: dict[str, Any]) -> str:
    """One sentence for a transaction; refs may hold service_id, service_name, order_id, counterparty_user_id."""
    templates = _TEMPLATES.get(lang, _TEMPLATES[DEFAULT_LANGUAGE])
    service = ""
    if refs.get("service_id") is not None:
        name = refs.get("service_name")
        service = (
            templates["service_named"].format(name=name)
            if name
            else templates["service_unnamed"].format(id=refs["service_id"])
        )
    return templates[txn_type].format(
        amount=format_kopecks(amount),
        counterparty=refs.get("counterparty_user_id"),
        service=service,
        order=refs.get("order_id"),
    )
