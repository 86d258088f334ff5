"""A PgBouncer of the bench's own, in transaction mode, in front of the bench database.

Found where Debian installs it (``apt-get install pgbouncer``); absent, the
scenario that needs it says so and is skipped, visibly. It listens on a free
port of 127.0.0.1 only, trusts its local clients, and logs in to PostgreSQL
with the bench URL's own user and password. PgBouncer refuses to run as
root, so as root it runs as ``postgres`` (or ``nobody``). It is stopped by
its own pid (SIGTERM: PgBouncer's immediate shutdown) and its directory
removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from sqlalchemy.engine import URL

INSTALL_HINT: Final = "pgbouncer not installed (apt-get install pgbouncer)"


class PgBouncerError(Exception):
    """PgBouncer would not start; the message has the end of its log."""


def binary() -> str | None:
    """The pgbouncer program, on PATH or where Debian puts it; None if not installed."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def config(upstream: URL, *, port: int, pool_size: int, clients: int, directory: Path) -> str:
    server = f"host={upstream.host or '127.0.0.1'} port={upstream.port or 5432}"
    server += f" dbname={upstream.database} user={upstream.username}"
    if upstream.password:
        server += f" password={upstream.password}"
    return f"""\
[databases]
{upstream.database} = {server}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {directory}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = {clients + 20}
logfile = {directory}/pgbouncer.log
pidfile = {directory}/pgbouncer.pid
"""


@contextlib.asynccontextmanager
async def running(upstream: URL, *, pool_size: int, clients: int) -> AsyncIterator[URL]:
    """A PgBouncer with a pool of ``pool_size`` for ``clients``; yields ``upstream`` through it."""
    program = binary()
    if program is None:
        raise PgBouncerError(INSTALL_HINT)
    directory = Path(tempfile.mkdtemp(prefix="chatstore-bench-pgbouncer-"))
    port = free_port()
    try:
        (directory / "pgbouncer.ini").write_text(
            config(upstream, port=port, pool_size=pool_size, clients=clients, directory=directory)
        )
        (directory / "userlist.txt").write_text(f'"{upstream.username}" ""\n')
        command = [program, str(directory / "pgbouncer.ini")]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            account = pwd.getpwnam(_unprivileged_user())
            for path in (directory, directory / "pgbouncer.ini", directory / "userlist.txt"):
                os.chown(path, account.pw_uid, account.pw_gid)
            command[1:1] = ["--user", account.pw_name]
        with (directory / "output.log").open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                *command, stdout=output, stderr=asyncio.subprocess.STDOUT
            )
        try:
            await _wait_for_port(port, process, directory)
            yield upstream.set(host="127.0.0.1", port=port)
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)  # its immediate shutdown
                try:
                    await asyncio.wait_for(process.wait(), timeout=10)
                except TimeoutError:
                    process.kill()
                    await process.wait()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _unprivileged_user() -> str:
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "nobody"
    return "postgres"


async def _wait_for_port(port: int, process: asyncio.subprocess.Process, directory: Path) -> None:
    for _ in range(200):
        if process.returncode is not None:
            raise PgBouncerError(
                f"pgbouncer exited with {process.returncode}: {_log_tail(directory)}"
            )
        with contextlib.suppress(OSError):
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 0.2)
            writer.close()
            await writer.wait_closed()
            return
        await asyncio.sleep(0.05)
    raise PgBouncerError(f"pgbouncer did not listen within 10 s: {_log_tail(directory)}")


def _log_tail(directory: Path) -> str:
    logs = [directory / "output.log", directory / "pgbouncer.log"]
    lines = [line for log in logs if log.exists() for line in log.read_text().splitlines()]
    return lines[-1] if lines else "no output"
