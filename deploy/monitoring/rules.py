"""The alert rules for chatstore, written once: ``generate.py`` renders them as a
Prometheus rules file and as a Prometheus Operator ``PrometheusRule``.

Each alert's runbook is the subsection of docs/OPERATIONS.md named after it
("## Alerts and runbooks"); ``runbook_url`` points there.

Where the numbers come from:

- ``chatstore_*`` are the worker's own metrics (worker/metrics.py, and the
  supervisor's in worker/supervise/children.py), one target per worker or
  supervisor.
- ``rabbitmq_*`` come from RabbitMQ's ``rabbitmq_prometheus`` plugin, and
  need *per-queue* samples (labels ``vhost`` and ``queue``): scrape
  ``/metrics/detailed?family=queue_coarse_metrics&family=queue_consumer_count``
  (names ``rabbitmq_detailed_queue_*``) or ``/metrics/per-object`` (names
  ``rabbitmq_queue_*``). The default ``/metrics`` sums every queue into one
  unlabelled sample, on which no rule here can tell chatstore's queues apart;
  ChatstoreQueueMetricsMissing says so when it happens. Either name is
  matched, and ``max by`` over the nodes of a cluster takes the node that
  reports the queue (each node reports only what it holds).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

QUEUE: Final = "chatstore.events"  # worker.topology.QUEUE, docs/CONTRACT.md section 4
DLQ: Final = "chatstore.events.dlq"  # worker.topology.DLQ

RUNBOOKS: Final = "docs/OPERATIONS.md"
"""Where ``runbook_url`` points; ``generate.py --runbook-base`` puts a URL of your own."""

# The thresholds, each with why it is where it is.
DEAD_LETTER_WINDOW: Final = "10m"  # dead letters counted over this; the alert lasts as long
LAG_P99_SECONDS: Final = 10  # a bucket bound of chatstore_publish_to_commit_seconds; normal is <1 s
RETRIES_PER_SECOND: Final = 0.1  # one retried batch every 10 s; a healthy worker retries ~never
NOT_READY_FOR: Final = "5m"  # the five minutes; a reconnect takes seconds
WORKER_SEEN_WITHIN: Final = "6h"  # a target is chatstore's if it served chatstore_ready since


def _rabbitmq(family: str, queue: str, offset: str = "") -> str:
    """A RabbitMQ per-queue series from either per-queue endpoint, one value per queue."""
    name = f"rabbitmq_(detailed_)?queue_{family}"
    selector = f'{{__name__=~"{name}", queue="{queue}"}}' + (f" offset {offset}" if offset else "")
    return f"max by (namespace, job, vhost, queue) ({selector})"


def _dead_lettered(offset: str = "") -> str:
    return 'chatstore_events_total{outcome="dead_lettered"}' + offset


@dataclass(frozen=True)
class Alert:
    """One alerting rule; ``name`` is also its runbook's heading."""

    name: str
    expr: str
    for_: str  # "0m": fires at the first evaluation that holds
    severity: Literal["warning", "critical"]
    summary: str
    description: str

    def rule(self, runbook_base: str) -> dict[str, Any]:
        """The rule as Prometheus reads it (one entry of a group's ``rules``)."""
        rule: dict[str, Any] = {"alert": self.name, "expr": self.expr}
        if self.for_ != "0m":
            rule["for"] = self.for_
        rule["labels"] = {"severity": self.severity}
        rule["annotations"] = {
            "summary": self.summary,
            "description": self.description,
            "runbook_url": f"{runbook_base}#{self.name.lower()}",
        }
        return rule


def _expr(text: str) -> str:
    return textwrap.dedent(text).strip() + "\n"


