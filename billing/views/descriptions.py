"""Sentences a user reads in their history: why money came and went, in Russian or English."""

from __future__ import annotations

from typing import Any

from billing.core.parsing import accept_language
from billing.core.transactions import TransactionType

SUPPORTED_LANGUAGES = ("ru", "en")
# The sentence of a release whose reason is "expired" (lua/expire.lua: a reservation past its deadline)
EXPIRED_RELEASE = "release:expired"
DEFAULT_LANGUAGE = "ru"
# (a plain string: reading an enum member costs a call, and a batch describes a transaction per operation)
_RELEASE = TransactionType.RELEASE.value

_TEMPLATES: dict[str, dict[str, str]] = {
    "ru": {
        TransactionType.DEPOSIT: "Пополнение баланса на {amount} ₽",
        TransactionType.WITHDRAWAL: "Вывод {amount} ₽ с баланса",
        TransactionType.TRANSFER_OUT: "Перевод {amount} ₽ пользователю {counterparty}",
        TransactionType.TRANSFER_IN: "Перевод {amount} ₽ от пользователя {counterparty}",
        TransactionType.TRANSFER_REVERSAL: "Возврат перевода {amount} ₽ пользователю {counterparty}: "
        "получатель не может его принять",
        TransactionType.RESERVE: "Резервирование {amount} ₽ для оплаты услуги {service}, заказ {order}",
        TransactionType.CHARGE: "Списание {amount} ₽ за услугу {service}, заказ {order}",
        TransactionType.RELEASE: "Возврат {amount} ₽ из резерва: услуга {service}, заказ {order}",
        TransactionType.REFUND: "Возврат {amount} ₽ за услугу {service}, заказ {order}",
        EXPIRED_RELEASE: "Возврат {amount} ₽ из резерва: истёк срок резерва, услуга {service}, заказ {order}",
        "service_named": "«{name}»",
        "service_unnamed": "№{id}",
    },
    "en": {
        TransactionType.DEPOSIT: "Deposit of {amount} RUB",
        TransactionType.WITHDRAWAL: "Withdrawal of {amount} RUB",
        TransactionType.TRANSFER_OUT: "Transfer of {amount} RUB to user {counterparty}",
        TransactionType.TRANSFER_IN: "Transfer of {amount} RUB from user {counterparty}",
        TransactionType.TRANSFER_REVERSAL: "Transfer of {amount} RUB to user {counterparty} returned: "
        "the recipient cannot take it",
        TransactionType.RESERVE: "{amount} RUB reserved to pay for service {service}, order {order}",
        TransactionType.CHARGE: "Charge of {amount} RUB for service {service}, order {order}",
        TransactionType.RELEASE: "{amount} RUB returned from a reservation: service {service}, order {order}",
        TransactionType.REFUND: "Refund of {amount} RUB for service {service}, order {order}",
        EXPIRED_RELEASE: "{amount} RUB returned from a reservation that expired: service {service}, order {order}",
        "service_named": "“{name}”",
        "service_unnamed": "#{id}",
    },
}


def negotiate_language(header: str | None) -> str:
    """Pick ru or en from an Accept-Language header by quality (q=0: not that one); Russian by default."""
    return accept_language(header, SUPPORTED_LANGUAGES, DEFAULT_LANGUAGE)


def describe(txn_type: str, amount: str, lang: str, refs: dict[str, Any]) -> str:
    """One sentence for a transaction of amount (format_kopecks); refs may hold service_id, service_name, order_id,
    counterparty_user_id and reason."""
    templates = _TEMPLATES.get(lang) or _TEMPLATES[DEFAULT_LANGUAGE]
    if txn_type == _RELEASE and refs.get("reason") == "expired":
        txn_type = EXPIRED_RELEASE
    service = ""
    service_id = refs.get("service_id")
    if service_id is not None:
        name = refs.get("service_name")
        service = (
            templates["service_named"].format(name=name) if name else templates["service_unnamed"].format(id=service_id)
        )
    return templates[txn_type].format(
        amount=amount, counterparty=refs.get("counterparty_user_id"), service=service, order=refs.get("order_id")
    )
