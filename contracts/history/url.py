"""One reading of a PostgreSQL URL for asyncpg, a list of hosts included.

libpq, managed databases and operators write several servers as a host list
in the URL, the first writable one to be used::

    postgresql://app@db1:5432,db2:5433/chatstore?target_session_attrs=read-write

SQLAlchemy's asyncpg dialect cannot read that form (the port would be
``5432,db2:5433``); it takes the servers as repeated ``host`` parameters
instead, every one with its port, and hands them to asyncpg as lists::

    postgresql+asyncpg://app@/chatstore?host=db1:5432&host=db2:5433&target_session_attrs=read-write

:func:`asyncpg_url` turns the first form into the second; the worker's
settings and :func:`~contracts.history.reader_engine` both go through it, so
the two read one URL the same way. ``target_session_attrs`` reaches
``asyncpg.connect``, which tries the hosts in order and keeps the first that
matches it.
"""

from __future__ import annotations

import re
from typing import Any, Final

from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

ASYNCPG: Final = "postgresql+asyncpg"
PLAIN_SCHEMES: Final = frozenset({"postgresql", "postgres", ASYNCPG})
DEFAULT_PORT: Final = 5432
TARGET_SESSION_ATTRS: Final = (
    "any",
    "primary",
    "standby",
    "prefer-standby",
    "read-write",
    "read-only",
)
"""The values asyncpg accepts (its ``SessionAttribute``), libpq's names."""

# The parts of a URL as SQLAlchemy's make_url splits them: the scheme and the
# optional user and password (a password runs to the "@"), then the host part
# up to the first "/", "?" or "#", then the rest.
_PARTS: Final = re.compile(
    r"(?P<head>[\w+]+://(?:[^:/]*(?::[^@]*)?@)?)(?P<hosts>[^/?#]*)(?P<tail>.*)", re.DOTALL
)
_HOST: Final = re.compile(r"[^\s\[\]@:/?#,]+")
# The dialect class, typed loosely: SQLAlchemy leaves its methods untyped.
_DIALECT: Final[Any] = PGDialect_asyncpg


class DatabaseURLError(ValueError):
    """A database URL that cannot be used; the message never holds the URL."""


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65_536:
        raise DatabaseURLError("has a port that is not a number from 1 to 65535")
    return int(text)


def _host_list(hosts: str) -> list[tuple[str, int]]:
    """``h1:5432,h2`` as ``[("h1", 5432), ("h2", 5432)]``."""
    servers = []
    for item in hosts.split(","):
        host, _, port = item.partition(":")
        if item.startswith("["):
            # SQLAlchemy splits each host=... at ":", which an IPv6 address breaks.
            raise DatabaseURLError("lists an IPv6 address; a list of hosts takes names or IPv4")
        if not _HOST.fullmatch(host):
            raise DatabaseURLError("has an empty or malformed host in its list of hosts")
        servers.append((host, _port(port) if port else DEFAULT_PORT))
    return servers


def _check_target_session_attrs(url: URL) -> None:
    value = url.query.get("target_session_attrs")
    if value is not None and value not in TARGET_SESSION_ATTRS:
        # A tuple (the parameter given twice) is refused here too.
        raise DatabaseURLError(
            f"target_session_attrs must be one of {', '.join(TARGET_SESSION_ATTRS)}"
        )


def asyncpg_url(url: str | URL) -> URL:
    """``url`` with the asyncpg driver; a libpq host list becomes ``host`` parameters.

    A host without a port gets 5432, as in libpq. Raises
    :class:`DatabaseURLError` (a ``ValueError``) for a URL that is not a
    PostgreSQL one, a malformed host list, or a ``target_session_attrs``
    asyncpg does not know.
    """
    if isinstance(url, URL):
        parsed = url
    else:
        parts = _PARTS.fullmatch(url)
        if parts is not None and "," in parts["hosts"]:
            servers = _host_list(parts["hosts"])
            parsed = _parse(parts["head"] + parts["tail"])
            if "host" in parsed.query or "port" in parsed.query:
                raise DatabaseURLError(
                    "gives hosts twice: in the list after '@' and as host= or port= parameters"
                )
            parsed = parsed.update_query_pairs(
                [("host", f"{host}:{port}") for host, port in servers], append=True
            )
        else:
            parsed = _parse(url)
    if parsed.drivername not in PLAIN_SCHEMES:
        raise DatabaseURLError(f"must start with postgresql://, not {parsed.drivername}://")
    _check_target_session_attrs(parsed)
    return parsed.set(drivername=ASYNCPG)


def written_parameters(url: str) -> set[str]:
    """The names of the query parameters as ``url`` writes them (not the ``host``
    parameters its list of hosts becomes), read as SQLAlchemy reads the URL: a
    password holding "?" or "#" stays a password."""
    parts = _PARTS.fullmatch(url)
    text = parts["head"] + parts["tail"] if parts is not None and "," in parts["hosts"] else url
    return set(_parse(text).query)


def _parse(text: str) -> URL:
    try:
        return make_url(text)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise DatabaseURLError("is not a URL like postgresql://user@host:5432/dbname") from None


def connect_kwargs(url: URL) -> dict[str, Any]:
    """The keyword arguments SQLAlchemy's asyncpg dialect gives ``asyncpg.connect`` for
    ``url``: for code that connects with asyncpg itself and must reach the same server."""
    _, kwargs = _DIALECT().create_connect_args(asyncpg_url(url))
    return dict(kwargs)


def servers(url: URL) -> list[tuple[str, int]]:
    """Host and port of every server ``url`` names, in the order they are tried."""
    kwargs = connect_kwargs(url)
    hosts: Any = kwargs.get("host") or "localhost"
    ports: Any = kwargs.get("port") or DEFAULT_PORT
    if isinstance(hosts, list):
        return [(str(host), int(port)) for host, port in zip(hosts, ports, strict=True)]
    return [(str(hosts), int(ports))]
