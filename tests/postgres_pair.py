"""A PostgreSQL primary and a synchronous streaming standby of its own, for failover tests.

Both run from temporary directories on loopback ports of their own, under
the postgres user: the system server (5432) is never touched, and its
pg_hba.conf allows no replication anyway. ``initdb -A trust`` plus one
``host replication`` line lets the standby stream; ``pg_basebackup -R`` makes
it (standby.signal and primary_conninfo). The base backup is taken before
``synchronous_standby_names`` is set on the primary, so the promoted standby
waits for no standby of its own. Every server started here is stopped here,
with ``pg_ctl -D`` on its own directory.

Run the tests as root (the servers then run as postgres, via runuser) or as
the postgres user; the binaries are Debian's, in /usr/lib/postgresql/15/bin
(``CHATSTORE_TEST_PG_BIN`` points elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import asyncpg
import pytest

from tests.harness import free_port

PG_BIN: Final = Path(os.environ.get("CHATSTORE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
SERVER_USER: Final = "postgres"


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", SERVER_USER, "--", *command]
    return command


def run_program(*command: str, timeout_s: float = 60) -> str:
    """Run a PostgreSQL program as the server user; a failure names it and its output."""
    completed = subprocess.run(
        _as_server_user([str(PG_BIN / command[0]), *command[1:]]),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if completed.returncode != 0:
        output = (completed.stderr or completed.stdout).strip()
        raise RuntimeError(f"{command[0]} {' '.join(command[1:])} failed: {output}")
    return completed.stdout


@dataclass
class Server:
    """One server of the pair: its data directory, port and log."""

    name: str
    data: Path
    port: int
    sockets: Path
    log: Path

    def dsn(self, database: str = "postgres") -> str:
        """This server alone, for asyncpg."""
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1"
        run_program(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        run_program("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def promote(self) -> None:
        run_program("pg_ctl", "-D", str(self.data), "-w", "promote")

    def running(self) -> bool:
        status = subprocess.run(
            _as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status"]),
            capture_output=True,
            check=False,
        )
        return status.returncode == 0  # 3: not running, 4: no data directory

    async def fetch(
        self, sql: str, *args: object, database: str = "postgres"
    ) -> list[asyncpg.Record]:
        connection = await asyncpg.connect(self.dsn(database))
        try:
            return list(await connection.fetch(sql, *args))
        finally:
            await connection.close()


@dataclass
class PostgresPair:
    primary: Server
    standby: Server

    def url(self, database: str, target_session_attrs: str = "read-write") -> str:
        """Both servers in one libpq URL, the primary first."""
        hosts = f"127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
        return (
            f"postgresql://{SERVER_USER}@{hosts}/{database}"
            f"?target_session_attrs={target_session_attrs}"
        )


def missing_requirement() -> str | None:
    for program in ("initdb", "pg_ctl", "pg_basebackup"):
        if not (PG_BIN / program).is_file():
            return (
                f"{PG_BIN / program} is missing "
                "(install postgresql-15, or set CHATSTORE_TEST_PG_BIN)"
            )
    if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != SERVER_USER:
        return f"run as root or as {SERVER_USER}: the servers run as {SERVER_USER}"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "runuser is not on PATH: root starts the servers as postgres with it"
    return None


def _wait_for_sync_standby(primary: Server, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        states = asyncio.run(primary.fetch("SELECT sync_state FROM pg_stat_replication"))
        if [row["sync_state"] for row in states] == ["sync"]:
            return
        time.sleep(0.1)
    raise RuntimeError(
        f"the standby did not become synchronous within {within_s:g} s; see {primary.log}"
    )


@contextlib.contextmanager
def postgres_pair() -> Iterator[PostgresPair]:
    """A primary and a synchronous standby, both stopped and removed on exit."""
    if (problem := missing_requirement()) is not None:
        pytest.fail(f"a PostgreSQL primary and standby cannot be started: {problem}")
    root = Path(tempfile.mkdtemp(prefix="chatstore-pg-pair-"))
    servers: list[Server] = []
    try:
        shutil.chown(root, SERVER_USER)
        primary = Server("primary", root / "primary", free_port(), root, root / "primary.log")
        standby = Server("standby", root / "standby", free_port(), root, root / "standby.log")
        run_program(
            "initdb", "-D", str(primary.data), "-A", "trust", "-U", SERVER_USER, "--no-sync"
        )
        with (primary.data / "pg_hba.conf").open("a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")
        servers.append(primary)
        primary.start()
        run_program(
            "pg_basebackup",
            "-h", "127.0.0.1",
            "-p", str(primary.port),
            "-U", SERVER_USER,
            "-D", str(standby.data),
            "-R",
            "-X", "stream",
        )  # fmt: skip
        servers.append(standby)
        standby.start()
        asyncio.run(primary.fetch("ALTER SYSTEM SET synchronous_standby_names = '*'"))
        asyncio.run(primary.fetch("SELECT pg_reload_conf()"))
        _wait_for_sync_standby(primary)
        yield PostgresPair(primary, standby)
    finally:
        for server in reversed(servers):
            if server.running():
                server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
