"""TLS to both servers, and passwords kept out of everything the worker writes.

Neither local server speaks TLS, so each test puts a TLS-terminating proxy of
its own in front of it (PostgreSQL's in-protocol SSLRequest included), with
certificates made for the test by a CA of its own: the client side, the
worker's, is the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import aio_pika
import aiormq
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from tests.events import message_created
from tests.harness import (
    WorkerProcess,
    add_users,
    declare_topology,
    free_port,
    publish,
    queue_has,
    running_worker,
    table_has,
    wait_for,
    worker_environment,
    worker_settings,
)
from tests.services import Services
from worker import topology
from worker.database import create_engine
from worker.redact import RedactSecrets, redact, redact_url, url_password
from worker.settings import Settings

SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


# --- certificates -------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the CA the clients trust
    server_cert: Path  # for DNS:localhost only, signed by ``ca``
    server_key: Path
    stranger_ca: Path  # a CA nobody should trust


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return key, cert


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("tls")
    ca_key, ca = _make_ca(directory, "chatstore-test-ca")
    _, stranger = _make_ca(directory, "stranger-ca")
    key, request, cert = (directory / f"server.{ext}" for ext in ("key", "csr", "pem"))
    extensions = directory / "server.ext"
    extensions.write_text(
        "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n"
        "basicConstraints=critical,CA:FALSE\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(request), "-subj", "/CN=localhost",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extensions),
    )  # fmt: skip
    return Certificates(ca, cert, key, stranger)


# --- TLS-terminating proxies ----------------------------------------------------


@dataclass
class TlsProxy:
    """Terminates TLS on a loopback port and forwards the plain bytes upstream."""

    upstream: tuple[str, int]
    context: ssl.SSLContext
    postgres: bool  # PostgreSQL asks for TLS inside its protocol first
    handshakes: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            if self.postgres:
                if await reader.readexactly(8) != SSL_REQUEST:
                    return  # a client that did not ask for TLS gets nothing
                writer.write(b"S")
                await writer.drain()
                await writer.start_tls(self.context)
            self.handshakes += 1
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
            await asyncio.gather(_pump(reader, upstream_writer), _pump(upstream_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass  # ssl.SSLError included: the client refused our certificate
        finally:
            for stream in (writer, upstream_writer):
                if stream is not None:
                    stream.close()

    def _track(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._handle(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[int]:
        """Listen on localhost (every address it resolves to); yields the port."""
        port = free_port()
        server = await asyncio.start_server(
            self._track, "localhost", port, ssl=None if self.postgres else self.context
        )
        try:
            yield port
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


def _server_context(certificates: Certificates) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.server_cert, certificates.server_key)
    return context


@pytest.fixture
async def postgres_tls_port(
    database_url: URL, certificates: Certificates
) -> AsyncIterator[tuple[int, TlsProxy]]:
    upstream = (database_url.host or "127.0.0.1", database_url.port or 5432)
    proxy = TlsProxy(upstream, _server_context(certificates), postgres=True)
    async with proxy.serving() as port:
        yield port, proxy


@pytest.fixture
async def amqps_url(amqp_url: str, certificates: Certificates) -> AsyncIterator[str]:
    """The test's vhost, over TLS on localhost."""
    parts = urlsplit(amqp_url)
    proxy = TlsProxy(
        (parts.hostname or "127.0.0.1", parts.port or 5672),
        _server_context(certificates),
        postgres=False,
    )
    async with proxy.serving() as port:
        credentials = parts.netloc.rsplit("@", 1)[0]
        yield f"amqps://{credentials}@localhost:{port}{parts.path}"


async def _select_one(settings: Settings) -> None:
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


# --- TLS --------------------------------------------------------------------------


async def test_the_worker_stores_events_over_verified_tls_to_both_servers(
    database_url: URL,
    amqp_url: str,
    amqps_url: str,
    postgres_tls_port: tuple[int, TlsProxy],
    certificates: Certificates,
) -> None:
    port, proxy = postgres_tls_port
    await add_users(database_url, "user-1")
    await declare_topology(amqp_url)
    settings = worker_settings(
        database_url.set(host="localhost", port=port),
        amqps_url,
        database_sslmode="verify-full",
        database_sslrootcert=str(certificates.ca),
        amqp_cafile=str(certificates.ca),
    )
    async with running_worker(settings) as worker:
        await publish(amqp_url, [message_created() for _ in range(5)])
        await wait_for(table_has(database_url, "messages", 5), what="the messages, over TLS")
        assert not worker.done()
    assert worker.result() == 0
    assert proxy.handshakes >= 1


