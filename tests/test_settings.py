"""Configuration: defaults, driver selection, and one clear line for a bad value."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.history import reader_engine
from contracts.history.url import TARGET_SESSION_ATTRS, connect_kwargs, servers
from worker.database import connect_args, ssl_argument
from worker.settings import ConfigurationError, Settings, load_settings
from worker.unavailable import postgres_at


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


# --- transaction pooling and TLS (docs/DEPLOYMENT.md) ---

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def test_tls_and_pooling_defaults_change_nothing_for_a_direct_connection() -> None:
    settings = load_settings()
    assert settings.database_pool_mode == "session"
    assert settings.database_sslmode == "prefer"  # libpq's default
    arguments = connect_args(settings)
    assert arguments == {"command_timeout": 30.0, "ssl": "prefer"}


def test_transaction_pooling_turns_statement_caches_off_and_names_no_statement(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHATSTORE_DATABASE_POOL_MODE", "transaction")
    arguments = connect_args(load_settings())
    assert arguments["statement_cache_size"] == 0
    assert arguments["prepared_statement_cache_size"] == 0
    assert arguments["prepared_statement_name_func"]() == ""


@pytest.mark.parametrize(
    ("mode", "verify", "check_hostname"),
    [
        ("require", ssl.CERT_NONE, False),
        ("verify-ca", ssl.CERT_REQUIRED, False),
        ("verify-full", ssl.CERT_REQUIRED, True),
    ],
)
def test_sslmodes_become_contexts_that_check_what_libpq_checks(
    mode: str, verify: ssl.VerifyMode, check_hostname: bool
) -> None:
    context = ssl_argument(Settings(database_sslmode=mode, database_sslrootcert=CA_BUNDLE))
    assert isinstance(context, ssl.SSLContext)
    assert (context.verify_mode, context.check_hostname) == (verify, check_hostname)


def test_libpq_parameters_in_the_url_set_tls_and_leave_the_url() -> None:
    url = f"postgresql://app:secret@db/x?sslmode=verify-full&sslrootcert={CA_BUNDLE}"
    settings = Settings(database_url=url)
    assert (settings.database_sslmode, settings.database_sslrootcert) == ("verify-full", CA_BUNDLE)
    assert dict(settings.sqlalchemy_url.query) == {}  # asyncpg takes no sslmode keyword


def test_a_variable_of_its_own_wins_over_the_urls_parameter() -> None:
    settings = Settings(
        database_url="postgresql://app@db/x?sslmode=require", database_sslmode="verify-full"
    )
    assert settings.database_sslmode == "verify-full"


def test_amqp_certificates_are_written_into_the_url_for_aiormq() -> None:
    settings = Settings(amqp_url="amqps://u:p@mq:5671/v?heartbeat=30", amqp_cafile=CA_BUNDLE)
    assert settings.amqp_url == f"amqps://u:p@mq:5671/v?heartbeat=30&cafile={CA_BUNDLE}"
    # Handing the settings on as text (a subprocess's environment) changes nothing.
    assert Settings(**settings.model_dump()).amqp_url == settings.amqp_url


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("CHATSTORE_DATABASE_POOL_MODE", "statement", "'session' or 'transaction'"),
        ("CHATSTORE_DATABASE_SSLMODE", "verify", "'verify-full'"),
        ("CHATSTORE_DATABASE_SSLROOTCERT", "/nonexistent/hunter2.pem", "no readable file"),
        ("CHATSTORE_AMQP_CAFILE", "/nonexistent/hunter2.pem", "no readable file"),
    ],
)
def test_a_bad_tls_or_pooling_value_names_the_variable_only(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, needle: str
) -> None:
    monkeypatch.setenv("CHATSTORE_DATABASE_URL", "postgresql://app:hunter2@db/x")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith(variable)
    assert needle in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("environment", "needle"),
    [
        (
            {"CHATSTORE_DATABASE_URL": "postgresql://a:hunter2@db/x?sslmode=on"},
            "CHATSTORE_DATABASE_URL: sslmode must be one of",
        ),
        (
            {"CHATSTORE_DATABASE_URL": "postgresql://a:hunter2@db/x?channel_binding=require"},
            "CHATSTORE_DATABASE_URL: parameter 'channel_binding' is not supported",
        ),
        (
            {"CHATSTORE_DATABASE_URL": "postgresql://a:hunter2@db/x?sslrootcert=/hunter2"},
            "CHATSTORE_DATABASE_URL: parameter sslrootcert names no readable file",
        ),
        (
            {"CHATSTORE_DATABASE_SSLCERT": CA_BUNDLE},
            "CHATSTORE_DATABASE_SSLCERT and _SSLKEY go together",
        ),
        (
            {"CHATSTORE_AMQP_URL": "amqp://u:hunter2@mq/", "CHATSTORE_AMQP_CAFILE": CA_BUNDLE},
            "need an amqps:// URL",
        ),
        (
            {"CHATSTORE_AMQP_URL": "amqps://u:hunter2@mq/?cafile=/hunter2"},
            "CHATSTORE_AMQP_URL: parameter cafile names no readable file",
        ),
        (
            {"CHATSTORE_AMQP_URL": "amqps://u:hunter2@mq/", "CHATSTORE_AMQP_CERTFILE": CA_BUNDLE},
            "CHATSTORE_AMQP_CERTFILE and _KEYFILE go together",
        ),
    ],
)
def test_inconsistent_tls_settings_are_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], needle: str
) -> None:
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert needle in str(raised.value)
    assert "hunter2" not in str(raised.value)
    assert "\n" not in str(raised.value)


# --- several PostgreSQL hosts, libpq's way (issue 10) ---


def test_a_list_of_hosts_becomes_the_asyncpg_dialects_host_parameters() -> None:
    settings = Settings(
        database_url="postgresql://app:hunter2@db1:5432,db2:5433,db3/x"
        f"?target_session_attrs=read-write&sslmode=verify-full&sslrootcert={CA_BUNDLE}"
    )
    url = settings.sqlalchemy_url
    assert (url.drivername, url.host, url.database, url.username) == (
        "postgresql+asyncpg",
        None,
        "x",
        "app",
    )
    # Each host with its port, 5432 where none was written; TLS moved out of the URL.
    assert dict(url.query) == {
        "host": ("db1:5432", "db2:5433", "db3:5432"),
        "target_session_attrs": "read-write",
    }
    assert (settings.database_sslmode, settings.database_sslrootcert) == ("verify-full", CA_BUNDLE)
    assert connect_kwargs(url) == {
        "host": ["db1", "db2", "db3"],
        "port": [5432, 5433, 5432],
        "user": "app",
        "password": "hunter2",
        "database": "x",
        "target_session_attrs": "read-write",
    }
    assert servers(url) == [("db1", 5432), ("db2", 5433), ("db3", 5432)]
    # Handing the settings on as text (a subprocess's environment) changes nothing.
    assert Settings(**settings.model_dump()).sqlalchemy_url == url


@pytest.mark.parametrize("attrs", TARGET_SESSION_ATTRS)
def test_every_target_session_attrs_asyncpg_knows_is_accepted(attrs: str) -> None:
    for url in (
        f"postgresql://u@db/x?target_session_attrs={attrs}",
        f"postgresql://u@a,b/x?target_session_attrs={attrs}",
    ):
        assert Settings(database_url=url).sqlalchemy_url.query["target_session_attrs"] == attrs


def test_a_single_host_url_reads_as_before() -> None:
    url = Settings(database_url="postgresql://u:p@db:5433/x").sqlalchemy_url
    assert (url.host, url.port, dict(url.query)) == ("db", 5433, {})
    assert servers(url) == [("db", 5433)]


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (
            "postgresql://a:hunter2@db1,db2/x?target_session_attrs=master",
            "target_session_attrs must be one of any, primary",
        ),
        (
            "postgresql://a:hunter2@db/x?target_session_attrs=readwrite",
            "target_session_attrs must be one of",
        ),
        ("postgresql://a:hunter2@db1,,db2/x", "empty or malformed host"),
        ("postgresql://a:hunter2@db1:5432,/x", "empty or malformed host"),
        ("postgresql://a:hunter2@db1:port,db2/x", "port that is not a number"),
        ("postgresql://a:hunter2@db1:70000,db2/x", "port that is not a number"),
        ("postgresql://a:hunter2@[::1]:5432,db2/x", "IPv6"),
        ("postgresql://a:hunter2@db1,db2/x?host=db3:5432", "gives hosts twice"),
        ("postgresql://a:hunter2@db/x?host=db3:5432", "parameter 'host' is not supported"),
        ("postgresql://a:hunter2@db1,db2", "names no database"),
        ("mysql://a:hunter2@db1,db2/x", "must start with postgresql://"),
    ],
)
def test_a_bad_host_list_is_one_line_naming_the_variable_not_the_password(
    monkeypatch: pytest.MonkeyPatch, value: str, needle: str
) -> None:
    monkeypatch.setenv("CHATSTORE_DATABASE_URL", value)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith("CHATSTORE_DATABASE_URL: ")
    assert needle in message
    assert "hunter2" not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "value",
    [
        "postgresql://app:hunter?2secret@db/x",
        "postgresql://app:hunter#2secret@db/x",
        "postgresql://app:hunter?2secret@db1:5432,db2/x",
        "postgresql://app:hunter#2secret@db1,db2:5433/x",
    ],
)
def test_a_password_holding_a_question_mark_or_hash_is_read_as_a_password(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # SQLAlchemy reads the password up to the "@"; a URL parser that ends the
    # host part at "?" would take the rest for parameters and quote it.
    monkeypatch.setenv("CHATSTORE_DATABASE_URL", value)
    settings = load_settings()
    assert settings.sqlalchemy_url.password == value.split(":", 2)[2].split("@")[0]
    monkeypatch.setenv("CHATSTORE_DATABASE_URL", value + "?bogus=1")
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert str(raised.value).startswith(
        "CHATSTORE_DATABASE_URL: parameter 'bogus' is not supported (only "
    )
    assert "2secret" not in str(raised.value)


def test_an_error_line_names_every_host_and_no_password() -> None:
    url = Settings(database_url="postgresql://a:hunter2@db1:5432,db2:5433/x").sqlalchemy_url
    assert postgres_at(url) == "PostgreSQL at db1:5432,db2:5433/x"
    assert postgres_at(Settings(database_url="postgresql://a:hunter2@db/x").sqlalchemy_url) == (
        "PostgreSQL at db:5432/x"
    )


def test_a_reader_engine_takes_the_same_url() -> None:
    engine = reader_engine("postgresql://app:hunter2@db1:5432,db2/x?target_session_attrs=any")
    assert (
        engine.url
        == Settings(
            database_url="postgresql://app:hunter2@db1:5432,db2/x?target_session_attrs=any"
        ).sqlalchemy_url
    )
    with pytest.raises(ValueError, match="target_session_attrs must be one of") as raised:
        reader_engine("postgresql://app:hunter2@db1,db2/x?target_session_attrs=master")
    assert "hunter2" not in str(raised.value)


def test_migrate_names_every_host_it_could_not_reach_in_one_line(tmp_path: Path) -> None:
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("CHATSTORE_")
    }
    # Nothing listens on ports 1 and 2 of loopback: both refuse at once.
    environment["CHATSTORE_DATABASE_URL"] = (
        "postgresql://admin:hunter2@127.0.0.1:1,127.0.0.1:2/x?target_session_attrs=read-write"
    )
    result = subprocess.run(
        [sys.executable, "-m", "worker", "migrate"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(
        "chatstore: cannot use PostgreSQL at 127.0.0.1:1,127.0.0.1:2/x: "
    )
    assert result.stderr.count("\n") == 1
    assert "hunter2" not in result.stderr


async def test_a_reader_engine_reads_libpq_tls_parameters_as_asyncpgs_ssl_argument(
    services_admin_url: URL,
) -> None:
    def reader(mode: str) -> AsyncEngine:
        url = services_admin_url.set(drivername="postgresql")
        return reader_engine(url.update_query_dict({"sslmode": mode}))

    plain, encrypted = reader("disable"), reader("require")
    try:
        assert "sslmode" not in plain.url.query  # asyncpg would refuse the keyword
        async with plain.connect() as connection:
            server_ssl = await connection.scalar(text("SHOW ssl"))
            in_use = await connection.scalar(
                text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            )
        assert in_use is False
        if server_ssl == "on":
            async with encrypted.connect() as connection:
                in_use = await connection.scalar(
                    text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                )
            assert in_use is True
        else:  # require reached the driver: it asked for TLS and was refused
            with pytest.raises(ConnectionError, match="rejected SSL upgrade"):
                async with encrypted.connect():
                    pass
    finally:
        await plain.dispose()
        await encrypted.dispose()
    with pytest.raises(ValueError, match="sslmode must be one of"):
        reader_engine("postgresql://app@db/x?sslmode=on")
