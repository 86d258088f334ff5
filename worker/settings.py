"""The worker's configuration: one typed object, read once at the edge.

Values come from ``CHATSTORE_*`` environment variables and a ``.env`` file.
A bad value becomes :class:`ConfigurationError`, whose one-line message names
the variable and never echoes the value: a URL may hold a password.

Transport security lives here too (see docs/DEPLOYMENT.md):

- PostgreSQL URLs may list several hosts, libpq's way
  (``postgresql://u@db1:5432,db2:5432/x?target_session_attrs=read-write``):
  see :mod:`contracts.history.url`.
- PostgreSQL TLS follows libpq: ``CHATSTORE_DATABASE_SSLMODE`` and the
  certificate paths, or the same names as parameters of the URL
  (``?sslmode=verify-full&sslrootcert=...``, the form managed databases hand
  out). Variables set on their own win over the URL's parameters.
- RabbitMQ TLS is an ``amqps://`` URL; ``CHATSTORE_AMQP_CAFILE``,
  ``_CERTFILE`` and ``_KEYFILE`` are written into it as the query parameters
  aiormq reads, so every connection the process makes gets them.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Final, Literal, Self, get_args
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import AfterValidator, Field, PrivateAttr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL

from contracts.brokers import BrokerURLError, parse_nodes
from contracts.history.url import DatabaseURLError, asyncpg_url, written_parameters
from worker.redact import redact_url, url_password

ENV_PREFIX: Final = "CHATSTORE_"

SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
SSL_MODES: Final[tuple[str, ...]] = get_args(SslMode)
# libpq's TLS parameters, accepted in the database URL and moved out of it:
# asyncpg takes none of them as a keyword, so SQLAlchemy must never see them.
_LIBPQ_TLS: Final = ("sslmode", "sslrootcert", "sslcert", "sslkey")
# The database URL's parameters: TLS, and which of its hosts to use.
_POSTGRES_PARAMETERS: Final = (*_LIBPQ_TLS, "target_session_attrs")
# What aiormq reads from an amqps:// URL's query, by the setting that sets it.
_AMQP_TLS: Final = {"amqp_cafile": "cafile", "amqp_certfile": "certfile", "amqp_keyfile": "keyfile"}


class ConfigurationError(Exception):
    """A setting is missing or wrong; the message is one line for the operator."""


def _postgres_url(value: str) -> str:
    try:
        url = asyncpg_url(value)  # a libpq list of hosts is read here too
    except DatabaseURLError as error:
        raise ValueError(str(error)) from None
    if not url.database:
        raise ValueError("names no database (postgresql://user@host:5432/dbname)")
    # The parameters as written: host= and port= are the converted list's own.
    written = written_parameters(value)
    unknown = sorted(written - set(_POSTGRES_PARAMETERS))
    if unknown:  # a parameter's name is safe to show; its value may not be
        raise ValueError(
            f"parameter {unknown[0]!r} is not supported (only {', '.join(_POSTGRES_PARAMETERS)})"
        )
    mode = url.query.get("sslmode")
    if mode is not None and mode not in SSL_MODES:
        raise ValueError(f"sslmode must be one of {', '.join(SSL_MODES)}")
    return value


def _optional_postgres_url(value: str) -> str:
    return _postgres_url(value) if value else value


def _amqp_url(value: str) -> str:
    try:
        parse_nodes(value)
    except BrokerURLError as error:
        raise ValueError(str(error)) from None
    return value


def _readable_file(path: str) -> str:
    # Checked at start, so a missing certificate is a configuration error
    # (exit 2) rather than a connection failure retried forever.
    if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
        raise ValueError("names no readable file")
    return path


CertificatePath = Annotated[str, AfterValidator(_readable_file)]


def _with_tls_files(url: str, given: dict[str, str]) -> str:
    """``url`` with the certificate files of ``given`` (aiormq's parameter names) in its query.

    Files already in the URL are checked here, so a missing one is a
    configuration error (exit 2), not a connection failure retried forever.
    """
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    for parameter in ("cafile", "certfile", "keyfile"):
        if parameter in query and parameter not in given:
            try:
                _readable_file(query[parameter])
            except ValueError:
                raise ValueError(
                    f"CHATSTORE_AMQP_URL: parameter {parameter} names no readable file"
                ) from None
    query |= given
    if parts.scheme != "amqps" and any(query.get(p) for p in _AMQP_TLS.values()):
        raise ValueError("CHATSTORE_AMQP_CAFILE, _CERTFILE, _KEYFILE need an amqps:// URL")
    if bool(query.get("certfile")) != bool(query.get("keyfile")):
        raise ValueError("CHATSTORE_AMQP_CERTFILE and _KEYFILE go together: set both")
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


class Settings(BaseSettings):
    """Everything the worker and the tools read from the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: Annotated[str, AfterValidator(_postgres_url)] = (
        "postgresql://postgres@localhost:5432/chatstore"
    )
    amqp_url: Annotated[str, AfterValidator(_amqp_url)] = "amqp://guest:guest@localhost:5672/"
    maintenance_database_url: Annotated[str, AfterValidator(_optional_postgres_url)] = ""
    """The maintenance role's URL, for ``chatstore purge`` only; empty: not configured.

    The same database as ``database_url`` under another role, the only one of
    chatstore's that may delete (deploy/postgres/roles.sql). The TLS settings
    apply to it too.
    """
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    batch_max_size: int = Field(default=500, ge=1, le=10_000)
    batch_max_wait_ms: int = Field(default=20, ge=0, le=10_000)
    prefetch_count: int = Field(default=1000, ge=1, le=65_535)
    delivery_limit: int = Field(default=20, ge=1)
    drain_timeout_s: float = Field(default=20.0, gt=0)
    retry_initial_ms: int = Field(default=100, ge=1)
    retry_max_s: float = Field(default=5.0, gt=0)
    watchdog_idle_s: float = Field(default=60.0, gt=0)
    database_timeout_s: float = Field(default=30.0, gt=0)
    http_host: str = "0.0.0.0"
    http_port: int = Field(default=9100, ge=0, le=65_535)
    """Port of /metrics, /healthz and /readyz; 0 turns the server off."""

    database_pool_mode: Literal["session", "transaction"] = "session"
    """``transaction`` behind PgBouncer's (or Neon's pooled) transaction pooling."""
    database_sslmode: SslMode = "prefer"
    # Empty means unset (not None: "None" would come back from the environment
    # of a process these settings were handed to as text).
    database_sslrootcert: CertificatePath = ""
    """CA bundle for verify-ca/verify-full; empty: the system's trust store."""
    database_sslcert: CertificatePath = ""
    database_sslkey: CertificatePath = ""
    amqp_cafile: CertificatePath = ""
    """CA bundle for amqps://; empty: the system's trust store."""
    amqp_certfile: CertificatePath = ""
    amqp_keyfile: CertificatePath = ""
    # The TLS fields _database_tls took from the database URL's parameters.
    _from_url: set[str] = PrivateAttr(default_factory=set)

    @model_validator(mode="after")
    def _prefetch_covers_a_batch(self) -> Self:
        if self.prefetch_count < self.batch_max_size:
            # The broker would never hand over a full batch: every batch would
            # close on the wait instead, and throughput would collapse.
            raise ValueError(
                f"CHATSTORE_PREFETCH_COUNT ({self.prefetch_count}) must be at least "
                f"CHATSTORE_BATCH_MAX_SIZE ({self.batch_max_size})"
            )
        return self

    @model_validator(mode="after")
    def _database_tls(self) -> Self:
        """Take libpq's TLS parameters from the URL for the variables not set."""
        query = asyncpg_url(self.database_url).query
        for name in _LIBPQ_TLS:
            field = f"database_{name}"
            value = query.get(name)
            if isinstance(value, str) and field not in self.model_fields_set:
                if name != "sslmode":
                    try:
                        _readable_file(value)
                    except ValueError:
                        raise ValueError(
                            f"CHATSTORE_DATABASE_URL: parameter {name} names no readable file"
                        ) from None
                setattr(self, field, value)
                self._from_url.add(field)
        if bool(self.database_sslcert) != bool(self.database_sslkey):
            raise ValueError("CHATSTORE_DATABASE_SSLCERT and _SSLKEY go together: set both")
        return self

    @model_validator(mode="after")
    def _amqp_tls(self) -> Self:
        """Write the AMQP certificate settings into each node's URL, where aiormq reads them."""
        urls = [node.url for node in parse_nodes(self.amqp_url)]
        given = {p: v for f, p in _AMQP_TLS.items() if (v := getattr(self, f))}
        with_tls = [_with_tls_files(url, given) for url in urls]
        if given:  # otherwise leave the URLs exactly as they were written
            self.amqp_url = ",".join(with_tls)
        return self

    def for_maintenance(self) -> Settings:
        """These settings with the maintenance role's URL as the database's (``chatstore purge``).

        Read like the worker's URL: libpq parameters in it apply unless their
        variable is set. Parameters of the worker's URL do not carry over.
        """
        if not self.maintenance_database_url:
            raise ConfigurationError(
                "CHATSTORE_MAINTENANCE_DATABASE_URL: not set; purge runs as the maintenance "
                "role, the one that may delete (see docs/DEPLOYMENT.md)"
            )
        given = {name: getattr(self, name) for name in self.model_fields_set - self._from_url}
        return load_settings(**(given | {"database_url": self.maintenance_database_url}))

    @property
    def amqp_urls(self) -> tuple[str, ...]:
        """The URL of each RabbitMQ node, in the order written."""
        return tuple(node.url for node in parse_nodes(self.amqp_url))

    @property
    def sqlalchemy_url(self) -> URL:
        """The database URL with the asyncpg driver, without libpq's TLS parameters.

        TLS is set by :func:`worker.database.connect_args` instead. A list of
        hosts is in SQLAlchemy's form (:func:`contracts.history.url.asyncpg_url`).
        """
        return asyncpg_url(self.database_url).difference_update_query(_LIBPQ_TLS)

    def secrets(self) -> list[str]:
        """The passwords in the configured URLs, for :mod:`worker.redact`."""
        urls = (self.database_url, self.maintenance_database_url, *self.amqp_urls)
        return [p for url in urls if (p := url_password(url))]

    def __repr_args__(self) -> Any:
        # A settings object in a traceback or a log line must not carry passwords.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if isinstance(value, str) else value


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning the first validation error into one clear line.

    The message never includes the rejected value: it may hold a password.
    """
    try:
        return Settings(**overrides)
    except ValidationError as error:
        first = error.errors(include_url=False, include_input=False)[0]
        message = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:  # a rule across fields names its variables itself
            raise ConfigurationError(message) from None
        variable = ENV_PREFIX + ".".join(str(part) for part in first["loc"]).upper()
        raise ConfigurationError(f"{variable}: {message}") from None