@pytest.mark.parametrize(
    ("host", "sslmode", "trusted", "connects"),
    [
        ("localhost", "verify-full", True, True),
        ("127.0.0.1", "verify-full", True, False),  # the certificate names localhost only
        ("127.0.0.1", "verify-ca", True, True),  # the chain is checked, the name is not
        ("localhost", "verify-full", False, False),  # signed by a CA we do not trust
        ("localhost", "verify-ca", False, False),
        ("localhost", "require", False, True),  # encrypted, unchecked: libpq's meaning
    ],
)
async def test_postgres_sslmodes_check_what_libpq_checks(
    database_url: URL,
    postgres_tls_port: tuple[int, TlsProxy],
    certificates: Certificates,
    host: str,
    sslmode: str,
    trusted: bool,
    connects: bool,
) -> None:
    port, proxy = postgres_tls_port
    settings = worker_settings(
        database_url.set(host=host, port=port),
        "amqp://guest:guest@localhost/",
        database_sslmode=sslmode,
        database_sslrootcert=str(certificates.ca if trusted else certificates.stranger_ca),
    )
    if connects:
        await _select_one(settings)
        assert proxy.handshakes == 1
    else:
        with pytest.raises(ssl.SSLCertVerificationError):
            await _select_one(settings)


async def test_the_libpq_parameters_of_the_url_work_too(
    database_url: URL, postgres_tls_port: tuple[int, TlsProxy], certificates: Certificates
) -> None:
    port, proxy = postgres_tls_port
    url = database_url.set(
        host="localhost",
        port=port,
        query={"sslmode": "verify-full", "sslrootcert": str(certificates.ca)},
    )
    settings = worker_settings(url, "amqp://guest:guest@localhost/")
    assert settings.database_sslmode == "verify-full"
    await _select_one(settings)
    assert proxy.handshakes == 1


@pytest.mark.parametrize(("host", "trusted"), [("127.0.0.1", True), ("localhost", False)])
async def test_amqps_refuses_a_broker_it_cannot_verify(
    amqps_url: str, certificates: Certificates, host: str, trusted: bool
) -> None:
    url = amqps_url.replace("@localhost:", f"@{host}:")
    settings = Settings(
        amqp_url=url, amqp_cafile=str(certificates.ca if trusted else certificates.stranger_ca)
    )
    with pytest.raises(aiormq.exceptions.AMQPConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await aio_pika.connect(settings.amqp_url, timeout=10)


async def test_amqps_connects_to_a_broker_it_can_verify(
    amqps_url: str, certificates: Certificates
) -> None:
    settings = Settings(amqp_url=amqps_url, amqp_cafile=str(certificates.ca))
    connection = await aio_pika.connect(settings.amqp_url, timeout=10)
    await connection.close()


# --- passwords ---------------------------------------------------------------------

PASSWORD = "Pa55-" + uuid.uuid4().hex  # distinctive, so a grep cannot miss it
ENCODED = "p@ss:w/rd%"  # what percent-encoding must also hide


def test_redact_masks_url_passwords_and_known_secrets_in_any_spelling() -> None:
    text = (
        f"postgresql://app:{quote(ENCODED, safe='')}@db:5432/x failed; "
        f"amqps://worker:{PASSWORD}@mq/vhost?cafile=/ca.pem; said {PASSWORD} and {ENCODED}"
    )
    cleaned = redact(text, [PASSWORD, ENCODED])
    assert PASSWORD not in cleaned
    assert ENCODED not in cleaned
    assert quote(ENCODED, safe="") not in cleaned
    assert "postgresql://app:***@db:5432/x" in cleaned
    assert "amqps://worker:***@mq/vhost?cafile=/ca.pem" in cleaned


def test_redact_url_keeps_urls_without_passwords_as_they_are() -> None:
    text = "postgresql://postgres@localhost:5432/chatstore and amqp://mq/ and user:x@host"
    assert redact_url(text) == text
    assert url_password(f"amqp://u:{quote(ENCODED, safe='')}@h/") == ENCODED
    assert url_password("postgresql://u@h/db") is None


def test_the_log_processor_redacts_nested_values_and_exceptions() -> None:
    processor = RedactSecrets([PASSWORD])
    event = processor(
        None,
        "error",
        {
            "event": "x",
            "error": ConnectionError(f"cannot reach amqp://u:{PASSWORD}@h/"),
            "detail": {"urls": [f"postgresql://u:{PASSWORD}@db/x"], "n": 1},
        },
    )
    assert PASSWORD not in repr(event)
    assert event["detail"]["n"] == 1


def test_a_settings_object_shows_no_password() -> None:
    settings = Settings(
        database_url=f"postgresql://app:{PASSWORD}@db/x",
        amqp_url=f"amqps://worker:{PASSWORD}@mq/",
    )
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings)
    assert PASSWORD not in str(settings.sqlalchemy_url)  # SQLAlchemy masks it too
    assert settings.secrets() == [PASSWORD, PASSWORD]


