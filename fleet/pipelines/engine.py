"""Runs pipelines: each step a job on its tier's queue, the next sent when a step (or every item of a
map step) has its final answer.

Why not a Celery canvas: a chain's continuation rides in the message and fires when a task
succeeds, and a chord's counter lives in the result backend. A step the fleet hands to people must
stop its pipeline and resume it on a person's answer, hours later, from the inbox; and a retried
step must re-run alone. So a pipeline's state is one Redis hash (:func:`fleet.keys.pipeline`) and the
mechanism is the canvas's, made resumable: the finished step sends the next (as a chain does) and a
map's join is a counter (as the Redis backend's chord is).

Every step has a fixed task id (``<pipeline id>.<step>``, ``<pipeline id>.<step>.<item>``), so a
step sent twice (a redelivery that reports again) runs once: its second copy finds the result and
is skipped. :meth:`Pipelines.advance` is idempotent: an item is counted once (``pipeline_step.lua``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from fleet import keys, scripts, telemetry
from fleet.app import FleetCelery, queue_result
from fleet.errors import InvalidRequest, Reason
from fleet.escalations import NewEscalation
from fleet.models import JobEnvelope, RoutingDecision, StepRef, StepResult, TaskRequest, TaskResult, Tier
from fleet.pipelines.config import Pipeline, Step, known
from fleet.pipelines.render import RenderError, map_items, render
from fleet.settings import Settings

__all__ = ["Pipelines", "step_id", "step_of"]

log = logging.getLogger(__name__)

#: A pipeline's final state (of its result).
Final = Literal["completed", "escalated", "discarded", "cancelled"]
#: Hands a pipeline itself to people (its input could not be built); returns its escalated result.
Escalate = Callable[[NewEscalation], TaskResult]


def step_id(pipeline_id: str, step: str, index: int | None = None) -> str:
    """The task id of a pipeline's step (or of one item of a map step)."""
    return f"{pipeline_id}.{step}" if index is None else f"{pipeline_id}.{step}.{index}"


def step_of(task_id: str) -> tuple[str, str, int | None] | None:
    """``(pipeline id, step, item)`` of a step's task id, or None for an id of another shape."""
    parts = task_id.split(".")
    if len(parts) == 2 and parts[0] and parts[1]:
        return parts[0], parts[1], None
    if len(parts) == 3 and parts[0] and parts[1] and parts[2].isdigit():
        return parts[0], parts[1], int(parts[2])
    return None


