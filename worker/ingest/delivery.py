"""A delivery as the consumer receives it: aiormq's message, and its tag."""

from __future__ import annotations

from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

Delivery = DeliveredMessage


def delivery_tag(delivery: Delivery) -> int:
    """The channel-scoped tag that acknowledges ``delivery``."""
    frame = delivery.delivery
    if not isinstance(frame, Basic.Deliver | Basic.GetOk) or frame.delivery_tag is None:
        raise TypeError(f"not a delivery from a consumer: {type(frame).__name__}")
    return frame.delivery_tag
