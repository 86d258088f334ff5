"""Small helpers to look at a test database directly with asyncpg."""

from __future__ import annotations

import asyncpg
from sqlalchemy.engine import URL


def dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def connect(url: URL) -> asyncpg.Connection:
    return await asyncpg.connect(dsn(url))


async def fetch_all(url: URL, sql: str, *args: object) -> list[asyncpg.Record]:
    connection = await connect(url)
    try:
        return list(await connection.fetch(sql, *args))
    finally:
        await connection.close()
