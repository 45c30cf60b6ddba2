"""Tracing and metrics of a tier job: its span says where it runs and how it ended; its metrics count
it, its calls, its tokens and its requeues. Also sets telemetry up in each worker process."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleet import telemetry
from fleet.middleware.base import Job, Middleware, Requeue
from fleet.middleware.start import StartAnswer
from fleet.models import TaskResult

if TYPE_CHECKING:
    from fleet.runtime import Runtime

__all__ = ["Telemetry"]


class Telemetry(Middleware):
    # -- the worker --------------------------------------------------------------------------------

    def before_worker_boot(self, runtime: Runtime, worker: Any) -> None:
        # Threads and solo pools run tasks in this process; a prefork pool's children set up after the fork.
        role = runtime.role()
        if telemetry.on_worker_init(worker, runtime.settings, role) and role == "escalations":
            from fleet.monitor import queue_snapshot  # deferred: only the escalations worker reports queues

            telemetry.register_queue_gauges(lambda: queue_snapshot(runtime.settings, runtime.client))

    def after_process_boot(self, runtime: Runtime) -> None:
        telemetry.on_worker_process_init(runtime.settings, runtime.role())

    def before_process_shutdown(self, runtime: Runtime) -> None:
        telemetry.shutdown()  # a prefork child leaves through os._exit: no atexit flush

    # -- a job -------------------------------------------------------------------------------------

    def after_start(self, job: Job, answer: StartAnswer) -> None:
        span = telemetry.task_span("execute", {"fleet.task_id": job.id, "fleet.kind": job.request.kind})
        telemetry.set_routing(span, job.routing)

    def on_requeue(self, job: Job, requeue: Requeue) -> None:
        telemetry.record_requeue(job.consumed_from, "upgrade" if requeue.queue else "wait")
        telemetry.task_span("execute", {"fleet.requeue.countdown_s": round(requeue.countdown_s, 3)})

    def before_finish(self, job: Job, result: TaskResult) -> None:
        span = telemetry.task_span("execute")
        if span.is_recording():
            span.set_attributes({
                "fleet.outcome": result.status,
                "fleet.cost_usd": result.cost_usd,
                "gen_ai.usage.input_tokens": result.input_tokens,
                "gen_ai.usage.output_tokens": result.output_tokens,
                "fleet.attempts": len(result.attempts),
            })  # fmt: skip
            if result.fallback_index is not None:
                span.set_attribute("fleet.fallback.index", result.fallback_index)
            if result.model:
                span.set_attribute("gen_ai.response.model", result.model)
        telemetry.record_job(result, job.charged(result))
