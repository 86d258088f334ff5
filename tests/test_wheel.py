"""The wheel, built from the checkout and installed where the checkout is out of reach.

The image installs this same wheel (see the Dockerfile), so what passes here is
what runs in production: the migrations must travel inside the package (as
``worker/migrations``), and nothing may be named ``alembic`` at the top level,
where it would shadow the Alembic library.

A fresh virtual environment gets the wheel and its dependencies from the
package registry (pip's cache makes a repeat quick); its ``chatstore migrate``
then runs outside the checkout, with no CHATSTORE_* settings or PYTHONPATH
inherited, against a database that does not exist yet.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import asyncpg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL

from tests.db import dsn, fetch_all

ROOT = Path(__file__).resolve().parent.parent
# Installing resolves and downloads the dependencies: far beyond the default 120 s
# on a cold cache. The timeout covers the module's fixtures too.
pytestmark = pytest.mark.timeout(600)

SHIPPED = (
    "worker/migrations/env.py",
    "worker/migrations/script.py.mako",
    "worker/migrations/versions/0001_conversations_and_messages.py",
    "worker/migrations/versions/0002_write_batch_function.py",
    "contracts/schemas/event.schema.json",
    "contracts/schemas/asyncapi.yaml",
    "contracts/testing.py",
    "contracts/py.typed",
    "worker/py.typed",
)
# What would let the installed copy find the checkout, or configure it from here.
INHERITED = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")


@dataclass(frozen=True)
class Installed:
    """A virtual environment holding the wheel and nothing of the checkout."""

    root: Path
    site_packages: Path
    outside: Path  # a working directory away from the checkout

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def chatstore(self) -> Path:
        return self.root / "bin" / "chatstore"


def _scrubbed_environment(venv: Path | None = None) -> dict[str, str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("CHATSTORE_") and name not in INHERITED
    }
    if venv is not None:
        environment["PATH"] = f"{venv / 'bin'}{os.pathsep}{environment.get('PATH', '')}"
    return environment


def _run(
    *command: str | Path,
    cwd: Path,
    timeout_s: float,
    environment: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=environment if environment is not None else _scrubbed_environment(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel pip builds from the checkout, as the Dockerfile's build stage does."""
    directory = tmp_path_factory.mktemp("wheelhouse")
    result = _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--wheel-dir",
        directory,
        ROOT,
        cwd=directory,
        timeout_s=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = directory.glob("chatstore-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """A fresh virtual environment with the wheel and its dependencies installed."""
    base = tmp_path_factory.mktemp("installed")
    root, outside = base / "venv", base / "elsewhere"
    outside.mkdir()
    created = _run(sys.executable, "-m", "venv", root, cwd=base, timeout_s=120)
    assert created.returncode == 0, created.stdout + created.stderr
    environment = _scrubbed_environment(root)
    python = root / "bin" / "python"
    result = _run(
        python, "-m", "pip", "install", wheel, cwd=outside, timeout_s=480, environment=environment
    )
    assert result.returncode == 0, result.stdout + result.stderr
    purelib = _run(
        python,
        "-c",
        "import sysconfig; print(sysconfig.get_path('purelib'))",
        cwd=outside,
        timeout_s=60,
        environment=environment,
    )
    assert purelib.returncode == 0, purelib.stderr
    return Installed(root, Path(purelib.stdout.strip()).resolve(), outside)


@pytest.fixture
def missing_database(services_admin_url: URL) -> Iterator[URL]:
    """The URL of a database that does not exist yet; dropped afterwards."""
    url = services_admin_url.set(
        database=f"chatstore_test_wheel_{uuid.uuid4().hex[:12]}", drivername="postgresql"
    )
    yield url
    asyncio.run(_drop(services_admin_url, str(url.database)))


async def _drop(admin_url: URL, name: str) -> None:
    connection = await asyncpg.connect(dsn(admin_url))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def _database_exists(admin_url: URL, name: str) -> bool:
    rows = await fetch_all(admin_url, "SELECT 1 FROM pg_database WHERE datname = $1", name)
    return bool(rows)


def test_the_wheel_ships_the_migrations_and_type_markers_inside_the_packages(
    wheel: Path,
) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    missing = [name for name in SHIPPED if name not in names]
    assert not missing, sorted(names)


def test_the_wheel_has_no_top_level_alembic_package_to_shadow_the_library(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        tops = {PurePosixPath(name).parts[0] for name in archive.namelist()}
    assert not [name for name in tops if name.split(".")[0] == "alembic"], tops
    packages = {top for top in tops if not top.endswith(".dist-info")}
    assert packages == {"contracts", "worker"}


def test_the_installed_packages_come_from_the_venv_and_not_the_checkout(
    installed: Installed,
) -> None:
    script = (
        "import alembic.command, contracts, worker, worker.migrate\n"
        "for module in (worker, contracts, alembic, worker.migrate):\n"
        "    print(module.__file__)\n"
        "print(worker.migrate.script_location())\n"
    )
    result = _run(
        installed.python,
        "-c",
        script,
        cwd=installed.outside,
        timeout_s=60,
        environment=_scrubbed_environment(installed.root),
    )
    assert result.returncode == 0, result.stderr
    worker_file, contracts_file, alembic_file, migrate_file, location = (
        Path(line).resolve() for line in result.stdout.splitlines()
    )
    for path in (worker_file, contracts_file, alembic_file, migrate_file, location):
        assert path.is_relative_to(installed.site_packages), path
        assert not path.is_relative_to(ROOT), path
    assert alembic_file.parent == installed.site_packages / "alembic"  # the library itself
    assert location == installed.site_packages / "worker" / "migrations"


def test_the_installed_chatstore_migrate_creates_the_database_and_upgrades_it_to_head(
    installed: Installed, missing_database: URL, services_admin_url: URL
) -> None:
    name = str(missing_database.database)
    assert not asyncio.run(_database_exists(services_admin_url, name))
    environment = _scrubbed_environment(installed.root)
    environment["CHATSTORE_DATABASE_URL"] = missing_database.render_as_string(hide_password=False)

    result = _run(
        installed.chatstore,
        "migrate",
        cwd=installed.outside,
        timeout_s=120,
        environment=environment,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert asyncio.run(_database_exists(services_admin_url, name))
    tables = asyncio.run(
        fetch_all(
            missing_database,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
        )
    )
    assert {"conversations", "messages", "alembic_version"} <= {row[0] for row in tables}
    versions = asyncio.run(fetch_all(missing_database, "SELECT version_num FROM alembic_version"))
    head = ScriptDirectory(str(ROOT / "alembic")).get_current_head()
    assert head == "0002"
    assert [row[0] for row in versions] == [head]