def _run_cli(
    settings: Settings, command: str, timeout_s: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", command],
        env=worker_environment(settings),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_an_unreachable_database_is_reported_without_its_password() -> None:
    settings = Settings(
        database_url=f"postgresql://app:{PASSWORD}@127.0.0.1:{free_port()}/chatstore",
        http_port=0,
    )
    result = _run_cli(settings, "migrate")
    assert result.returncode == 1
    assert "cannot use PostgreSQL at 127.0.0.1" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


async def test_a_refused_broker_login_is_reported_without_the_password(
    database_url: URL, amqp_url: str
) -> None:
    parts = urlsplit(amqp_url)
    wrong = f"amqp://guest:{PASSWORD}@{parts.netloc.rsplit('@', 1)[1]}{parts.path}"
    settings = worker_settings(database_url, wrong)
    result = await asyncio.to_thread(_run_cli, settings, "worker")
    assert result.returncode == 1
    assert "broker.refused" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


@pytest.fixture
async def broker_user_with_password(amqp_url: str, services: Services) -> AsyncIterator[str]:
    """The test's vhost, as a user of its own whose password is PASSWORD."""
    user = f"chatstore-secret-{uuid.uuid4().hex[:10]}"
    parts = urlsplit(amqp_url)
    vhost = parts.path.lstrip("/")
    await services.rabbitmqctl(["add_user", user, PASSWORD])
    try:
        await services.rabbitmqctl(
            ["set_permissions", "-p", vhost.replace("%2F", "/"), user, ".*", ".*", ".*"]
        )
        host = parts.netloc.rsplit("@", 1)[1]
        yield f"amqp://{user}:{PASSWORD}@{host}/{vhost}"
    finally:
        await services.rabbitmqctl(["delete_user", user])


async def _http_get(port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    return response.decode(errors="replace")


async def test_a_working_worker_writes_no_password_in_logs_or_metrics(
    database_url: URL, amqp_url: str, broker_user_with_password: str, tmp_path: Path
) -> None:
    """PostgreSQL (trust) ignores the password, RabbitMQ checks it; neither is written."""
    await add_users(database_url, "user-1")
    await declare_topology(amqp_url)
    port = free_port()
    settings = worker_settings(
        database_url.set(password=PASSWORD),
        broker_user_with_password,
        http_port=port,
        log_level="DEBUG",
    )
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        await publish(amqp_url, [message_created(), b"not json", message_created(user_id="x")])
        await wait_for(table_has(database_url, "messages", 1), what="the message")
        await wait_for(queue_has(amqp_url, topology.DLQ, 2), what="the dead letters")
        metrics = await _http_get(port, "/metrics")
        worker.send(signal.SIGTERM)
        assert await worker.wait() == 0
    finally:
        worker.kill()
    assert "chatstore_events_total" in metrics
    assert "batch.flushed" in worker.log()
    assert PASSWORD not in worker.log()
    assert PASSWORD not in metrics
