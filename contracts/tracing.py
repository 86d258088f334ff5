"""The publishing caller's trace context, as message headers, when OpenTelemetry is installed.

With the ``otel`` extra (``chatstore[otel]``), each published event carries the
W3C ``traceparent`` and ``tracestate`` of the context that published it (or
whatever the globally configured propagators write), and the worker links its
batch span to it. Without the extra, or outside any span, nothing is added:
the import is guarded here, and only here.
"""

from __future__ import annotations

try:
    from opentelemetry import propagate, trace
except ImportError:  # the otel extra is not installed: publish as before
    propagate = None  # type: ignore[assignment]
    trace = None  # type: ignore[assignment]


def trace_headers() -> dict[str, str] | None:
    """The current context's trace headers, or None when there is nothing to propagate.

    Called by ``publish_nowait``, which must stay cheap and never raise: a
    context without a valid span (no SDK configured, or no span started)
    costs one look-up and adds nothing. Baggage without a span is therefore
    not propagated either.
    """
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    try:
        propagate.inject(carrier)
    except Exception:  # a third-party propagator's bug must not lose the event
        return None
    return carrier or None
