"""Which failures are retried, which isolate bad events, which stop the worker."""

from __future__ import annotations

import ssl

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError

from worker.faults import Fault, classify, sqlstate_of


def wrapped(error: BaseException) -> DBAPIError:
    """The error as SQLAlchemy's asyncpg dialect raises it."""
    try:
        try:
            raise error
        except BaseException as cause:
            raise DBAPIError("INSERT ...", {}, cause) from cause
    except DBAPIError as dbapi_error:
        return dbapi_error


@pytest.mark.parametrize(
    ("error", "fault"),
    [
        (asyncpg.SerializationError("could not serialize"), Fault.TRANSIENT),
        (asyncpg.DeadlockDetectedError("deadlock detected"), Fault.TRANSIENT),
        (asyncpg.AdminShutdownError("terminating connection"), Fault.TRANSIENT),
        (asyncpg.CannotConnectNowError("the database system is starting up"), Fault.TRANSIENT),
        (asyncpg.TooManyConnectionsError("too many clients"), Fault.TRANSIENT),
        (asyncpg.QueryCanceledError("statement timeout"), Fault.TRANSIENT),
        (asyncpg.ConnectionDoesNotExistError("connection was closed"), Fault.TRANSIENT),
        (ConnectionRefusedError(111, "refused"), Fault.TRANSIENT),
        (ConnectionResetError(104, "reset"), Fault.TRANSIENT),
        (TimeoutError(), Fault.TRANSIENT),
        (asyncpg.CheckViolationError("violates check constraint"), Fault.DATA),
        (asyncpg.ForeignKeyViolationError("violates foreign key"), Fault.DATA),
        (asyncpg.UntranslatableCharacterError("\\u0000 cannot be converted"), Fault.DATA),
        (asyncpg.StringDataRightTruncationError("value too long"), Fault.DATA),
        (asyncpg.UndefinedTableError('relation "messages" does not exist'), Fault.FATAL),
        (asyncpg.InsufficientPrivilegeError("permission denied"), Fault.FATAL),
        (asyncpg.InvalidPasswordError("password authentication failed"), Fault.FATAL),
        (asyncpg.PostgresSyntaxError("syntax error"), Fault.FATAL),
        (RuntimeError("a bug of ours"), Fault.FATAL),
        (asyncpg.ProtocolViolationError("bind message supplies 2 parameters"), Fault.FATAL),
        (ssl.SSLCertVerificationError("certificate verify failed"), Fault.FATAL),
        (asyncpg.ReadOnlySQLTransactionError("read-only transaction"), Fault.TRANSIENT),
        (asyncpg.DiskFullError("no space left"), Fault.TRANSIENT),
    ],
)
def test_errors_are_classified_bare_and_as_sqlalchemy_wraps_them(
    error: BaseException, fault: Fault
) -> None:
    assert classify(error) is fault
    assert classify(wrapped(error)) is fault


def test_the_sqlstate_is_found_through_sqlalchemy() -> None:
    assert sqlstate_of(wrapped(asyncpg.DeadlockDetectedError("x"))) == "40P01"
    assert sqlstate_of(RuntimeError("no state")) is None


def test_an_invalidated_connection_is_transient() -> None:
    error = DBAPIError(
        "SELECT 1", {}, Exception("connection is closed"), connection_invalidated=True
    )
    assert classify(error) is Fault.TRANSIENT
