"""Setting up tracing and metrics in a process, from the standard ``OTEL_*`` variables.

- ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``: ``otlp``, ``console`` or ``none``
  (comma-separated for several), or the fleet's ``discard``: everything is recorded and exported
  as with a real exporter, then dropped (what telemetry costs without a backend; the benchmarks).
  Unset, they mean ``otlp`` when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
  the signal's own endpoint variable) is set, and nothing otherwise: an unconfigured fleet installs
  no provider at all, so a span costs a no-op call on the hot path.
- ``OTEL_EXPORTER_OTLP_PROTOCOL`` (or ``..._TRACES_PROTOCOL`` / ``..._METRICS_PROTOCOL``):
  ``grpc`` (the default, port 4317) or ``http/protobuf`` (port 4318). The exporters read the
  endpoint, headers, certificates and timeouts from their own ``OTEL_EXPORTER_OTLP_*`` variables.
- ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``: the resource; without a service name, it is
  ``telemetry.service_name`` plus the process's role (``fleet-router``, ``fleet-producer``).
- ``OTEL_SDK_DISABLED=true``: nothing at all.
- ``telemetry.trace_file`` (``fleet up|demo --trace-file F``): every finished span also goes to F as
  a JSON line, written synchronously so the file is current when a job's result is.

Setup is idempotent per process; a prefork child sets up its own (``worker_process_init``), a
threads or solo pool sets up once in the worker's main process (``worker_init``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from fleet.errors import ConfigError
from fleet.settings import Settings
from fleet.telemetry.jsonfile import JsonLinesSpanExporter
from fleet.telemetry.metrics import Instruments, QueueGauges, genai_latest

__all__ = [
    "TRACER_NAME",
    "DiscardMetricExporter",
    "DiscardSpanExporter",
    "exporter_names",
    "instruments",
    "is_configured",
    "register_queue_gauges",
    "setup",
    "shutdown",
    "state",
]

log = logging.getLogger(__name__)

#: The instrumentation scope of every span and metric the fleet makes.
TRACER_NAME = "fleet"
_VERSION = "0.1.0"
_KNOWN = ("otlp", "console", "none", "discard")


@dataclass
class TelemetryState:
    """What :func:`setup` installed in this process."""

    pid: int = -1
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    tracer: trace.Tracer | None = None
    instruments: Instruments | None = None
    gauges: QueueGauges | None = None
    capture_content: bool = False
    celery_instrumented: bool = False
    #: ``OTEL_SEMCONV_STABILITY_OPT_IN`` names ``gen_ai_latest_experimental``: the latest GenAI
    #: conventions' names (:mod:`fleet.telemetry.metrics`), not the v1.36 ones.
    genai_latest: bool = False


_state = TelemetryState()


def state() -> TelemetryState:
    """This process's telemetry (a fresh, empty one after a fork that did not set up again)."""
    return _state


def is_configured() -> bool:
    """Whether this process set up tracing or metrics."""
    return _state.pid == os.getpid() and (
        _state.tracer_provider is not None or _state.meter_provider is not None
    )


def instruments() -> Instruments | None:
    """The metric instruments, or None when metrics are off (callers skip recording)."""
    return _state.instruments if _state.pid == os.getpid() else None


