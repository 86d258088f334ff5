"""The worker's configuration: one typed object, read once at the edge.

Values come from ``CHATSTORE_*`` environment variables and a ``.env`` file.
A bad value becomes :class:`ConfigurationError`, whose one-line message names
the variable and never echoes a password.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from pydantic import AfterValidator, Field, ValidationError
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
        variable = ENV_PREFIX + ".".join(str(part) for part in first["loc"]).upper()
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigurationError(f"{variable}: {message}") from None
