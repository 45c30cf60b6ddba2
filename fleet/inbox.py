"""The escalation verbs with their effects, shared by the CLI and the HTTP API.

:class:`fleet.escalations.EscalationStore` keeps the records and their state machine (in Redis;
a test may pass the in-memory store); this layer adds what a transition does to the job:

- resolve / discard write the task's final result (``resolved_by="human"``) into the Celery result
  backend in the same MULTI block as the transition, and publish it to waiting producers. Celery's
  own ``store_result`` would refuse: it never overwrites a SUCCESS, and the escalated result is one.
- retry deletes the escalated result in the same MULTI block (so the retried run can store its own),
  then re-enqueues the original request under the same task id, linked by ``retry_of``: through the
  router, or pinned to a tier with a human RoutingDecision.
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from fleet import keys, telemetry
from fleet.app import FleetCelery, create_app, queue_result
from fleet.callbacks import request_callback, send_callback
from fleet.discovery import broker_url, redis_client
from fleet.errors import BrokerError, EscalationError, IllegalTransition, InvalidRequest
from fleet.escalations import (
    CommitSink,
    EscalationRecord,
    EscalationStats,
    EscalationStore,
    RedisEscalationStore,
    State,
    result_for,
)
from fleet.models import JobEnvelope, RoutingDecision, TaskRequest, Tier, validate_request
from fleet.pipelines.engine import Pipelines, step_of
from fleet.producer import enqueue
from fleet.quality.feedback import QUALITY_REASONS, RedisTally, tally_human
from fleet.settings import Settings

__all__ = ["Filter", "Inbox", "Redrive"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Filter:
    """Which open escalations a bulk retry or discard moves (every given key must match)."""

    reason: str | None = None
    tier: str | None = None
    kind: str | None = None
    #: The provider of the escalated job's last call.
    provider: str | None = None
    #: Created within the last this many seconds.
    since_s: float | None = None

    #: The keys ``--where KEY=VALUE`` takes.
    KEYS: ClassVar[tuple[str, ...]] = ("reason", "tier", "kind", "provider")

    def matches(self, record: EscalationRecord, now: float) -> bool:
        last = record.attempts[-1].provider if record.attempts else None
        return (
            (self.reason is None or str(record.reason) == self.reason)
            and (self.tier is None or str(record.tier) == self.tier)
            and (self.kind is None or record.kind == self.kind)
            and (self.provider is None or last == self.provider)
            and (self.since_s is None or record.created_at >= now - self.since_s)
        )


@dataclass
class Redrive:
    """What a bulk retry or discard did: how many matched, which moved, which were left and why."""

    action: str
    matched: int
    moved: list[str] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "matched": self.matched, "moved": len(self.moved),
                "moved_ids": self.moved, "left": self.left, "dry_run": self.dry_run}  # fmt: skip


class Inbox:
    """Handle escalations of one fleet. Thread-safe; build one and keep it."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis_url: str | None = None,
        app: FleetCelery | None = None,
        store: EscalationStore | None = None,
    ) -> None:
        self.settings = settings
        self.redis_url = redis_url or broker_url(settings)
        self.redis = redis_client(settings, self.redis_url)
        self._own_app = app is None
        self.app = app or create_app(settings, self.redis_url)
        self.store = (
            store
            if store is not None
            else RedisEscalationStore(self.redis, retention_days=settings.escalation.retention_days)
        )
        self.pipelines = Pipelines(settings, self.redis, self.app)
        telemetry.setup(settings, role="inbox")  # a no-op unless OTEL_* or a trace file asks

    def close(self) -> None:
        if self._own_app:
            self.app.close()

    # -- reading -----------------------------------------------------------------------------------

    def list(self, *, state: State | None = None, tier: Tier | None = None) -> list[EscalationRecord]:
        return self.store.list(state=state, tier=tier)

    def get(self, esc_id: str) -> EscalationRecord:
        """Raises EscalationNotFound."""
        return self.store.get(esc_id)

    def stats(self) -> EscalationStats:
        return self.store.stats()

    # -- verbs -------------------------------------------------------------------------------------

    def claim(self, esc_id: str, by: str) -> EscalationRecord:
        """Raises EscalationNotFound, IllegalTransition (someone else holds it, or it is closed)."""
        return self.store.transition(esc_id, "claim", by)

    def release(self, esc_id: str, by: str, *, force: bool = False) -> EscalationRecord:
        """Raises EscalationNotFound, IllegalTransition (not claimed, or claimed by someone else)."""
        return self.store.transition(esc_id, "release", by, force=force)

    def resolve(self, esc_id: str, answer: str, by: str) -> EscalationRecord:
        """Close the escalation with a person's answer, delivered as the task's result.

        Raises:
            EscalationNotFound, IllegalTransition, EscalationError (empty answer).
        """
        with telemetry.span("escalation.resolve", attributes={"fleet.escalation.id": esc_id}) as span:
            record = self.store.transition(esc_id, "resolve", by, answer=answer, on_commit=self._deliver)
            telemetry.link_back(span, record.trace_id)
        self._move_pipeline(record)  # outside the span: the pipeline goes on in its own trace
        if record.tier is not None and str(record.reason) in QUALITY_REASONS:
            # A person had to answer what a model's answer failed: the tier's pass rate says so.
            tally_human(RedisTally(self.redis), str(record.tier), record.kind)
        return record

    def discard(self, esc_id: str, reason: str, by: str) -> EscalationRecord:
        """Close the escalation without an answer; the task's result says discarded, with the reason.

        Raises:
            EscalationNotFound, IllegalTransition, EscalationError (empty reason).
        """
        with telemetry.span("escalation.discard", attributes={"fleet.escalation.id": esc_id}) as span:
            record = self.store.transition(esc_id, "discard", by, reason=reason, on_commit=self._deliver)
            telemetry.link_back(span, record.trace_id)
        self._move_pipeline(record)
        return record

    def retry(self, esc_id: str, by: str, *, tier: str | None = None) -> EscalationRecord:
        """Enqueue the original request again under the same task id (pinned to ``tier`` if given).

        Raises:
            EscalationNotFound, IllegalTransition (closed, claimed by another, or the request does
            not validate), EscalationError (unknown tier), BrokerError (could not enqueue; the
            escalation is open again).
        """
        pinned: Tier | None = None
        if tier:
            try:
                pinned = Tier(tier)
            except ValueError:
                known = ", ".join(t.value for t in Tier)
                raise EscalationError(f"unknown tier {tier!r}: expected one of {known}") from None
        request: list[TaskRequest] = []

        def check(record: EscalationRecord) -> None:
            request[:] = [self._retryable(record)]

        # The retried run continues this span's trace, which links back to the job's first trace.
        with telemetry.span("escalation.retry", attributes={"fleet.escalation.id": esc_id}) as span:
            record = self.store.transition(
                esc_id,
                "retry",
                by,
                tier=pinned,
                check=check,
                on_commit=self._forget_result,
            )
            telemetry.link_back(span, record.trace_id)
            try:
                self._enqueue(record, request[0], by, pinned)
            except BrokerError as exc:
                self._reopen(esc_id, by, f"the retry could not be enqueued: {exc.message}")
                raise
            return record

    # -- in bulk -----------------------------------------------------------------------------------

    def matching(self, where: Filter) -> builtins.list[EscalationRecord]:
        """The open escalations ``where`` matches, oldest first."""
        now = time.time()
        return [r for r in self.store.list(state="open", limit=100_000) if where.matches(r, now)]

    def redrive(
        self, action: Literal["retry", "discard"], where: Filter, by: str, *, reason: str = "",
        tier: str | None = None, dry_run: bool = False, on_progress: Callable[[Redrive], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Redrive:  # fmt: skip
        """Retry (or discard, with ``reason``) every open escalation ``where`` matches, at most
        ``escalation.redrive_per_s`` a second. One that another person claimed or closed meanwhile
        is left, with why; a broker error stops the redrive (what moved stays moved).

        Raises:
            EscalationError: discard without a reason, or an unknown tier.
            BrokerError: the broker went away (the report so far is lost with it; run it again).
        """
        if action == "discard" and not reason.strip():
            raise EscalationError("a bulk discard needs a reason (the producers receive it)")
        records = self.matching(where)
        report = Redrive(action, len(records), dry_run=dry_run)
        if dry_run:
            return report
        pause = 1.0 / self.settings.escalation.redrive_per_s
        for n, record in enumerate(records):
            if n:
                sleep(pause)
            try:
                if action == "retry":
                    self.retry(record.id, by, tier=tier)
                else:
                    self.discard(record.id, reason, by)
                report.moved.append(record.id)
            except IllegalTransition as exc:
                report.left[record.id] = exc.message
            if on_progress is not None:
                on_progress(report)
        return report

    # -- effects -----------------------------------------------------------------------------------

    def _deliver(self, pipe: CommitSink, record: EscalationRecord) -> None:
        """Write the task's final result as Celery's backend would, and publish it to waiters."""
        res = result_for(record)
        queue_result(self.app, pipe, res.task_id, res.model_dump(mode="json"))

    def _forget_result(self, pipe: CommitSink, record: EscalationRecord) -> None:
        pipe.delete(keys.result(record.task_id))
        step = step_of(record.task_id)
        if step is not None and self.pipelines.ref(record.task_id) is not None:
            pipe.delete(keys.result(step[0]))  # the pipeline waits for its retried step again

    def _move_pipeline(self, record: EscalationRecord) -> None:
        """A person answered (or discarded) a job: its callback gets the new final result, and a
        pipeline's step moves its pipeline on (or ends it)."""
        url = request_callback(record.request)
        if url:
            send_callback(self.app, record.task_id, url)
        ref = self.pipelines.ref(record.task_id)
        if ref is not None:
            self.pipelines.advance(ref, result_for(record))

    def _retryable(self, record: EscalationRecord) -> TaskRequest:
        try:
            return validate_request(record.request, max_prompt_bytes=self.settings.limits.max_prompt_bytes)
        except InvalidRequest as exc:
            problems = "; ".join(exc.errors)[:500]
            raise IllegalTransition(
                f"cannot retry escalation {record.id}: its request is not a valid task request "
                f"({problems}); resolve or discard it instead"
            ) from None

    def _enqueue(self, record: EscalationRecord, req: TaskRequest, by: str, tier: Tier | None) -> None:
        ref = self.pipelines.ref(record.task_id)
        if ref is not None:  # a pipeline's step runs again alone, its input built again
            self.pipelines.resend(ref, retry_of=record.id, tier=tier, by=by)
            return
        envelope = JobEnvelope(
            id=record.task_id,
            submitted_at=record.submitted_at or time.time(),
            attempts=record.attempts,  # what no longer validates was dropped when the record was read
            retry_of=record.id,
        )
        payload = req.model_dump(mode="json", exclude_defaults=True)
        if tier is not None:
            envelope.routing = RoutingDecision(
                tier=tier,
                reasons=[f"retried on tier {tier} by {by} from escalation {record.id}"],
                classifier="human",
            )
        enqueue(self.app, self.settings, payload, envelope, self.redis)

    def _reopen(self, esc_id: str, by: str, note: str) -> None:
        try:
            self.store.reopen(esc_id, by, note)
        except Exception:  # the broker is likely down too; the original error is what people need
            log.exception("could not reopen escalation %s after a failed retry", esc_id)
