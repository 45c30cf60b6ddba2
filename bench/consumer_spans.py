"""CPU per task run of the consumer span: the fleet's (fleet/telemetry/consumer.py) beside
opentelemetry-instrumentation-celery's prerun/postrun, and beside none, in one process and one run.

A no-op Celery task runs eagerly (``apply``: the same trace function and signals as a worker's run)
N times per variant, with a ``traceparent`` header to extract, on a tracer provider whose spans are
recorded and dropped. The instrumentation is no dependency of the fleet: that variant runs only when
it is installed (``pip install opentelemetry-instrumentation-celery``), and is skipped otherwise.

Usage: python bench/consumer_spans.py [--json] [--tasks N]
Last stdout line: {"none_us", "fleet_us", "instrumentation_us", "fleet_extra_us",
"instrumentation_extra_us", "fleet_vs_instrumentation"} (CPU microseconds per task).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from celery import Celery
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from fleet.telemetry import consumer

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class _Drop(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _run(task: Any, n: int) -> float:
    """CPU microseconds per task over ``n`` runs (after a warm-up)."""
    for _ in range(200):
        task.apply(headers={"traceparent": PARENT})
    began = time.process_time()
    for _ in range(n):
        task.apply(headers={"traceparent": PARENT})
    return (time.process_time() - began) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tasks", type=int, default=20_000)
    args = parser.parse_args()
    app = Celery("bench", broker="memory://", backend="cache+memory://")
    app.conf.task_store_eager_result = False

    @app.task(name="bench.noop", ignore_result=True)
    def noop() -> None:
        return None

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_Drop()))
    out: dict[str, Any] = {"tasks": args.tasks, "none_us": round(_run(noop, args.tasks), 2)}
    consumer.connect(provider.get_tracer("fleet"))
    out["fleet_us"] = round(_run(noop, args.tasks), 2)
    consumer.disconnect()
    try:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
    except ImportError:
        out["instrumentation_us"] = None
    else:
        instrumentor = CeleryInstrumentor()
        instrumentor.instrument(tracer_provider=provider)
        out["instrumentation_us"] = round(_run(noop, args.tasks), 2)
        instrumentor.uninstrument()
    out["fleet_extra_us"] = round(out["fleet_us"] - out["none_us"], 2)
    if out["instrumentation_us"] is not None:
        out["instrumentation_extra_us"] = round(out["instrumentation_us"] - out["none_us"], 2)
        out["fleet_vs_instrumentation"] = round(out["fleet_extra_us"] / out["instrumentation_extra_us"], 3)
    if not args.json:
        print(f"per task: none {out['none_us']} us, fleet {out['fleet_us']} us, "
              f"instrumentation {out['instrumentation_us']} us")  # fmt: skip
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
