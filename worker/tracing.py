"""Setting up OpenTelemetry's SDK for the worker, from the standard OTEL_* variables.

Only when the ``otel`` extra is installed and the environment asks for traces
(``OTEL_TRACES_EXPORTER``, or an OTLP endpoint) does the worker install a
tracer provider; otherwise it leaves tracing alone, and its spans are the
API's no-ops. A provider set up already (``opentelemetry-instrument chatstore
worker``) is kept as it is; a warning says when its span limits would cut the
links of a full batch.

Exporters are found by name the way the SDK's own configuration finds them,
through the ``opentelemetry_traces_exporter`` entry points: ``console`` ships
with the SDK; ``otlp`` (gRPC) and ``otlp_proto_http`` come with the OTLP
exporter packages, which the operator installs. Sampling, span limits and
the resource come from the SDK's own variables (``OTEL_TRACES_SAMPLER``,
``OTEL_SPAN_LINK_COUNT_LIMIT``, ``OTEL_SERVICE_NAME``, ...).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.metadata import entry_points

import structlog

from worker.settings import ConfigurationError

log = structlog.get_logger("chatstore.tracing")

_EXPORTERS_GROUP = "opentelemetry_traces_exporter"


def requested_exporters(environ: Mapping[str, str]) -> list[str]:
    """The exporter names the environment asks for; empty when it asks for no traces."""
    names = [name.strip() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [name for name in names if name]
    if not names and (
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        names = ["otlp"]  # the SDK's default exporter, asked for by its endpoint
    return [] if names == ["none"] else names


def _one_line(error: BaseException) -> str:
    """The message of ``error`` on one line, for the one-line error of bad configuration."""
    return " ".join(str(error).split())


def _max_links(provider: object) -> int | None:
    """The most links a span of ``provider`` keeps; None for no limit, or unknown.

    The SDK has no public accessor for a provider's span limits, so this reads
    its private ``_span_limits``, defensively: a provider of another SDK, or
    a later version that renames the attribute, gives None (no warning).
    """
    max_links = getattr(getattr(provider, "_span_limits", None), "max_links", None)
    return max_links if isinstance(max_links, int) else None


def _warn_if_links_are_cut(max_links: int | None, links_per_span: int) -> None:
    """Warn when a ``process`` span of a full batch would lose links to the span limit."""
    if max_links is not None and max_links < links_per_span:
        log.warning(
            "tracing.link_limit_low",
            limit=max_links,
            batch_size=links_per_span,
            note="a process span keeps only the first links of a larger batch; "
            "set OTEL_SPAN_LINK_COUNT_LIMIT to at least CHATSTORE_BATCH_MAX_SIZE",
        )


def configure(*, links_per_span: int) -> bool:
    """Install a tracer provider as the environment asks; True if one was installed.

    ``links_per_span`` is the batch size, the most links a ``process`` span
    can have: the SDK's default limit (128) would drop the rest, so it is
    raised to it unless ``OTEL_SPAN_LINK_COUNT_LIMIT`` says otherwise. A
    limit below it, set by that variable or by a provider that is kept, is
    logged as ``tracing.link_limit_low``.
    Raises :class:`ConfigurationError` for an exporter that is not installed
    or cannot be set up, and for a span limit that is not a number.
    """
    names = requested_exporters(os.environ)
    try:
        from opentelemetry import trace
    except ImportError:
        if names:
            log.warning(
                "tracing.unavailable",
                note="OTEL_TRACES_EXPORTER is set, but the otel extra is not installed",
            )
        return False
    kept = trace.get_tracer_provider()
    if not isinstance(kept, trace.ProxyTracerProvider):
        # Checked whatever the variables say: opentelemetry-instrument sets up
        # its provider (OTLP by default) without OTEL_TRACES_EXPORTER.
        log.info("tracing.provider_kept", note="a tracer provider is configured already")
        _warn_if_links_are_cut(_max_links(kept), links_per_span)
        return False
    if not names:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import SpanLimits, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
    except ImportError:
        log.warning(
            "tracing.unavailable",
            note="OTEL_TRACES_EXPORTER is set, but the OpenTelemetry SDK is not installed",
        )
        return False
    except ValueError as error:
        # The SDK reads some span limits at import, and its message names
        # the variable ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT must be ...").
        raise ConfigurationError(_one_line(error)) from error

    exporters: list[SpanExporter] = []
    for name in names:
        found = entry_points(group=_EXPORTERS_GROUP, name=name)
        if not found:
            raise ConfigurationError(
                f"OTEL_TRACES_EXPORTER: no exporter {name!r} is installed "
                f"(for otlp: pip install opentelemetry-exporter-otlp)"
            )
        try:
            exporters.append(next(iter(found)).load()())
        except Exception as error:
            # Third-party code: its own import may fail (a missing grpcio) or
            # its constructor refuse its OTEL_EXPORTER_* settings, in ways no
            # list of exception types would cover; any of them means the
            # exporter asked for cannot run, which is bad configuration.
            raise ConfigurationError(
                f"OTEL_TRACES_EXPORTER: the exporter {name!r} could not be set up: "
                f"{type(error).__name__}: {_one_line(error)}"
            ) from error

    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "chatstore"}))
    limit = None if "OTEL_SPAN_LINK_COUNT_LIMIT" in os.environ else max(128, links_per_span)
    try:
        limits = SpanLimits(max_links=limit)
    except ValueError as error:  # the SDK's message names the variable
        raise ConfigurationError(_one_line(error)) from error
    _warn_if_links_are_cut(limits.max_links, links_per_span)
    provider = TracerProvider(resource=resource, span_limits=limits)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # shut down (flushed) at exit by the SDK
    log.info("tracing.configured", exporters=names)
    return True
