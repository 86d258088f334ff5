"""Logging, configured once: structlog, JSON when stderr is not a terminal.

Standard-library loggers (Alembic, aio-pika) are rendered by the same
processors, so an operator reads one format.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

import structlog

from worker.redact import RedactSecrets

_SHARED_PROCESSORS: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_logging(
    level: str = "INFO", *, json: bool | None = None, secrets: Iterable[str] = ()
) -> None:
    """Send every log line to stderr, as JSON unless stderr is a terminal.

    Every line, ours and the libraries', passes through :class:`RedactSecrets`
    last: URL passwords and the configured ``secrets`` never reach the output.
    """
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            *_SHARED_PROCESSORS,
            structlog.processors.format_exc_info if json else structlog.dev.set_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED_PROCESSORS,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                RedactSecrets(secrets),
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aio-pika and aiormq narrate every frame at INFO, Alembic every plugin it
    # loads; keep what matters (Alembic's "Running upgrade" lines stay).
    for noisy in ("aio_pika", "aiormq", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.getLogger("aiormq.connection").addFilter(_drop_transport_errors)


def _drop_transport_errors(record: logging.LogRecord) -> bool:
    # aiormq logs a failed connect at ERROR and then raises it; the caller
    # reports the same failure with the broker's name (a command's one line,
    # the worker's broker.lost), so aiormq's copy would only say it twice.
    return not record.getMessage().startswith("error when creating transport")