def exporter_names(environ: Mapping[str, str], signal: str) -> list[str]:
    """The exporters named for ``signal`` ("traces" or "metrics"), without ``none``.

    Raises:
        ConfigError: an exporter name the fleet does not know.
    """
    var = f"OTEL_{signal.upper()}_EXPORTER"
    raw = environ.get(var)
    if raw is None or not raw.strip():
        endpoint = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get(
            f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    for name in names:
        if name not in _KNOWN:
            raise ConfigError(f"unknown exporter {name!r}", key=var, expected=f"one of {', '.join(_KNOWN)}")
    return [] if "none" in names else list(dict.fromkeys(names))


def _protocol(environ: Mapping[str, str], signal: str) -> str:
    var = f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"
    protocol = (environ.get(var) or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip().lower()
    if protocol not in ("grpc", "http/protobuf"):
        raise ConfigError(
            f"unsupported OTLP protocol {protocol!r}",
            key=var if environ.get(var) else "OTEL_EXPORTER_OTLP_PROTOCOL",
            expected="grpc or http/protobuf",
        )
    return protocol


class DiscardSpanExporter(SpanExporter):
    """Takes finished spans and drops them (``OTEL_TRACES_EXPORTER=discard``)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class DiscardMetricExporter(MetricExporter):
    """Takes collected metrics and drops them (``OTEL_METRICS_EXPORTER=discard``), remembering only
    the names of the process's last export's metrics (what a test can check)."""

    #: The metric names of the last export, in this process.
    last_names: ClassVar[frozenset[str]] = frozenset()

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **_: Any
    ) -> MetricExportResult:
        type(self).last_names = frozenset(
            metric.name
            for resource in metrics_data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        )
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **_: Any) -> None:
        return None


def _span_exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "discard":
        return DiscardSpanExporter()
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if _protocol(environ, "traces") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

        return Grpc()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    return Http()


def _metric_exporter(name: str, environ: Mapping[str, str]) -> MetricExporter:
    if name == "discard":
        return DiscardMetricExporter()
    if name == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter()
    if _protocol(environ, "metrics") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as Grpc

        return Grpc()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http

    return Http()


def _resource(settings: Settings, role: str, environ: Mapping[str, str]) -> Resource:
    attributes: dict[str, Any] = {"fleet.process": role, "service.version": _VERSION}
    if not environ.get("OTEL_SERVICE_NAME"):
        base = settings.telemetry.service_name
        attributes["service.name"] = f"{base}-{role}" if role else base
    return Resource.create(attributes)


def setup(
    settings: Settings,
    *,
    role: str = "",
    environ: Mapping[str, str] | None = None,
    force: bool = False,
    install_global: bool = True,
) -> bool:
    """Install tracing and metrics for this process as configured; True when anything is on.

    Idempotent per process: a second call does nothing (``force`` replaces what the first
    installed, for tests). The global providers are set only with ``install_global`` and when
    nobody set them before (a service that configured its own SDK keeps it; the fleet's spans
    still go to the fleet's own).

    Raises:
        ConfigError: an unknown exporter or protocol in the ``OTEL_*`` variables.
    """
    global _state
    env = os.environ if environ is None else environ
    if _state.pid != os.getpid():
        _state = TelemetryState(pid=os.getpid())  # after a fork: the parent's processors are not ours
    elif is_configured() and not force:
        return True
    _state.capture_content = settings.telemetry.capture_content
    _state.genai_latest = genai_latest(env)
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    span_names = exporter_names(env, "traces")
    metric_names = exporter_names(env, "metrics")
    trace_file = settings.telemetry.trace_file
    if not (span_names or trace_file or metric_names):
        return False
    if force:
        shutdown()
        _state.pid = os.getpid()
    resource = _resource(settings, role, env)
    if span_names or trace_file:
        provider = TracerProvider(resource=resource)
        for name in span_names:
            provider.add_span_processor(BatchSpanProcessor(_span_exporter(name, env)))
        if trace_file:
            provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(trace_file)))
        _state.tracer_provider = provider
        _state.tracer = provider.get_tracer(TRACER_NAME, _VERSION)
        if install_global and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(provider)
    if metric_names:
        readers: list[MetricReader] = [
            PeriodicExportingMetricReader(_metric_exporter(name, env)) for name in metric_names
        ]
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        _state.meter_provider = meter_provider
        _state.instruments = Instruments(
            meter_provider.get_meter(TRACER_NAME, _VERSION), latest=_state.genai_latest
        )
        if install_global and type(metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider":
            metrics.set_meter_provider(meter_provider)
    return True


def register_queue_gauges(snapshot: Callable[[], Mapping[str, Mapping[str, Any]]]) -> bool:
    """Register the queue depth and oldest-age gauges in this process (once); True when registered."""
    if _state.meter_provider is None or _state.pid != os.getpid() or _state.gauges is not None:
        return False
    _state.gauges = QueueGauges(_state.meter_provider.get_meter(TRACER_NAME, _VERSION), snapshot)
    return True


def shutdown() -> None:
    """Flush and stop what :func:`setup` installed in this process."""
    global _state
    if _state.pid != os.getpid():
        return
    if _state.tracer_provider is not None:
        _state.tracer_provider.shutdown()
    if _state.meter_provider is not None:
        _state.meter_provider.shutdown()
    _state = TelemetryState(pid=os.getpid(), capture_content=_state.capture_content,
                            celery_instrumented=_state.celery_instrumented,
                            genai_latest=_state.genai_latest)  # fmt: skip
