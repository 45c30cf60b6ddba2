"""Runs one delivery of a tier job: its middlewares around the tier's chain.

    plan   <- every middleware's part (lock, delivery count, queue token) + the chain's first link
    answer <- the start, in one round trip
    result <- after_start hooks -> before_call hooks -> the chain -> after_call hooks
    tail   <- before_finish hooks (cost line, metrics) + the result (and the message's unacked
              record: its ack sends nothing), then after_job hooks (lock release), in one round trip

Requeue and Skip leave :meth:`JobRunner.run` for the Celery task to act on; whatever the delivery
holds is released on the way out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fleet.chain import CANCELLED, THROTTLED, Chain, ChainOutcome
from fleet.errors import BrokerError, Reason
from fleet.limits import Correction
from fleet.middleware.base import Finish, Job, Middleware, Requeue, Restart, Skip
from fleet.middleware.cancel import cancelled_result
from fleet.middleware.start import JobStarter, StartPlan
from fleet.middleware.tail import Flushed
from fleet.models import BatchAnswer, TaskResult
from fleet.settings import LimitsSettings

__all__ = ["MAX_REQUEUES", "HandOver", "JobRunner", "Ran", "batch_outcome"]

#: Times a job may go back to its queue for rate limits before it is escalated as "throttled".
MAX_REQUEUES = 50

#: Hands a job to people with a reason and a detail; returns its escalated result.
HandOver = Callable[[Job, Reason, str], TaskResult]


@dataclass(frozen=True, slots=True)
class Ran:
    """A delivery that ended with a result. ``flushed``: what its last writes did ("written": the
    result went out with them; "superseded": another worker owns the job now, nothing was written;
    "failed": the broker stayed away). ``stored`` is the result as JSON data."""

    result: TaskResult
    stored: dict[str, Any]
    flushed: Flushed | Literal["failed"]

    @property
    def written(self) -> bool:
        return self.flushed == "written"

    def summary(self) -> str:
        """What the Celery task returns: one line for its "succeeded" log line and its task event
        (Flower's Result column). A string, which Celery's saferepr copies through; a dict of the same
        fields it walked item by item, twice per job (about 40 µs each, measured on its own)."""
        r = self.result
        words: list[str] = [r.status]
        if r.tier is not None:
            words.append(f"on {r.tier}")
        if r.model:
            words.append(f"by {r.model}")
        words.append(f"${r.cost_usd:.6f}")
        if r.escalation_id:
            words.append(f"escalation {r.escalation_id}")
        return " ".join(words)


class JobRunner:
    """One per worker process; thread-safe (each delivery has its own :class:`Job`)."""

    def __init__(
        self,
        middlewares: Sequence[Middleware],
        starter: JobStarter,
        chain: Chain,
        hand_over: HandOver,
        limits: LimitsSettings,
        *,
        logprobs: bool = False,
        cancelled: Callable[[str], bool] | None = None,
    ) -> None:
        self.middlewares = list(middlewares)
        self.starter = starter
        self.chain = chain
        self.hand_over = hand_over
        self.limits = limits
        #: Ask for token log-probabilities (a confidence signal of the quality gate).
        self.logprobs = logprobs
        #: Whether a job was cancelled (asked by the chain before each call after its first).
        self.cancelled = cancelled

    def run(self, job: Job) -> Ran:
        """Run one delivery.

        Raises:
            Skip: the job already has its final result: ack the message, run nothing.
            Requeue: send the delivery back to its queue (``job.envelope`` is what goes with it).
        """
        try:
            result = self._through(job)
            stored = result.model_dump(mode="json")
            job.tail.store_result(job.id, stored, ack_tag=job.ack_tag)
        except Skip:
            job.skipped = True
            raise
        finally:
            for m in self.middlewares:
                m.after_job(job)
            flushed = self._flush(job)
        return Ran(result, stored, flushed)

    def _plan(self, job: Job) -> StartPlan:
        plan = StartPlan(job.id)
        for m in self.middlewares:
            m.before_start(job, plan)
        # The tier's chain, a link with a warm prompt cache for the job's kind first (fleet.affinity).
        links = job.links = self.chain.affinity.ordered(job.queue.links(), job.request.kind)
        plan.running_link = f"{links[0][0]}:{links[0][1]}" if links else ""
        if plan.queue is not None and job.envelope.batch is None:  # a batch's answer calls no link
            # The first link's admission rides with the queue's token, asked when that is due at once.
            plan.link = self.chain.first_gate(links, job.request)
            plan.link_within_s = self.limits.max_slot_wait_s
        return plan

    def _start(self, job: Job) -> None:
        """The job's start (one round trip) and every middleware's reading of it; asked once more
        when a middleware cleared what stood in its way."""
        for restart in range(2):
            answer = self.starter.start(self._plan(job))
            job.first_link = answer.link
            try:
                for m in self.middlewares:
                    m.after_start(job, answer)
                return
            except Restart:
                if restart:
                    raise Requeue(1.0, "its start was in the way twice") from None

    def _through(self, job: Job) -> TaskResult:
        try:
            self._start(job)
            for m in self.middlewares:
                m.before_call(job)
            result = self.call(job)
            for m in self.middlewares:
                result = m.after_call(job, result)
        except Finish as done:
            result = done.result
        except Requeue as again:
            job.envelope.requeues += 1
            for m in self.middlewares:
                m.on_requeue(job, again)
            raise
        result = result.model_copy(update={"kind": job.request.kind})
        for m in self.middlewares:
            m.before_finish(job, result)
        return result

    def _flush(self, job: Job) -> Flushed | Literal["failed"]:
        try:
            flushed = job.tail.flush()
        except BrokerError as exc:
            for m in self.middlewares:
                m.on_flush_failed(job, exc)
            return "failed"
        for m in self.middlewares:
            m.after_flush(job, flushed == "written")
        return flushed

    def call(self, job: Job) -> TaskResult:
        """The tier's chain for the job: a model's answer, or the job handed to people.

        Raises:
            Requeue: every link was only busy (rate limits): the job waits in its queue.
        """
        corrections: list[Correction] = []
        check = self.cancelled
        links = job.links if job.links is not None else job.queue.links()
        answered = job.envelope.batch
        if answered is not None:
            # The batch lane's answer stands for the chain's call (fleet.batch); a requeue (the
            # quality gate's upgrade) goes without it, to a live call.
            job.envelope.batch = None
            outcome = batch_outcome(answered, links)
        else:
            try:
                outcome = self.chain.run(
                    links, job.request, timeout_s=job.queue.timeout_s,
                    corrections=corrections, first=job.first_link, logprobs=self.logprobs,
                    cancelled=(lambda: check(job.id)) if check is not None else None,
                )  # fmt: skip
            finally:
                for correction in corrections:
                    job.tail.correct(correction)
        job.outcome = outcome
        attempts = [*job.envelope.attempts, *outcome.attempts]
        if outcome.reason == THROTTLED and job.envelope.requeues < MAX_REQUEUES:
            job.envelope.attempts = attempts
            raise Requeue(outcome.retry_after or 1.0, "every link is at its rate limit")
        if outcome.reason == CANCELLED:
            return cancelled_result(job)
        if not outcome.ok:
            detail = f"no link of the {job.routing.tier} chain gave an acceptable answer"
            return self.hand_over(job, Reason.of(outcome.reason), detail)
        return TaskResult.from_attempts(
            job.id,
            "completed",
            attempts,
            answer=outcome.answer,
            tier=job.routing.tier,
            provider=outcome.provider,
            model=outcome.model,
            kind=job.request.kind,
            routing=job.routing,
            fallback_index=outcome.link_index,
            resolved_by="model",
            submitted_at=job.envelope.submitted_at,
            finished_at=time.time(),
        )


def batch_outcome(answered: BatchAnswer, links: Sequence[tuple[str, str]]) -> ChainOutcome:
    """A batch item's answer as the chain's outcome: its attempt, on the link it was asked of."""
    attempt = answered.attempt
    pair = (attempt.provider, attempt.model)
    index = list(links).index(pair) if pair in links else 0
    return ChainOutcome(
        attempts=[attempt], answer=answered.answer, provider=attempt.provider, model=attempt.model,
        link_index=index,
    )  # fmt: skip
