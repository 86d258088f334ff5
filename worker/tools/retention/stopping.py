"""SIGINT and SIGTERM as an ``asyncio.Event``: a long command stops between steps."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[asyncio.Event]:
    """An event set by SIGINT or SIGTERM, for as long as the block runs.

    The command checks it between two steps (a batch, a publish), so a signal
    never cuts one in half; a second signal changes nothing. The previous
    handlers are back once the block ends.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in _SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    try:
        yield stop
    finally:
        for signum in _SIGNALS:
            loop.remove_signal_handler(signum)
