"""What a retention command does with a database error in the middle of a run.

It does not end the run with one line: the report of what was done so far
is what the operator needs, so the run stops, names the error in its report
(``stop_reason`` ``"error"``, ``last_error``) and the command exits 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import asyncpg
import sqlalchemy.exc

from worker.faults import sqlstate_of
from worker.redact import redact
from worker.unavailable import short

# A PostgreSQL connection's or statement's failures, as asyncpg raises them
# and as SQLAlchemy wraps them (a client timeout, a dropped connection, any
# error the server sent). Our own bugs (a TypeError, say) are not among them.
DATABASE_ERRORS: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    sqlalchemy.exc.DBAPIError,
)


def innermost(error: BaseException) -> BaseException:
    """The driver's own error under SQLAlchemy's wrappers, whose message is the server's."""
    while (inner := getattr(error, "orig", None) or error.__cause__) is not None:
        error = inner
    return error


def one_line(error: BaseException, secrets: Iterable[str]) -> str:
    """``SQLSTATE: message`` (or ``Type: message`` without one), never a password."""
    inner = innermost(error)
    code = sqlstate_of(error)
    head = code if code is not None else type(inner).__name__
    return redact(f"{head}: {short(inner)}", secrets)
