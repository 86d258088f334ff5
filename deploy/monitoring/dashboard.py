"""The Grafana dashboard for chatstore, built with grafana-foundation-sdk.

``generate.py`` writes it to grafana-dashboard.json. The queries use the
dashboard's variables ``$datasource``, ``$job`` and ``$vhost`` and Grafana's
``$__rate_interval``; everything else is PromQL, which tests/test_dashboard.py
parses with promtool.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Final

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog import builder as cog
from grafana_foundation_sdk.cog import variants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models

from deploy.monitoring import rules

UID: Final = "chatstore"
DATASOURCE: Final = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
WORKER: Final = 'job=~"$job"'
"""The matcher every chatstore_* query carries."""


def _queue(family: str, queue: str) -> str:
    name = f"rabbitmq_(detailed_)?queue_{family}"
    return f'max by (vhost, queue) ({{__name__=~"{name}", vhost=~"$vhost", queue="{queue}"}})'


def _quantiles(histogram: str, *quantiles: float) -> list[tuple[str, str]]:
    buckets = f"sum by (le) (rate({histogram}_bucket{{{WORKER}}}[$__rate_interval]))"
    return [(f"histogram_quantile({q}, {buckets})", f"p{round(q * 100)}") for q in quantiles]


def _mean(histogram: str) -> tuple[str, str]:
    rate = "sum(rate({name}{{{matcher}}}[$__rate_interval]))"
    total = rate.format(name=f"{histogram}_sum", matcher=WORKER)
    count = rate.format(name=f"{histogram}_count", matcher=WORKER)
    return f"{total} / {count}", "mean"


def _targets(queries: list[tuple[str, str]]) -> list[cog.Builder[variants.Dataquery]]:
    return [
        prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + n))
        for n, (expr, legend) in enumerate(queries)
    ]


def _graph(
    title: str,
    description: str,
    unit: str,
    queries: list[tuple[str, str]],
    *,
    width: int = 12,
    threshold: float | None = None,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .span(width)
        .height(8)
        .line_width(1)
        .fill_opacity(10)
        .legend(
            common_builders.VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
        )
    )
    for target in _targets(queries):
        panel = panel.with_target(target)
    if threshold is not None:  # drawn as a red line: the alert's threshold
        steps = [models.Threshold(None, "green"), models.Threshold(threshold, "red")]
        line = common_builders.GraphThresholdsStyleConfig().mode(
            common.GraphThresholdsStyleMode.LINE
        )
        panel = panel.thresholds(
            builders.ThresholdsConfig().mode(models.ThresholdsMode.ABSOLUTE).steps(steps)
        ).thresholds_style(line)
    return panel


def _stat(title: str, description: str, expr: str, legend: str) -> stat.Panel:
    panel = stat.Panel().title(title).description(description).datasource(DATASOURCE)
    for target in _targets([(expr, legend)]):
        panel = panel.with_target(target)
    return panel.span(6).height(4)


def _rows() -> list[tuple[str, list[timeseries.Panel | stat.Panel]]]:
    events = f"chatstore_events_total{{{WORKER}}}"
    return [
        (
            "Overview",
            [
                _stat(
                    "Workers ready",
                    "Targets whose chatstore_ready is 1, out of all that report it.",
                    f"sum(chatstore_ready{{{WORKER}}})",
                    "ready",
                ),
                _stat(
                    "Workers reporting",
                    "Targets (workers or supervisors) that export chatstore_ready.",
                    f"count(chatstore_ready{{{WORKER}}})",
                    "reporting",
                ),
                _stat(
                    "Events waiting",
                    f"Messages ready in {rules.QUEUE}.",
                    _queue("messages_ready", rules.QUEUE),
                    "{{vhost}}",
                ),
                _stat(
                    "Dead letters held",
                    f"Messages in {rules.DLQ}.",
                    _queue("messages", rules.DLQ),
                    "{{vhost}}",
                ),
            ],
        ),
        (
            "Throughput",
            [
                _graph(
                    "Events by outcome",
                    "Events handled per second: inserted, duplicate, archived, dead_lettered.",
                    "ops",
                    [(f"sum by (outcome) (rate({events}[$__rate_interval]))", "{{outcome}}")],
                ),
                _graph(
                    "Dead letters by reason",
                    "Events the worker sent to the DLQ per second, by reason "
                    "(the broker's own delivery_limit dead letters show in the DLQ depth only).",
                    "ops",
                    [
                        (
                            "sum by (reason) (rate(chatstore_events_total"
                            f'{{{WORKER}, outcome="dead_lettered"}}[$__rate_interval]))',
                            "{{reason}}",
                        )
                    ],
                ),
            ],
        ),
        (
            "Batches",
            [
                _graph(
                    "Batch size",
                    "Deliveries per flushed batch (CHATSTORE_BATCH_MAX_SIZE caps it).",
                    "short",
                    [*_quantiles("chatstore_batch_size", 0.5, 0.99), _mean("chatstore_batch_size")],
                    width=8,
                ),
                _graph(
                    "Flush time",
                    "From a batch's close to its acknowledgement: write, commit, DLQ, ack.",
                    "s",
                    [
                        *_quantiles("chatstore_flush_seconds", 0.5, 0.99),
                        _mean("chatstore_flush_seconds"),
                    ],
                    width=8,
                ),
                _graph(
                    "Batches per second",
                    "Flushed batches per second.",
                    "ops",
                    [
                        (
                            f"sum(rate(chatstore_batch_size_count{{{WORKER}}}[$__rate_interval]))",
                            "batches",
                        )
                    ],
                    width=8,
                ),
            ],
        ),
        (
            "Lag and retries",
            [
                _graph(
                    "Publish-to-commit lag",
                    "From an event's occurred_at to the commit that stored it. "
                    "The red line is ChatstorePublishToCommitLagHigh's threshold for p99.",
                    "s",
                    _quantiles("chatstore_publish_to_commit_seconds", 0.5, 0.9, 0.99),
                    threshold=rules.LAG_P99_SECONDS,
                ),
                _graph(
                    "Retries by SQLSTATE",
                    "Batch writes retried per second after a transient failure "
                    "('none': no SQLSTATE, such as a refused connection). "
                    "The red line is ChatstoreRetriesHigh's threshold.",
                    "ops",
                    [
                        (
                            "sum by (sqlstate) (rate(chatstore_retries_total"
                            f"{{{WORKER}}}[$__rate_interval]))",
                            "{{sqlstate}}",
                        )
                    ],
                    threshold=rules.RETRIES_PER_SECOND,
                ),
            ],
        ),
        (
            "Workers",
            [
                _graph(
                    "Readiness",
                    "chatstore_ready per target: 1 while connected to both servers and writing.",
                    "short",
                    [(f"chatstore_ready{{{WORKER}}}", "{{instance}}")],
                    width=8,
                ),
                _graph(
                    "Child processes",
                    "Under chatstore worker --processes N: the children running now.",
                    "short",
                    [(f"chatstore_processes{{{WORKER}}}", "{{instance}}")],
                    width=8,
                ),
                _graph(
                    "Child restarts",
                    "Children restarted after dying unasked, by how they died.",
                    "short",
                    [
                        (
                            "sum by (instance, reason) (increase(chatstore_child_restarts_total"
                            f"{{{WORKER}}}[$__rate_interval]))",
                            "{{instance}} {{reason}}",
                        )
                    ],
                    width=8,
                ),
            ],
        ),
        (
            "RabbitMQ (rabbitmq_prometheus, per-queue metrics)",
            [
                _graph(
                    f"{rules.QUEUE} depth",
                    "Ready and unacknowledged messages in the work queue.",
                    "short",
                    [
                        (_queue("messages_ready", rules.QUEUE), "{{vhost}} ready"),
                        (_queue("messages_unacked", rules.QUEUE), "{{vhost}} unacknowledged"),
                    ],
                    width=8,
                ),
                _graph(
                    "Consumers",
                    f"Consumers on {rules.QUEUE}: one per consuming worker (or child).",
                    "short",
                    [(_queue("consumers", rules.QUEUE), "{{vhost}}")],
                    width=8,
                ),
                _graph(
                    f"{rules.DLQ} depth",
                    "Dead letters waiting for `chatstore dlq inspect` or `replay`.",
                    "short",
                    [(_queue("messages", rules.DLQ), "{{vhost}}")],
                    width=8,
                ),
            ],
        ),
    ]


def model() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model, in plain dicts and lists."""
    board = (
        builders.Dashboard("chatstore")
        .uid(UID)
        .description("chatstore workers: throughput, batches, lag, retries, readiness, queues.")
        .tags(["chatstore", "rabbitmq", "postgresql"])
        .editable()
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .with_variable(
            builders.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(
            builders.QueryVariable("job")
            .label("Job")
            .datasource(DATASOURCE)
            .query("label_values(chatstore_ready, job)")
            .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
        .with_variable(
            builders.QueryVariable("vhost")
            .label("RabbitMQ vhost")
            .datasource(DATASOURCE)
            .query(
                'label_values({__name__=~"rabbitmq_(detailed_)?queue_messages_ready", '
                f'queue="{rules.QUEUE}"}}, vhost)'
            )
            .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )
    numbers = itertools.count(1)  # stable panel ids, for links to a panel
    for title, panels in _rows():
        board = board.with_row(builders.Row(title).id(next(numbers)))
        for panel in panels:
            board = board.with_panel(panel.id(next(numbers)))
    # The SDK's encoder turns its model objects into JSON; back to plain data.
    plain: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return plain
