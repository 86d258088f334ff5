"""Publishing refused events to the dead-letter queue, with their reason.

The original body and properties are kept; ``x-chatstore-reason`` and
``x-chatstore-detail`` are added. Every publish is ``mandatory`` and confirmed
by the broker, so a delivery is acknowledged only once its dead letter is safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import aiormq
from pamqp.commands import Basic

from contracts import Rejection
from worker.ingest.delivery import Delivery
from worker.topology import DLQ

REASON_HEADER: Final = "x-chatstore-reason"
DETAIL_HEADER: Final = "x-chatstore-detail"
# When the worker dead-lettered it: lets operators see the oldest and newest.
DEAD_LETTERED_AT_HEADER: Final = "x-chatstore-dead-lettered-at"


class DeadLetterRefusedError(Exception):
    """The broker did not take a dead letter (returned or nacked): do not ack."""


def dead_letter_properties(original: Basic.Properties, rejection: Rejection) -> Basic.Properties:
    """The original properties plus the reason headers.

    ``user_id`` is dropped because the broker checks it against the publishing
    connection's user (the worker is not the chat runtime), and ``expiration``
    because a dead letter must wait for an operator, not expire.
    """
    headers = dict(original.headers or {})
    headers[REASON_HEADER] = rejection.reason.value
    headers[DETAIL_HEADER] = rejection.detail
    headers[DEAD_LETTERED_AT_HEADER] = datetime.now(UTC).isoformat()
    return Basic.Properties(
        content_type=original.content_type,
        content_encoding=original.content_encoding,
        headers=headers,
        delivery_mode=2,  # persistent, whatever the original said
        priority=original.priority,
        correlation_id=original.correlation_id,
        reply_to=original.reply_to,
        message_id=original.message_id,
        timestamp=original.timestamp,
        message_type=original.message_type,
        app_id=original.app_id,
    )


async def publish_dead_letters(
    channel: aiormq.abc.AbstractChannel,
    letters: Sequence[tuple[Delivery, Rejection]],
) -> None:
    """Publish every letter to the DLQ and wait for all the broker's confirms.

    ``channel`` must be in confirm mode. Raises if any letter was not taken.
    """
    results = await asyncio.gather(
        *(
            channel.basic_publish(
                message.body,
                exchange="",  # the default exchange routes by queue name
                routing_key=DLQ,
                properties=dead_letter_properties(message.header.properties, rejection),
                mandatory=True,
            )
            for message, rejection in letters
        ),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, aiormq.exceptions.DeliveryError | asyncio.CancelledError):
            # Nacked by the broker, or its confirm was lost: not safe, do not ack.
            raise DeadLetterRefusedError(f"a dead letter was not confirmed: {result!r}"[:300])
        if isinstance(result, BaseException):
            raise result
        if not isinstance(result, Basic.Ack):  # a Basic.Return: the DLQ is gone
            raise DeadLetterRefusedError(f"the broker returned a dead letter: no queue {DLQ!r}")
