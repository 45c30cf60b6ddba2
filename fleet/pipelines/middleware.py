"""The tier job's pipeline middleware: a step's final result moves its pipeline on.

It runs after the job's last round trip went out (the step's result is stored first, so a crash in
between finds it): on a redelivery of a step already finished (``Skip``) it reports the stored result
again, which :meth:`fleet.pipelines.engine.Pipelines.advance` counts once. A run whose writes were
superseded (another worker took the job over) reports nothing: that worker will.
"""

from __future__ import annotations

from fleet import keys
from fleet.middleware.base import Job, Middleware
from fleet.models import TaskResult
from fleet.pipelines.engine import Pipelines

__all__ = ["PipelineStep"]

_NOTE = "PipelineStep"


class PipelineStep(Middleware):
    def __init__(self, pipelines: Pipelines) -> None:
        self.pipelines = pipelines

    def before_finish(self, job: Job, result: TaskResult) -> None:
        if job.envelope.step is not None and job.envelope.shadow is None:
            job.notes[_NOTE] = result

    def after_flush(self, job: Job, written: bool) -> None:
        ref = job.envelope.step
        if ref is None or job.envelope.shadow is not None:
            return
        result: TaskResult | None = job.notes.get(_NOTE) if written else None
        if result is None and job.skipped:
            result = self._stored(job.id)
        if result is not None:
            self.pipelines.advance(ref, result)

    def _stored(self, task_id: str) -> TaskResult | None:
        from fleet.producer import decode_result  # deferred: the producer imports the runtime's modules

        raw = self.pipelines.client.get(keys.result(task_id))
        return decode_result(raw) if raw is not None else None
