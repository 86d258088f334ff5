"""``worker.tools.subprocesses.run`` leaves no child and no transport behind.

A child left running after a cancelled ``communicate()`` kept its transport
alive past its event loop; collected later, it raised "Event loop is closed"
inside pytest's report of an unrelated failure and crashed the run. These run
real processes: the assertions read ``/proc``.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

from worker.tools import subprocesses
from worker.tools.sandbox import wait_for

# The child writes its pid, then sleeps far longer than any test waits.
SLEEPER = ["sh", "-c", 'echo $$ > "$0"; exec sleep 600']


def _pid(path: Path) -> int | None:
    """The pid the child wrote, once it has."""
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text else None


def _exists(pid: int | None) -> bool:
    """Whether ``pid`` is in /proc at all: running, or exited but not reaped."""
    assert pid is not None, "the child never wrote its pid"
    return Path(f"/proc/{pid}").exists()


async def _started(path: Path) -> None:
    async def wrote() -> bool:
        return _pid(path) is not None

    await wait_for(wrote, within_s=10, what="the child to write its pid", every_s=0.01)


async def test_output_and_exit_code_come_back() -> None:
    done = await subprocesses.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")


async def test_a_timeout_kills_and_reaps_the_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with pytest.raises(TimeoutError):
        await subprocesses.run([*SLEEPER, str(pid_file)], timeout_s=2)
    # Reaped, not a zombie: the pid is gone from /proc altogether.
    assert not _exists(_pid(pid_file))


async def test_cancelling_the_caller_kills_and_reaps_the_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    task = asyncio.create_task(subprocesses.run([*SLEEPER, str(pid_file)]))
    await _started(pid_file)
    assert _exists(_pid(pid_file))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _exists(_pid(pid_file))


def test_a_loop_closed_on_a_cancelled_run_leaves_nothing_to_collect(tmp_path: Path) -> None:
    """What crashed CI: the loop ends while the child runs, then a collection happens.
    An unraisable "Event loop is closed" here fails the test (filterwarnings = error)."""
    pid_file = tmp_path / "pid"

    async def abandon() -> None:
        running = asyncio.create_task(subprocesses.run([*SLEEPER, str(pid_file)]))
        await _started(pid_file)
        assert not running.done()
        raise RuntimeError("the caller fails while the child runs")

    with pytest.raises(RuntimeError, match="the caller fails"):
        asyncio.run(abandon())
    gc.collect()
    assert not _exists(_pid(pid_file))