ALERTS: Final = (
    Alert(
        name="ChatstoreDeadLetters",
        # Per series, then summed: a series that is new since the window began
        # (the worker makes a reason's series at its first dead letter) counts
        # whole, which is exact, as increase() sees nothing of its first
        # sample; any other series counts its increase(). Not a plain
        # difference (x - x offset 10m) for those: a worker restarted in place
        # keeps its labels and restarts its counter at 0, so the difference
        # would be negative, or too small, and miss the dead letters since the
        # restart; increase() counts across the reset. Its price is that it
        # extrapolates to the window's edges, so the description says "about".
        expr=_expr(
            f"""
            sum by (namespace, job, reason) (
              ({_dead_lettered()} unless {_dead_lettered(f" offset {DEAD_LETTER_WINDOW}")})
              or
              increase({_dead_lettered()}[{DEAD_LETTER_WINDOW}])
            ) > 0
            """
        ),
        for_="0m",
        severity="warning",
        summary="chatstore dead-lettered events ({{ $labels.reason }})",
        description=(
            'About {{ $value | printf "%.0f" }} event(s) went to '
            f"{DLQ} with reason {{{{ $labels.reason }}}} in the last {DEAD_LETTER_WINDOW} "
            "(job {{ $labels.job }}). The reason says whose problem it is: "
            "`chatstore dlq inspect` shows samples."
        ),
    ),
    Alert(
        name="ChatstorePublishToCommitLagHigh",
        expr=_expr(
            f"""
            histogram_quantile(0.99,
              sum by (namespace, job, le) (rate(chatstore_publish_to_commit_seconds_bucket[5m]))
            ) > {LAG_P99_SECONDS}
            """
        ),
        for_="10m",
        severity="warning",
        summary="chatstore stores events late: p99 publish-to-commit lag above "
        f"{LAG_P99_SECONDS} s",
        description=(
            "The 99th percentile of the time from an event's occurred_at to its commit is "
            "{{ $value | humanize }} s (job {{ $labels.job }}) for 10 minutes. "
            "A backlog, slow commits, or old events replayed from the DLQ."
        ),
    ),
    Alert(
        name="ChatstoreWorkerNotReady",
        expr=_expr("chatstore_ready == 0"),
        for_=NOT_READY_FOR,
        severity="warning",
        summary="chatstore worker {{ $labels.instance }} not ready",
        description=(
            "{{ $labels.instance }} (job {{ $labels.job }}) has answered /readyz with 503 "
            f"for {NOT_READY_FOR}: it cannot reach PostgreSQL or RabbitMQ, or (under a "
            "supervisor) a child is down. It stores nothing meanwhile."
        ),
    ),
    Alert(
        name="ChatstoreWorkerDown",
        # Only targets that served chatstore_ready in the last 6 hours are
        # chatstore's, whatever the scrape job is called. Six hours, not a
        # day: each evaluation loads every sample of the window. So that the
        # alert does not resolve itself 6 hours into an outage, a target it
        # fires for stays chatstore's while it is down (ALERTS, the series
        # Prometheus keeps of its own alerts).
        expr=_expr(
            f"""
            up == 0
            and on (job, instance) (
              present_over_time(chatstore_ready[{WORKER_SEEN_WITHIN}])
              or ALERTS{{alertname="ChatstoreWorkerDown", alertstate="firing"}}
            )
            """
        ),
        for_="5m",
        severity="warning",
        summary="chatstore worker {{ $labels.instance }} does not answer scrapes",
        description=(
            "Prometheus has failed to scrape {{ $labels.instance }} (job {{ $labels.job }}) "
            "for 5 minutes: the process is gone, hung, or unreachable on its HTTP port."
        ),
    ),
    Alert(
        name="ChatstoreRetriesHigh",
        expr=_expr(
            f"""
            sum by (namespace, job, sqlstate) (rate(chatstore_retries_total[5m]))
              > {RETRIES_PER_SECOND}
            """
        ),
        for_="10m",
        severity="warning",
        summary="chatstore retries batch writes ({{ $labels.sqlstate }})",
        description=(
            'Batch writes are retried {{ printf "%.2f" $value }} times a second with SQLSTATE '
            "{{ $labels.sqlstate }} (job {{ $labels.job }}) for 10 minutes: the database "
            "is away, failing over, or the writes conflict."
        ),
    ),
    Alert(
        name="ChatstoreEventsNotConsumed",
        expr=_expr(
            f"""
            {_rabbitmq("messages_ready", QUEUE)} > 0
            and on (namespace, job, vhost, queue)
            {_rabbitmq("consumers", QUEUE)} == 0
            """
        ),
        for_="5m",
        severity="critical",
        summary=f"Nothing consumes {QUEUE} in vhost {{{{ $labels.vhost }}}}",
        description=(
            f"{QUEUE} in vhost {{{{ $labels.vhost }}}} has held messages with no consumer "
            "for 5 minutes: no chatstore worker runs, reaches the broker, or reaches the "
            "database (a worker stops consuming while it cannot write). Chat history is "
            "not being stored."
        ),
    ),
    Alert(
        name="ChatstoreDeadLetterQueueGrowing",
        expr=_expr(
            f"""
            {_rabbitmq("messages", DLQ)}
            - {_rabbitmq("messages", DLQ, offset="15m")}
            > 0
            """
        ),
        for_="15m",
        severity="warning",
        summary=f"{DLQ} keeps growing in vhost {{{{ $labels.vhost }}}}",
        description=(
            f"{DLQ} in vhost {{{{ $labels.vhost }}}} has held more messages than 15 minutes "
            "before, for 15 minutes (now {{ $value }} more). This counts the broker's own "
            "dead letters (reason delivery_limit) too, which no worker metric sees."
        ),
    ),
    Alert(
        name="ChatstoreQueueMetricsMissing",
        expr=_expr(
            f'absent({{__name__=~"rabbitmq_(detailed_)?queue_messages_ready", queue="{QUEUE}"}})'
        ),
        for_="15m",
        severity="warning",
        summary=f"No per-queue RabbitMQ metrics for {QUEUE}",
        description=(
            f"Prometheus has no per-queue sample of {QUEUE} from the rabbitmq_prometheus "
            "plugin, so ChatstoreEventsNotConsumed and ChatstoreDeadLetterQueueGrowing "
            "cannot fire. Scrape /metrics/detailed (or /metrics/per-object) on every node."
        ),
    ),
    Alert(
        name="ChatstoreChildRestarts",
        expr=_expr(
            """
            sum by (namespace, job, instance, reason) (
              increase(chatstore_child_restarts_total[10m])
            ) > 0
            """
        ),
        for_="0m",
        severity="warning",
        summary=(
            "chatstore supervisor {{ $labels.instance }} restarted a child ({{ $labels.reason }})"
        ),
        description=(
            "A child worker of {{ $labels.instance }} died unasked and was restarted "
            "({{ $value | humanize }} in 10 minutes, reason {{ $labels.reason }}: signal is "
            "often the kernel's OOM killer)."
        ),
    ),
)


def groups(
    *, runbook_base: str = RUNBOOKS, for_overrides: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """The rule groups; ``for_overrides`` maps alert names to another ``for`` (tests only)."""
    overrides = dict(for_overrides or {})
    unknown = set(overrides) - {alert.name for alert in ALERTS}
    if unknown:
        raise ValueError(f"no such alert: {', '.join(sorted(unknown))}")
    alerts = [replace(alert, for_=overrides.get(alert.name, alert.for_)) for alert in ALERTS]
    return [{"name": "chatstore", "rules": [alert.rule(runbook_base) for alert in alerts]}]
