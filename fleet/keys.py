"""Every Redis key name and prefix the fleet uses, in one place.

Celery and kombu own their own keys (queue lists named after the queue, ``unacked``,
``_kombu.binding.*``, ``celery-task-meta-<id>``); everything the fleet adds starts with ``fleet:``.
"""

from __future__ import annotations

__all__ = [
    "PREFIX",
    "PRIORITIES",
    "QUEUES",
    "TIER_QUEUES",
    "batch_inflight",
    "batch_job",
    "batch_pool",
    "batch_pools",
    "batch_pump",
    "breaker",
    "breaker_failures",
    "bucket",
    "costs",
    "deliveries",
    "escalation",
    "escalation_by_task",
    "escalations_index",
    "escalations_state",
    "fair_delayed",
    "fair_running",
    "fair_teams",
    "fair_waiting",
    "idempotency",
    "job",
    "pipeline",
    "priority",
    "quality_bucket",
    "queue_list",
    "queue_lists",
    "rate_counter",
    "result",
    "running",
    "spend",
    "worker",
    "workers",
]

#: Prefix of every key the fleet itself writes.
PREFIX = "fleet:"

#: The Celery queues of the fleet, in the order a job meets them.
QUEUES = ("router", "mini", "standard", "full", "fast", "batch", "escalations")
#: The queues that run model calls.
TIER_QUEUES = ("mini", "standard", "full", "fast")

#: Job priorities within a tier: 0 (the default) to 9 (the most urgent).
PRIORITIES = range(10)
#: kombu's Redis transport keeps a queue's messages of priority ``p > 0`` in a list of their own,
#: named after the queue and ``p`` with this separator between (:mod:`fleet.transport`).
_KOMBU_SEP = "\x06\x16"


def idempotency(key: str) -> str:
    """Maps an idempotency key to the first task id submitted with it (SET NX, with a TTL)."""
    return f"{PREFIX}idem:{key}"


def job(task_id: str) -> str:
    """A job's record, a hash written when it is enqueued (``state``, ``queue``, ``submitted_at``):
    what tells a job still on its way from an id nobody submitted. Expires with its result."""
    return f"{PREFIX}job:{task_id}"


def result(task_id: str) -> str:
    """A job's final result: Celery's result-backend key (``celery-task-meta-<id>``), which the fleet
    writes itself with a job's last round trip (a unit test pins it to Celery's name)."""
    return f"celery-task-meta-{task_id}"


def escalation(escalation_id: str) -> str:
    """One escalation record (a JSON string)."""
    return f"{PREFIX}esc:{escalation_id}"


def escalation_by_task(task_id: str) -> str:
    """Task id -> escalation id, so a redelivered failure is recognised, not recorded twice."""
    return f"{PREFIX}esc:task:{task_id}"


def escalations_index() -> str:
    """Sorted set of every escalation id, scored by creation time."""
    return f"{PREFIX}esc:index"


def escalations_state(state: str) -> str:
    """Sorted set of escalation ids in one state, scored by creation time."""
    return f"{PREFIX}esc:state:{state}"


def breaker(provider: str) -> str:
    """A provider's circuit breaker: a hash of state, opened_at, probe, opens."""
    return f"{PREFIX}cb:{provider}"


def breaker_failures(provider: str) -> str:
    """A provider's recent availability failures: a sorted set scored by time (ms)."""
    return f"{PREFIX}cb:{provider}:failures"


def bucket(kind: str, name: str) -> str:
    """A token bucket (GCRA: the theoretical arrival time, ms): kind "queue", "rpm" or "tpm"."""
    return f"{PREFIX}tb:{kind}:{name}"


def rate_counter(queue: str, slot: int) -> str:
    """Jobs started on ``queue`` in one 10-second slot (epoch seconds // 10)."""
    return f"{PREFIX}rate:{queue}:{slot}"


def deliveries(task_id: str) -> str:
    """How often the broker redelivered a job (Redis says "redelivered", not how often)."""
    return f"{PREFIX}deliveries:{task_id}"


def pipeline(pipeline_id: str) -> str:
    """A pipeline's state, a hash: its name and request, and each finished step's summary and output
    (``res:<step>[:<item>]``, ``out:...``), each map step's item count and each step's done count.
    Expires with the results."""
    return f"{PREFIX}pipeline:{pipeline_id}"


def running(task_id: str) -> str:
    """A job's execution lock: held while one worker runs it, so a redelivery waits."""
    return f"{PREFIX}running:{task_id}"


