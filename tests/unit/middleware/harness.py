"""A tier job's runner on in-memory ports (no broker): the middlewares, the start, the tail, the chain
with scripted providers, a clock and a sleep the test controls."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fleet.chain import Chain
from fleet.errors import Reason
from fleet.escalations import MemoryEscalationStore
from fleet.handoff import Handoff
from fleet.limits import MemoryBreaker, MemoryLimiter, MemoryLimits
from fleet.middleware.base import Job, Middleware
from fleet.middleware.cost import CostRecord
from fleet.middleware.lock import JobLock
from fleet.middleware.poison import PoisonGuard
from fleet.middleware.queue_limit import QueueRateLimit
from fleet.middleware.start import MemoryJobs, MemoryJobStarter
from fleet.middleware.tail import MemoryTail
from fleet.models import JobEnvelope, RoutingDecision, TaskResult, Tier, validate_request
from fleet.providers import ChatRequest, ChatResponse
from fleet.runner import JobRunner
from fleet.settings import Settings, load_settings

Step = Callable[[ChatRequest], ChatResponse]


def ok(text: str = "fine") -> Step:
    return lambda req: ChatResponse(text=text, finish_reason="stop", input_tokens=10, output_tokens=5)


class Scripted:
    """A provider that answers each call with the next step (the last one repeats)."""

    def __init__(self, name: str, steps: list[Step]) -> None:
        self.name, self.steps, self.calls = name, steps, 0

    def complete(self, request: ChatRequest) -> ChatResponse:
        self.calls += 1
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        return step(request)


class Harness:
    """Everything a tier job meets, in memory. ``owner`` names this process as a lock holder."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        providers: dict[str, list[Step]] | None = None,
        owner: str = "host-a:1",
        extra: list[Middleware] | None = None,
    ) -> None:
        self.settings = settings or load_settings(env={})
        self.now_ms = time.time() * 1000.0
        self.limits = MemoryLimits(clock=lambda: self.now_ms)
        self.breaker = MemoryBreaker(self.settings.breaker, self.limits)
        self.limiter = MemoryLimiter(self.limits, self.breaker)
        self.jobs = MemoryJobs()
        self.slept: list[float] = []
        self.escalations: list[tuple[str, Reason, str]] = []
        self.store = MemoryEscalationStore()
        self.announced: list[str] = []
        self.handoff = Handoff(self.store, announce=self.announced.append)
        names = {p for q in self.settings.queues.values() for p, _ in q.links()}
        scripted = {n: Scripted(n, list((providers or {}).get(n, [ok()]))) for n in names}
        self.providers = scripted
        self.chain = Chain(
            self.settings, providers=scripted, breaker=self.breaker, limiter=self.limiter,  # type: ignore[arg-type]
            sleep=self.slept.append,
        )  # fmt: skip
        #: Workers whose heartbeat is live, and the jobs each runs (the test's say).
        self.live: dict[str, set[str]] = {owner: set()}
        self.lock = JobLock(self.jobs.drop, self.holds, owner=lambda: owner)
        self.middlewares: list[Middleware] = [
            self.lock,
            PoisonGuard(self.settings.limits.max_deliveries, self.hand_over),
            QueueRateLimit(self.settings.limits, sleep=self.slept.append),
            CostRecord(self.settings),
            *(extra or []),
        ]
        self.runner = JobRunner(
            self.middlewares, MemoryJobStarter(self.jobs, self.limiter), self.chain, self.hand_over,
            self.settings.limits,
        )  # fmt: skip

    def holds(self, holder: str, task_id: str, age_s: float) -> bool:
        worker = holder.partition("#")[0]  # a lock names "worker#retries"
        return worker in self.live and (task_id in self.live[worker] or age_s < 4.0)

    def hand_over(self, job: Job, reason: Reason, detail: str) -> TaskResult:
        self.escalations.append((job.id, reason, detail))
        return self.handoff.job(job, reason, detail)

    def job(
        self,
        prompt: str = "Rename x to total",
        *,
        tier: str = "mini",
        task_id: str = "t1",
        redelivered: bool = False,
        envelope: JobEnvelope | None = None,
        fail_flush: bool = False,
        **request: Any,
    ) -> Job:
        routing = RoutingDecision(tier=Tier(tier), reasons=["test"], classifier="pinned")
        env = envelope or JobEnvelope(id=task_id, submitted_at=time.time(), routing=routing)
        payload = {"prompt": prompt, **request}
        return Job(
            request=validate_request(payload),
            payload=payload,
            envelope=env,
            routing=routing,
            queue=self.settings.tier(tier),
            consumed_from=tier,
            redelivered=redelivered,
            tail=MemoryTail(self.jobs, self.limiter, fail=fail_flush),
        )
