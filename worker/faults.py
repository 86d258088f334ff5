"""What a failure means, and so what the worker does about it.

- ``TRANSIENT``: the database or the network is briefly unavailable. Retry the
  same batch, holding its deliveries; nothing is dead-lettered for it.
- ``DATA``: the data of some event made PostgreSQL refuse the batch. Find the
  offending events by splitting the batch; dead-letter only those.
- ``FATAL``: our bug or our configuration (a missing table or privilege, bad
  credentials). Stop loudly, before the queue is drained into the DLQ.
"""

from __future__ import annotations

import ssl
from enum import StrEnum

import asyncpg
from sqlalchemy.exc import DBAPIError

# SQLSTATEs worth waiting out, by exact code or two-character class.
_TRANSIENT_CLASSES = frozenset(
    {
        "08",  # connection exception (but see _FATAL_CODES)
        "53",  # insufficient resources: too many connections, disk full, out of memory
        "58",  # system error: I/O errors on the server
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "40001",  # serialization_failure
        "40003",  # statement_completion_unknown: the commit's outcome is unknown
        "40P01",  # deadlock_detected
        "25006",  # read_only_sql_transaction: a standby, or a server set read-only for a while
        "55P03",  # lock_not_available
        "57P01",  # admin_shutdown: a restart or failover
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now: starting up
        "57014",  # query_canceled: statement_timeout, or a cancelled query
    }
)
# Would never pass by waiting: a misconfigured pooler or protocol bug.
_FATAL_CODES = frozenset({"08P01"})  # protocol_violation
# Caused by the data of an event: integrity (23) and data exceptions (22).
_DATA_CLASSES = frozenset({"22", "23"})


class Fault(StrEnum):
    TRANSIENT = "transient"
    DATA = "data"
    FATAL = "fatal"


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and what it wraps: SQLAlchemy's ``orig``, then ``__cause__``."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = getattr(current, "orig", None) or current.__cause__
    return chain


def sqlstate_of(error: BaseException) -> str | None:
    """The SQLSTATE behind an asyncpg or SQLAlchemy error, if there is one."""
    for link in _chain(error):
        code = getattr(link, "sqlstate", None)
        if isinstance(code, str) and len(code) == 5:
            return code
    return None


def constraint_of(error: BaseException) -> str | None:
    """The name of the constraint PostgreSQL reported as violated, if any."""
    for link in _chain(error):
        name = getattr(link, "constraint_name", None)
        if isinstance(name, str):
            return name
    return None


def classify(error: BaseException) -> Fault:
    """Which of the three kinds of failure ``error`` is; unknown ones are fatal."""
    code = sqlstate_of(error)
    if code is not None:
        if code in _FATAL_CODES:
            return Fault.FATAL
        if code in _TRANSIENT_CODES or code[:2] in _TRANSIENT_CLASSES:
            return Fault.TRANSIENT
        if code[:2] in _DATA_CLASSES:
            return Fault.DATA
        return Fault.FATAL
    for link in _chain(error):
        if isinstance(link, ssl.SSLError):  # an OSError, but a configuration problem
            return Fault.FATAL
        if isinstance(link, DBAPIError) and link.connection_invalidated:
            return Fault.TRANSIENT
        # Refused, reset, timed out, or closed under us.
        if isinstance(link, OSError | TimeoutError | asyncpg.ConnectionDoesNotExistError):
            return Fault.TRANSIENT
        # No host of the URL matches target_session_attrs: mid-failover, the
        # old primary is gone and no standby has been promoted yet.
        if isinstance(link, asyncpg.TargetServerAttributeNotMatched):
            return Fault.TRANSIENT
    return Fault.FATAL