def _field(step: str, index: int | None) -> str:
    return step if index is None else f"{step}:{index}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Pipelines:
    """Starts pipelines and moves them on. One per process; thread-safe."""

    def __init__(
        self, settings: Settings, client: Any, app: FleetCelery, *, escalate: Escalate | None = None
    ) -> None:
        self.settings = settings
        self.client = client
        self.app = app
        self.escalate = escalate
        self._record = scripts.register(client, "pipeline_step")

    @property
    def ttl_s(self) -> int:
        return int(self.settings.broker.result_expires_s)

    def pipeline(self, name: str) -> Pipeline:
        """Raises InvalidRequest: no pipeline of that name."""
        return known(self.settings.pipelines, name)

    # -- starting ----------------------------------------------------------------------------------

    def start(self, request: TaskRequest, envelope: JobEnvelope) -> None:
        """Record a pipeline's state (once: a redelivered start finds it) and send its first step.

        Raises:
            InvalidRequest: the pipeline is not configured here.
        """
        assert request.pipeline is not None
        pipeline = self.pipeline(request.pipeline)
        state_key = keys.pipeline(envelope.id)
        fields = {
            "name": pipeline.name,
            "request": request.model_dump_json(exclude_defaults=True),
            "submitted_at": repr(envelope.submitted_at),
            "traceparent": telemetry.current_traceparent() or "",
        }
        if self.client.hsetnx(state_key, "name", pipeline.name):
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(state_key, mapping=fields)
            pipe.expire(state_key, self.ttl_s)
            pipe.execute()
        self._send_step(envelope.id, pipeline, 0, self._state(envelope.id))

    # -- moving on ---------------------------------------------------------------------------------

    def ref(self, task_id: str) -> StepRef | None:
        """The step a task id is, when its pipeline is known here (one read)."""
        parsed = step_of(task_id)
        if parsed is None:
            return None
        pipeline_id, step, index = parsed
        name = self.client.hget(keys.pipeline(pipeline_id), "name")
        if name is None:
            return None
        return StepRef(pipeline_id=pipeline_id, pipeline=_text(name), step=step, index=index)

    def advance(self, ref: StepRef, result: TaskResult) -> None:
        """A step's final result: count it and send the next step when its join is complete; or
        give the pipeline the step's escalated or discarded state. Idempotent."""
        pipeline = self.settings.pipelines.get(ref.pipeline)
        if pipeline is None:
            log.error("pipeline %s of task %s is not configured here", ref.pipeline, result.task_id)
            return
        if result.status != "completed":
            state = self._state(ref.pipeline_id)
            if state:
                failed = self._summary(ref, result)
                self._finish(ref.pipeline_id, pipeline, state, result.status, failed=failed, cause=result)
            return
        if pipeline.step(ref.step).map is not None and ref.index is None:
            # A person answered a map step whose items could not be built: one item, their answer.
            self.client.hsetnx(keys.pipeline(ref.pipeline_id), f"n:{ref.step}", 1)
            ref = ref.model_copy(update={"index": 0})
        summary = self._summary(ref, result).model_dump_json(exclude_none=True)
        reply = self._record(
            keys=[keys.pipeline(ref.pipeline_id)],
            args=[_field(ref.step, ref.index), summary, result.answer or "", ref.step, self.ttl_s],
            client=self.client,
        )
        state = {_text(reply[i]): _text(reply[i + 1]) for i in range(0, len(reply), 2)}
        if not state:
            log.warning("pipeline %s has no state (expired?): step %s dropped", ref.pipeline_id, ref.step)
            return
        k = pipeline.index(ref.step)
        step = pipeline.steps[k]
        expected = int(state.get(f"n:{step.name}", "1")) if step.map is not None else 1
        if int(state.get(f"done:{step.name}", "0")) < expected:
            return
        if k + 1 < len(pipeline.steps) and self.client.hexists(keys.job(ref.pipeline_id), "cancelled"):
            self._finish(ref.pipeline_id, pipeline, state, "cancelled")  # cancelled: no next step
        elif k + 1 < len(pipeline.steps):
            self._send_step(ref.pipeline_id, pipeline, k + 1, state)
        else:
            self._finish(ref.pipeline_id, pipeline, state, "completed")

    def resend(self, ref: StepRef, *, retry_of: str, tier: Tier | None = None, by: str = "") -> None:
        """Run one step (or one item) again, its input built again from the pipeline's state: a
        person's retry from the inbox. ``tier`` pins it to another tier."""
        pipeline = self.pipeline(ref.pipeline)
        state = self._state(ref.pipeline_id)
        if not state:
            raise InvalidRequest([f"pipeline {ref.pipeline_id} has no state left (expired)"])
        pinned = None
        if tier is not None:
            pinned = RoutingDecision(
                tier=tier, classifier="human",
                reasons=[f"retried on tier {tier} by {by} from escalation {retry_of}"],
            )  # fmt: skip
        k = pipeline.index(ref.step)
        only = ref.index if pipeline.steps[k].map is not None and ref.index is not None else None
        self._send_step(ref.pipeline_id, pipeline, k, state, only=only, retry_of=retry_of, pinned=pinned)

    def forget(self, pipeline_id: str) -> None:
        """Delete a pipeline's escalated result (a person retries its failed step: waiters wait again)."""
        self.client.delete(keys.result(pipeline_id))

    # -- the state ---------------------------------------------------------------------------------

    def _state(self, pipeline_id: str) -> dict[str, str]:
        raw = self.client.hgetall(keys.pipeline(pipeline_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    def _outputs(self, pipeline: Pipeline, state: dict[str, str]) -> dict[str, str | list[str]]:
        outputs: dict[str, str | list[str]] = {}
        for step in pipeline.steps:
            if step.map is None:
                if f"out:{step.name}" in state:
                    outputs[step.name] = state[f"out:{step.name}"]
            elif f"n:{step.name}" in state:
                n = int(state[f"n:{step.name}"])
                outputs[step.name] = [state.get(f"out:{step.name}:{i}", "") for i in range(n)]
        return outputs

    def _send_step(
        self, pipeline_id: str, pipeline: Pipeline, k: int, state: dict[str, str], *, only: int | None = None,
        retry_of: str | None = None, pinned: RoutingDecision | None = None,
    ) -> None:  # fmt: skip
        """Send step ``k`` (every item of a map step, or item ``only``)."""
        step = pipeline.steps[k]
        request = TaskRequest.model_validate_json(state["request"])
        outputs = self._outputs(pipeline, state)
        prompts: list[tuple[int | None, str]] = []
        if step.map is None:
            prompts.append((None, render(step.prompt, input=request.ask, outputs=outputs)))
        else:
            try:
                items = map_items(step.map, outputs, request.ask, step.chunk_chars, step.max_items)
            except RenderError as exc:
                self._give_up(pipeline_id, pipeline, state, step, str(exc))
                return
            self.client.hset(keys.pipeline(pipeline_id), f"n:{step.name}", len(items))
            for i, item in enumerate(items):
                if only is None or i == only:
                    text = render(step.prompt, input=request.ask, outputs=outputs, item=item, index=i,
                                  count=len(items))  # fmt: skip
                    prompts.append((i, text))
        with telemetry.continued(state.get("traceparent")):
            for index, prompt in prompts:
                self._send(
                    pipeline_id, pipeline, step, index, prompt, request, retry_of=retry_of, pinned=pinned
                )

    def _send(
        self, pipeline_id: str, pipeline: Pipeline, step: Step, index: int | None, prompt: str,
        original: TaskRequest, retry_of: str | None = None, pinned: RoutingDecision | None = None,
    ) -> None:  # fmt: skip
        from fleet.producer import enqueue  # deferred: the producer imports the models this module does

        request = TaskRequest(
            prompt=prompt, system=step.system or original.system,
            kind=pipeline.kind(step), response_schema=step.response_schema,
            max_tokens=step.max_tokens or original.max_tokens, temperature=original.temperature,
            metadata=original.metadata, max_cost_usd=original.max_cost_usd, priority=original.priority,
        )  # fmt: skip
        task_id = step_id(pipeline_id, step.name, index)
        envelope = JobEnvelope(
            id=task_id,
            submitted_at=time.time(),
            step=StepRef(pipeline_id=pipeline_id, pipeline=pipeline.name, step=step.name, index=index),
            retry_of=retry_of,
            routing=pinned,
        )
        if pinned is None and step.tier != "router":
            at = "" if index is None else f" item {index + 1}"
            envelope.routing = RoutingDecision(
                tier=Tier(step.tier), classifier="pipeline",
                reasons=[f"pipeline {pipeline.name}: step {step.name}{at} runs on {step.tier}"],
            )  # fmt: skip
        payload = request.model_dump(mode="json", exclude_defaults=True)
        enqueue(self.app, self.settings, payload, envelope, self.client)

    def _summary(self, ref: StepRef, result: TaskResult) -> StepResult:
        return StepResult(
            step=ref.step, index=ref.index, task_id=result.task_id, status=result.status, tier=result.tier,
            provider=result.provider, model=result.model, input_tokens=result.input_tokens,
            output_tokens=result.output_tokens, cost_usd=result.cost_usd, resolved_by=result.resolved_by,
            escalation_id=result.escalation_id, quality=result.quality, output=result.answer,
        )  # fmt: skip

    def steps(self, pipeline: Pipeline, state: dict[str, str]) -> list[StepResult]:
        """The finished steps and items of a pipeline, in order."""
        done: list[StepResult] = []
        for step in pipeline.steps:
            fields = [step.name] if step.map is None else [
                f"{step.name}:{i}" for i in range(int(state.get(f"n:{step.name}", "0")))
            ]  # fmt: skip
            for field in fields:
                raw = state.get(f"res:{field}")
                if raw is not None:
                    done.append(StepResult.model_validate_json(raw))
        return done

    def _finish(
        self, pipeline_id: str, pipeline: Pipeline, state: dict[str, str], status: Final, *,
        failed: StepResult | None = None, cause: TaskResult | None = None,
    ) -> None:  # fmt: skip
        """Write the pipeline's result under its own id (and wake whoever waits on it)."""
        steps = self.steps(pipeline, state)
        if failed is not None and all(s.task_id != failed.task_id for s in steps):
            steps.append(failed)
        last = steps[-1] if steps else None
        request = TaskRequest.model_validate_json(state["request"]) if "request" in state else None
        result = TaskResult(
            task_id=pipeline_id,
            status=status,
            answer=last.output if status == "completed" and last is not None else None,
            tier=last.tier if last is not None else None,
            provider=last.provider if last is not None else None,
            model=last.model if last is not None else None,
            kind=(request.kind if request is not None else None) or f"pipeline.{pipeline.name}",
            input_tokens=sum(s.input_tokens for s in steps),
            output_tokens=sum(s.output_tokens for s in steps),
            cost_usd=round(sum(s.cost_usd for s in steps), 8),
            escalation_id=cause.escalation_id if cause is not None else None,
            reason=_reason(failed, cause),
            resolved_by="human" if any(s.resolved_by == "human" for s in steps) else "model",
            quality=[check for s in steps for check in s.quality],
            pipeline=pipeline.name,
            steps=steps,
            submitted_at=float(state["submitted_at"]) if "submitted_at" in state else None,
            finished_at=time.time(),
        )
        pipe = self.client.pipeline(transaction=False)
        queue_result(self.app, pipe, pipeline_id, result.model_dump(mode="json"))
        pipe.execute()
        if request is not None and request.callback_url:
            from fleet.callbacks import send_callback  # deferred: it imports the notify machinery

            send_callback(self.app, pipeline_id, request.callback_url)

    def _give_up(
        self, pipeline_id: str, pipeline: Pipeline, state: dict[str, str], step: Step, why: str
    ) -> None:
        """A step's input cannot be built: the pipeline goes to people, under its own id."""
        log.warning("pipeline %s (%s) step %s: %s", pipeline_id, pipeline.name, step.name, why)
        if self.escalate is None:
            return
        escalated = self.escalate(
            NewEscalation(
                task_id=step_id(pipeline_id, step.name),
                reason=Reason.PIPELINE_INPUT,
                detail=f"pipeline {pipeline.name}: step {step.name}: {why}",
                tier=Tier(step.tier) if step.tier != "router" else None,
                request={"prompt": f"(the input of step {step.name} could not be built: {why})",
                         "kind": pipeline.kind(step)},
                submitted_at=float(state.get("submitted_at", time.time())),
            )
        )  # fmt: skip
        ref = StepRef(pipeline_id=pipeline_id, pipeline=pipeline.name, step=step.name)
        self._finish(
            pipeline_id, pipeline, state, "escalated", failed=self._summary(ref, escalated), cause=escalated
        )


def _reason(failed: StepResult | None, cause: TaskResult | None) -> str | None:
    if failed is None or cause is None:
        return None
    at = f"step {failed.step}" + ("" if failed.index is None else f" item {failed.index + 1}")
    return f"{at}: {cause.reason or cause.status}"
