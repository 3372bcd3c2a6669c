"""The project's tasks (``shared_task``: they run on whichever app is current)."""

import logging

from celery import shared_task

logger = logging.getLogger(__name__)


class PaymentDeclined(Exception):
    pass


@shared_task(name="shop.charge")
def charge(order_id: int, amount: int, password: str | None = None) -> dict:
    logger.info("charging order %s", order_id, extra={"amount": amount})
    if amount <= 0:
        raise PaymentDeclined(f"amount must be positive, got {amount}")
    return {"order_id": order_id, "charged": amount}
