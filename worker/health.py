"""``/metrics``, ``/healthz`` and ``/readyz`` on one port, served by asyncio.

- ``/healthz``: 200 while the event loop answers (it serves this very reply);
  an orchestrator restarts a process that stops answering.
- ``/readyz``: 200 only while the worker is connected to the broker and the
  database is writable; 503 while it retries or reconnects. Under
  ``chatstore worker --processes N`` the supervisor serves the port, and
  ``/readyz`` is 200 only while all N children are alive and ready.
- ``/metrics``: Prometheus text format.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from worker.unavailable import http_port_unusable

log = structlog.get_logger("chatstore.http")


class ReadinessProbe(Protocol):
    """What /readyz asks: a worker's :class:`Readiness`, or a supervisor's view of its children."""

    @property
    def ready(self) -> bool: ...


class Readiness:
    """What /readyz reports; the worker flips these as its connections come and go.

    Watchers hear of every change of :attr:`ready`. The readiness gauge is set
    that way rather than read at each scrape (``Gauge.set_function``), because
    a supervised child writes its metrics to files that the supervisor reads,
    and multiprocess mode has no functions.
    """

    def __init__(self, *, broker: bool = False, database: bool = False) -> None:
        self._broker = broker
        self._database = database
        self._watchers: list[Callable[[bool], None]] = []

    @property
    def broker(self) -> bool:
        return self._broker

    @broker.setter
    def broker(self, value: bool) -> None:
        before = self.ready
        self._broker = value
        self._changed(before)

    @property
    def database(self) -> bool:
        return self._database

    @database.setter
    def database(self, value: bool) -> None:
        before = self.ready
        self._database = value
        self._changed(before)

    @property
    def ready(self) -> bool:
        return self._broker and self._database

    def watch(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(ready)`` now and at every change."""
        self._watchers.append(callback)
        callback(self.ready)

    def _changed(self, before: bool) -> None:
        if self.ready != before:
            for callback in self._watchers:
                callback(self.ready)

    def __repr__(self) -> str:
        return f"Readiness(broker={self._broker}, database={self._database})"


class HealthServer:
    def __init__(self, registry: CollectorRegistry, readiness: ReadinessProbe) -> None:
        self._registry = registry
        self._readiness = readiness
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (port 0 picks one); returns the port.

        Raises :class:`~worker.unavailable.ServiceUnavailableError` naming
        ``CHATSTORE_HTTP_PORT`` when the port is taken or cannot be used.
        """
        try:
            self._server = await asyncio.start_server(self._serve, host, port)
        except OSError as error:
            raise http_port_unusable(host, port, error) from error
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _respond(self, path: str) -> tuple[str, str, bytes]:
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == "/readyz":
            if self._readiness.ready:
                return "200 OK", "text/plain", b"ready\n"
            return "503 Service Unavailable", "text/plain", b"not ready\n"
        return "404 Not Found", "text/plain", b"not found\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            try:
                status, content_type, body = self._respond(path)
            except Exception as error:  # e.g. a metrics file caught mid-write: answer anyway
                log.error("http.failed", path=path, error=f"{type(error).__name__}: {error}")
                status, content_type, body = "500 Internal Server Error", "text/plain", b"error\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError, asyncio.IncompleteReadError):
            pass  # a client that hung up, stalled, or sent an over-long line
        finally:
            writer.close()