def quality_bucket(bucket: int) -> str:
    """Quality counts of one five-minute bucket (epoch seconds // 300): a hash of
    ``tier|kind|judged``, ``...|passed``, ``...|human`` and the shadow comparisons' counts."""
    return f"{PREFIX}qa:{bucket}"


def worker(worker_id: str) -> str:
    """A worker's heartbeat (JSON: the messages it holds, the jobs it runs), lapsing unless renewed."""
    return f"{PREFIX}worker:{worker_id}"


def workers() -> str:
    """The set of worker ids that have heartbeated (a lapsed one is removed by the next reaper)."""
    return f"{PREFIX}workers"


def inflight(worker_id: str, queue: str) -> str:
    """A worker's in-flight list for one queue (reliable fetch): a message between the broker handing
    it out and the worker recording it as unacked. Empty but for a reply lost on the way."""
    return f"{PREFIX}inflight:{worker_id}:{queue}"


def inflight_parts(key: str) -> tuple[str, str]:
    """The worker id and the queue of an in-flight list's key (:func:`inflight`)."""
    worker_id, queue = key[len(f"{PREFIX}inflight:") :].rsplit(":", 1)
    return worker_id, queue


def inflight_index() -> str:
    """The set of every in-flight list's key, for the reaper."""
    return f"{PREFIX}inflight"


def spend(team: str) -> str:
    """A team's spend in micro-USD, a hash of ``d:YYYYMMDD`` and ``m:YYYYMM`` fields (fleet.budgets)."""
    return f"{PREFIX}spend:{team}"


def fair_teams(tier: str) -> str:
    """The teams with jobs waiting or running on ``tier`` (a set, fleet.fairness)."""
    return f"{PREFIX}fair:{tier}:teams"


def fair_waiting(tier: str, team: str) -> str:
    """A team's jobs waiting in ``tier``'s queue: a sorted set of job ids scored by when their mark
    lapses (ms). Ends with the team's name: ``fair_admit.lua`` builds it from the prefix (team "")."""
    return f"{PREFIX}fair:{tier}:wait:{team}"


def fair_delayed(tier: str, team: str) -> str:
    """Those of a team's waiting jobs that cannot start before a time (they went back to the queue
    for a countdown): a sorted set of job ids scored by that time (ms). Ends with the team's name."""
    return f"{PREFIX}fair:{tier}:later:{team}"


def fair_running(tier: str, team: str) -> str:
    """A team's jobs running on ``tier``: a sorted set of job ids scored by when their lease lapses
    (ms). Ends with the team's name, as :func:`fair_waiting`."""
    return f"{PREFIX}fair:{tier}:run:{team}"


def batch_job(task_id: str) -> str:
    """A job in the batch lane: its request and envelope, its link and deadline (fleet.batch)."""
    return f"{PREFIX}batch:job:{task_id}"


def batch_pool(link: str) -> str:
    """The jobs waiting for a batch on one ``provider:model``: a sorted set scored by when they came."""
    return f"{PREFIX}batch:pool:{link}"


def batch_pools() -> str:
    """The set of links whose pools may hold jobs."""
    return f"{PREFIX}batch:pools"


def batch_inflight() -> str:
    """The batches in flight: a hash of the fleet's batch id to its record (provider, jobs, times)."""
    return f"{PREFIX}batch:inflight"


def batch_pump() -> str:
    """The lease of the one batch worker that pools, submits and polls at a time."""
    return f"{PREFIX}batch:pump"


def costs() -> str:
    """Per-job cost records: a stream capped near ``fleet.costs.MAX_RECORDS`` (XADD MAXLEN ~)."""
    return f"{PREFIX}costs"


def priority(value: object) -> int:
    """A message's priority as the queue's lists know it: 0 to 9 (0 for none, or for no number)."""
    if not isinstance(value, int | str):
        return 0
    try:
        return max(PRIORITIES[0], min(PRIORITIES[-1], int(value)))
    except ValueError:
        return 0


def queue_list(queue: str, priority: int) -> str:
    """The Redis list of ``queue``'s messages of ``priority`` (the queue's own name for 0)."""
    return f"{queue}{_KOMBU_SEP}{priority}" if priority else queue


def queue_lists(queue: str) -> list[str]:
    """Every Redis list of ``queue``, the most urgent first (priority 9 .. 1, then the plain list)."""
    return [queue_list(queue, p) for p in reversed(PRIORITIES)]
