"""The tier job as a chain of middlewares (Dramatiq's ``middleware/middleware.py`` is the model).

Every hook is a no-op: a policy (the job lock, the poison guard, the queue's rate limit, the cost
record, ...) is one small class that implements the few hooks it needs. :class:`fleet.runner.JobRunner`
calls them in this order, for each delivery of a tier job::

    before_start(job, plan)     contribute a part to the job's one start round trip (StartPlan)
    after_start(job, answer)    read that part's answer: may raise Skip, Requeue, Finish or Restart
    before_call(job)            just before the tier's chain runs (may raise Finish)
    after_call(job, result)     the chain's result; may return another (the quality gate)
    before_finish(job, result)  the job ends with ``result``: queue last writes on ``job.tail``
    after_job(job)              always, however the delivery ended: release what it holds
    after_flush(job, written)   the tail went out in one round trip (``written``: the result too)
    on_flush_failed(job, error) ... or it did not: the broker is down
    on_requeue(job, requeue)    the delivery goes back to its queue

and, for the worker: ``before_worker_boot`` (the main process, before its pool starts),
``after_worker_boot`` (it consumes), ``after_process_boot`` (a process that runs jobs started:
a prefork child, or the main process of a threads pool) and ``before_process_shutdown``.

Skip, Requeue, Finish and Restart are control flow, not errors (Celery's Ignore/Retry, Dramatiq's
SkipMessage): the runner catches exactly these and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fleet.models import Attempt, JobEnvelope, RoutingDecision, TaskRequest, TaskResult

if TYPE_CHECKING:
    from fleet.chain import ChainOutcome
    from fleet.errors import BrokerError
    from fleet.limits import GateAnswer
    from fleet.middleware.start import StartAnswer, StartPlan
    from fleet.middleware.tail import Tail
    from fleet.runtime import Runtime
    from fleet.settings import QueueSettings

__all__ = ["Finish", "Job", "Middleware", "Requeue", "Restart", "Skip"]


@dataclass
class Job:
    """One delivery of a tier job, as the middlewares see it."""

    request: TaskRequest
    #: The request as it came in the message: sent again on a requeue, kept on an escalation.
    payload: Any
    envelope: JobEnvelope
    routing: RoutingDecision
    queue: QueueSettings
    #: The queue the message was consumed from (its routing key), when known.
    consumed_from: str | None
    redelivered: bool
    #: The job's last writes (result, cost line, tpm corrections, lock release): one round trip.
    tail: Tail
    #: Times Celery sent this job again (requeues): a lock names its delivery by it.
    retries: int = 0
    #: The message's delivery tag, where its unacked record can go with the result's round trip
    #: (:func:`fleet.transport.ack_tag`).
    ack_tag: str | None = None
    #: The first chain link's admission, when the job's start asked it.
    first_link: GateAnswer | None = None
    #: The tier's chain in the order this job walks it (a warm prompt cache first), once planned.
    links: list[tuple[str, str]] | None = None
    #: What the chain ended with, once it ran.
    outcome: ChainOutcome | None = None
    #: The delivery was skipped: the job already had its final result (a late redelivery).
    skipped: bool = False
    #: Middleware notes for each other (a middleware's own key, by convention its class name).
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.envelope.id

    def charged(self, result: TaskResult) -> list[Attempt]:
        """The calls to charge to this job's cost line. A job people retried carries the attempts of
        its first run, which its escalation already charged: only this run's calls count again."""
        if self.envelope.retry_of is None:
            return list(result.attempts)
        return list(self.outcome.attempts) if self.outcome is not None else []


class Skip(Exception):
    """Run nothing and ack the message: the job already has its final result (a late redelivery)."""


class Requeue(Exception):
    """Send this delivery back to its queue (or to ``queue``: another tier's), to run again in
    ``countdown_s`` seconds."""

    def __init__(self, countdown_s: float, why: str, *, queue: str | None = None) -> None:
        super().__init__(f"requeued for {countdown_s:.3f} s{f' on {queue}' if queue else ''}: {why}")
        self.countdown_s = countdown_s
        self.why = why
        self.queue = queue


class Restart(Exception):
    """Ask the job's start again, once: what stood in its way was cleared (a dead holder's lock).

    Raise it only from ``after_start`` and only when the start took nothing (it was ``locked``)."""


class Finish(Exception):
    """End the job now with ``result`` (a poison message's escalation, say); the chain does not run."""

    def __init__(self, result: TaskResult) -> None:
        super().__init__(f"finished early: {result.status}")
        self.result = result


class Middleware:
    """Base class of the tier job's middlewares. The default implementations of all hooks are
    no-ops, and subclasses may implement whatever subset of hooks they like."""

    # -- the worker --------------------------------------------------------------------------------

    def before_worker_boot(self, runtime: Runtime, worker: Any) -> None:
        """The worker's main process, before its pool starts (``worker``: Celery's WorkController)."""

    def after_worker_boot(self, runtime: Runtime) -> None:
        """The worker's main process is ready (its consumer runs here)."""

    def after_process_boot(self, runtime: Runtime) -> None:
        """A process that runs jobs has started (a prefork child after the fork; else the main one)."""

    def before_worker_shutdown(self, runtime: Runtime) -> None:
        """The worker's main process is shutting down (a warm shutdown: jobs in flight finish first)."""

    def before_process_shutdown(self, runtime: Runtime) -> None:
        """A process that runs jobs is about to exit."""

    # -- a job -------------------------------------------------------------------------------------

    def before_start(self, job: Job, plan: StartPlan) -> None:
        """Add this middleware's part to the job's start (one round trip for every part)."""

    def after_start(self, job: Job, answer: StartAnswer) -> None:
        """Read this middleware's part of the start's answer.

        Raises:
            Skip, Requeue, Finish: this delivery ends here.
            Restart: ask the start again (it took nothing).
        """

    def before_call(self, job: Job) -> None:
        """Just before the tier's chain runs.

        Raises:
            Finish: the job ends without calling a model.
        """

    def after_call(self, job: Job, result: TaskResult) -> TaskResult:
        """The chain's result (an answer or an escalation); return it, or another one."""
        return result

    def before_finish(self, job: Job, result: TaskResult) -> None:
        """The job ends with ``result``: queue its last writes on ``job.tail``."""

    def after_job(self, job: Job) -> None:
        """However this delivery ended (a result, a requeue, a skip, an error): release what it holds."""

    def after_flush(self, job: Job, written: bool) -> None:
        """The tail went out; ``written``: the job's result with it."""

    def on_flush_failed(self, job: Job, error: BrokerError) -> None:
        """The tail did not go out (the broker is down); the caller hands the result to Celery."""

    def on_requeue(self, job: Job, requeue: Requeue) -> None:
        """This delivery goes back to its queue."""
