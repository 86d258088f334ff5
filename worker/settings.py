"""The worker's configuration: one typed object, read once at the edge.

Values come from ``CHATSTORE_*`` environment variables and a ``.env`` file.
A bad value becomes :class:`ConfigurationError`, whose one-line message names
the variable and never echoes a password.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Self

from pydantic import AfterValidator, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

ENV_PREFIX: Final = "CHATSTORE_"
_POSTGRES_SCHEMES: Final = frozenset({"postgresql", "postgres", "postgresql+asyncpg"})


class ConfigurationError(Exception):
    """A setting is missing or wrong; the message is one line for the operator."""


def _postgres_url(value: str) -> str:
    try:
        url = make_url(value)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ValueError("is not a URL like postgresql://user@host:5432/dbname") from None
    if url.drivername not in _POSTGRES_SCHEMES:
        raise ValueError(f"must start with postgresql://, not {url.drivername}://")
    if not url.database:
        raise ValueError("names no database (postgresql://user@host:5432/dbname)")
    return value


def _amqp_url(value: str) -> str:
    scheme, sep, _ = value.partition("://")
    if not sep or scheme not in {"amqp", "amqps"}:
        raise ValueError("must start with amqp:// or amqps://")
    return value


class Settings(BaseSettings):
    """Everything the worker and the tools read from the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: Annotated[str, AfterValidator(_postgres_url)] = (
        "postgresql://postgres@localhost:5432/chatstore"
    )
    amqp_url: Annotated[str, AfterValidator(_amqp_url)] = "amqp://guest:guest@localhost:5672/"
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

    @property
    def sqlalchemy_url(self) -> URL:
        """The database URL with the asyncpg driver, whatever scheme was given."""
        return make_url(self.database_url).set(drivername="postgresql+asyncpg")


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
