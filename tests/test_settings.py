"""Configuration: defaults, driver selection, and one clear line for a bad value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.settings import ConfigurationError, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("CHATSTORE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_match_the_contract() -> None:
    settings = load_settings()
    assert settings.database_url == "postgresql://postgres@localhost:5432/chatstore"
    assert settings.amqp_url == "amqp://guest:guest@localhost:5672/"


@pytest.mark.parametrize(
    "url",
    ["postgresql://u:p@db:5433/x", "postgres://u@db/x", "postgresql+asyncpg://u@db/x"],
)
def test_plain_postgres_urls_get_the_asyncpg_driver(url: str) -> None:
    settings = Settings(database_url=url)
    assert settings.sqlalchemy_url.drivername == "postgresql+asyncpg"
    assert settings.sqlalchemy_url.database == "x"


def test_a_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("CHATSTORE_DATABASE_URL=postgresql://u@dotenv/x\n")
    assert load_settings().database_url == "postgresql://u@dotenv/x"


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("CHATSTORE_DATABASE_URL", "mysql://root:hunter2@db/x", "must start with postgresql://"),
        ("CHATSTORE_DATABASE_URL", "postgresql://root:hunter2@db:port/x", "is not a URL"),
        ("CHATSTORE_DATABASE_URL", "postgresql://root:hunter2@db:5432", "names no database"),
        ("CHATSTORE_DATABASE_URL", "not a url", "is not a URL"),
        ("CHATSTORE_AMQP_URL", "http://guest:hunter2@mq/", "must start with amqp://"),
        ("CHATSTORE_LOG_LEVEL", "LOUD", "should match"),
    ],
)
def test_a_bad_value_names_the_variable_and_not_the_password(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith(variable)
    assert needle in message
    assert "hunter2" not in message
    assert "\n" not in message


def test_the_cli_reports_a_bad_database_url_in_one_line_with_exit_code_2(tmp_path: Path) -> None:
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("CHATSTORE_")
    }
    environment["CHATSTORE_DATABASE_URL"] = "mysql://admin:hunter2@db/x"
    result = subprocess.run(
        [sys.executable, "-m", "worker", "migrate"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("chatstore: CHATSTORE_DATABASE_URL")
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr


def test_a_prefetch_below_the_batch_size_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATSTORE_BATCH_MAX_SIZE", "500")
    monkeypatch.setenv("CHATSTORE_PREFETCH_COUNT", "499")
    expected = r"CHATSTORE_PREFETCH_COUNT \(499\) must be at least CHATSTORE_BATCH_MAX_SIZE"
    with pytest.raises(ConfigurationError, match=expected):
        load_settings()


def test_a_prefetch_equal_to_the_batch_size_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATSTORE_BATCH_MAX_SIZE", "100")
    monkeypatch.setenv("CHATSTORE_PREFETCH_COUNT", "100")
    assert load_settings().prefetch_count == 100
