"""The supervisor's view of its children: their metrics for /metrics, their readiness for /readyz.

Each child writes its metrics into the supervisor's private directory
(prometheus-client's multiprocess mode); :class:`ChildrenView` merges the
files at each scrape with ``MultiProcessCollector.merge``, so counters and
histograms are sums over every child that ever ran, restarted ones included.

``chatstore_ready`` is written per child (a ``liveall`` gauge, labelled with
the child's pid). The view reads it child by child and serves one unlabelled
``chatstore_ready`` in its place, meaning what it means for one worker: 1
only while all N children are alive and ready. A child not yet started, dead
and not yet restarted, or started but not yet connected, makes it 0, and
/readyz 503.

The supervisor is not itself in multiprocess mode (it never sets
``PROMETHEUS_MULTIPROC_DIR`` in its own environment), so its own values,
the restart counts, come from here too, as plain samples.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Final

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

READY: Final = "chatstore_ready"
"""The gauge each child sets (``worker.metrics``); served aggregated."""


class ChildrenView:
    """A prometheus-client collector and a readiness probe over the children's files.

    ``live_pids`` returns the pids of the children running now; ``restarts``
    counts restarts by reason and is kept by the supervisor.
    """

    def __init__(
        self,
        directory: Path,
        expected: int,
        live_pids: Callable[[], Collection[int]],
        restarts: Counter[str],
    ) -> None:
        self._directory = directory
        self._expected = expected
        self._live_pids = live_pids
        self._restarts = restarts

    @property
    def ready(self) -> bool:
        """Whether all ``expected`` children run and each says it is ready."""
        return self._all_ready(self._ready_by_pid(self._merge("gauge_live*_*.db")))

    def collect(self) -> Iterator[Metric]:
        families = self._merge("*.db")
        yield from (family for family in families if family.name != READY)
        yield GaugeMetricFamily(
            READY,
            "1 while every child worker is connected to both servers and writing; "
            "0 while one is retrying, reconnecting, starting or dead.",
            value=float(self._all_ready(self._ready_by_pid(families))),
        )
        yield GaugeMetricFamily(
            "chatstore_processes",
            "Child worker processes running now, out of --processes.",
            value=float(len(self._live_pids())),
        )
        restarts = CounterMetricFamily(
            "chatstore_child_restarts",
            "Child workers restarted after dying unexpectedly, by how they died "
            "(signal: killed by one; exit: a non-zero exit code).",
            labels=["reason"],
        )
        for reason in ("signal", "exit"):
            restarts.add_metric([reason], float(self._restarts[reason]))
        yield restarts

    def _merge(self, pattern: str) -> list[Metric]:
        files = glob.glob(os.path.join(glob.escape(str(self._directory)), pattern))
        # prometheus-client has no annotations on merge.
        return list(MultiProcessCollector.merge(files, accumulate=True))  # type: ignore[no-untyped-call]

    @staticmethod
    def _ready_by_pid(families: list[Metric]) -> dict[int, float]:
        return {
            int(sample.labels["pid"]): sample.value
            for family in families
            if family.name == READY
            for sample in family.samples
        }

    def _all_ready(self, ready_by_pid: dict[int, float]) -> bool:
        pids = self._live_pids()
        return len(pids) >= self._expected and all(ready_by_pid.get(pid) == 1.0 for pid in pids)
