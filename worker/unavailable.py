"""The one error a command raises when a server or a port it needs cannot be used.

It is raised where the connection or the listening socket is opened, which is
the only place that knows which service it was, and it carries that name:
``cli.main`` prints it and exits with its code, guessing nothing.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import AsyncIterator, Iterator

import aio_pika
import aiormq
import asyncpg
import sqlalchemy.exc
import yarl
from aio_pika.abc import AbstractConnection
from sqlalchemy.engine import URL

from contracts.brokers import BrokerNodes, BrokerURLError, parse_nodes
from contracts.history.url import servers
from worker import exits


class ServiceUnavailableError(Exception):
    """``service`` (named as the operator configures it) cannot be used, because ``reason``.

    ``exit_code`` is :data:`exits.USAGE` when the configuration must change
    (a port taken, a vhost that does not exist), else :data:`exits.FAILURE`.
    """

    def __init__(self, service: str, reason: str, *, exit_code: int = exits.FAILURE) -> None:
        super().__init__(f"cannot use {service}: {reason}")
        self.service = service
        self.reason = reason
        self.exit_code = exit_code


def short(error: BaseException) -> str:
    """The first line of an error, or its type's name when it has no message."""
    lines = str(error).splitlines()
    return lines[0][:300] if lines and lines[0] else type(error).__name__


def describe(error: BaseException) -> str:
    """The error's type and first line, for a log field or a last-resort message."""
    return f"{type(error).__name__}: {short(error)}"


def postgres_at(url: URL) -> str:
    """How an operator knows the database: every host it names, never its password."""
    try:
        hosts = servers(url)
    except ValueError:  # not a URL the settings would accept: name what it holds
        hosts = [(url.host or "localhost", url.port or 5432)]
    shown = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in hosts)  # [IPv6]
    return f"PostgreSQL at {shown}/{url.database}"


def rabbitmq_at(amqp_url: str) -> str:
    """How an operator knows the broker: each node's host and port, and the vhost;
    never credentials. Parsed the client's way (:mod:`contracts.brokers`), so the
    name shown is the server contacted, and a password holding "@" or ":" is never
    taken for the host."""
    try:
        nodes = parse_nodes(amqp_url)
    except BrokerURLError:
        return "RabbitMQ (CHATSTORE_AMQP_URL)"
    vhost = nodes[0].vhost
    return f"RabbitMQ at {', '.join(n.address for n in nodes)}/{'' if vhost == '/' else vhost}"


# Failures of a PostgreSQL connection or statement, as asyncpg raises them
# directly and as SQLAlchemy wraps them.
_POSTGRES_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    sqlalchemy.exc.DBAPIError,
)


@contextlib.contextmanager
def using_postgres(url: URL) -> Iterator[None]:
    """Inside it, a failure to reach or use PostgreSQL at ``url`` is named as such."""
    try:
        yield
    except _POSTGRES_ERRORS as error:
        raise ServiceUnavailableError(postgres_at(url), short(error)) from error


def http_port_unusable(host: str, port: int, error: OSError) -> ServiceUnavailableError:
    """The error for a health port that cannot be listened on: a configuration problem."""
    service = f"the HTTP port {port} (CHATSTORE_HTTP_PORT)"
    if error.errno == errno.EADDRINUSE:
        reason = (
            "it is in use, perhaps by another chatstore worker on this host; set "
            "CHATSTORE_HTTP_PORT to a free port, or to 0 to turn /metrics, /healthz "
            "and /readyz off"
        )
    else:
        reason = (
            f"cannot listen on {host}:{port} ({short(error)}); check CHATSTORE_HTTP_HOST "
            "and CHATSTORE_HTTP_PORT, or set CHATSTORE_HTTP_PORT=0 to turn them off"
        )
    return ServiceUnavailableError(service, reason, exit_code=exits.USAGE)


def vhost_refused(amqp_url: str, error: BaseException) -> ServiceUnavailableError | None:
    """The configuration error behind ``error`` if the broker refused the vhost, else None."""
    # RabbitMQ answers Connection.Open for a vhost that does not exist, or that
    # the user may not open, with Connection.Close (530 NOT_ALLOWED). aiormq
    # reports that as an unexpected frame, without the broker's reply text.
    refused = isinstance(error, aiormq.exceptions.InvalidFrameError) and (
        "Connection.OpenOk" in str(error) and "Connection.Close" in str(error)
    )
    if not refused:
        return None
    try:
        node = parse_nodes(amqp_url)[0]
    except BrokerURLError:
        return None
    user, vhost = yarl.URL(node.url).user or "guest", node.vhost
    return ServiceUnavailableError(
        rabbitmq_at(amqp_url),
        f"the broker refused to open the vhost {vhost!r} for the user {user!r}: it does "
        "not exist, the user may not open it, or it is at its connection limit; check "
        "the vhost in CHATSTORE_AMQP_URL (rabbitmqctl list_vhosts, list_user_permissions)",
        exit_code=exits.USAGE,
    )


async def connect_rabbitmq(amqp_url: str, *, timeout_s: float = 30) -> AbstractConnection:
    """A connection to the broker, or a :class:`ServiceUnavailableError` naming it.

    ``amqp_url`` may list a cluster's nodes: each is tried once, in this
    process's order (:class:`contracts.brokers.BrokerNodes`), until one
    answers. A vhost that cannot be opened is configuration (exit 2). A
    refused login and a broker that cannot be reached are failures (exit 1),
    as they are for ``chatstore worker``.
    """
    nodes = BrokerNodes(amqp_url)
    failures: list[tuple[str, BaseException]] = []
    refusals: list[str] = []  # nodes that refused the vhost
    for _ in range(len(nodes)):
        node = nodes.next()
        try:
            return await aio_pika.connect(node.url, timeout=timeout_s)
        except aiormq.exceptions.ProbableAuthenticationError as error:
            raise ServiceUnavailableError(
                rabbitmq_at(node.url),
                f"the broker refused the login ({short(error)}); check the user and password "
                "in CHATSTORE_AMQP_URL",
            ) from error
        except (aiormq.exceptions.AMQPError, OSError, TimeoutError) as error:
            refused = vhost_refused(node.url, error)
            if refused is not None and len(refusals) + 1 == len(nodes):
                raise refused from error  # every node refused: configuration
            if refused is not None:
                refusals.append(node.address)
            failures.append((node.address, error))
    if len(failures) == 1:
        raise ServiceUnavailableError(rabbitmq_at(amqp_url), short(failures[0][1]))
    reasons = "; ".join(f"{address}: {short(error)}" for address, error in failures)
    raise ServiceUnavailableError(rabbitmq_at(amqp_url), f"no node answered ({reasons})")


@contextlib.asynccontextmanager
async def rabbitmq_connection(amqp_url: str) -> AsyncIterator[AbstractConnection]:
    """A connection from :func:`connect_rabbitmq`, closed on exit; inside the block, a
    broker that fails or refuses an operation is named as such too.

    That covers a queue that is not there (no worker has declared it yet), a
    channel closed under us, and a connection lost midway.
    """
    connection = await connect_rabbitmq(amqp_url)
    try:
        async with connection:
            yield connection
    except (aiormq.exceptions.AMQPError, OSError, TimeoutError) as error:
        raise ServiceUnavailableError(rabbitmq_at(amqp_url), short(error)) from error
