"""fleet: a Celery worker fleet for AI-model jobs.

    import fleet

    task_id = fleet.submit({"prompt": "Extract the invoice number and total as JSON: ...",
                            "kind": "extract.invoice", "hints": {"complexity": "low"}})
    res = fleet.result(task_id, timeout=60)
    print(res.status, res.tier, res.model, res.cost_usd, res.answer)

``submit``/``result`` use the fleet found through FLEET_REDIS_URL or a running ``fleet up``;
``fleet.Client(settings, redis_url=...)`` talks to a given one; ``fleet.AsyncClient`` is the same
for asyncio code (``await client.submit(...)``, ``await client.result(...)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleet.errors import (
    BrokerError,
    BudgetExceeded,
    FleetError,
    InvalidRequest,
    ResultTimeout,
    TaskFailed,
    TaskNotFound,
)
from fleet.models import Attempt, Hints, JobStatus, RoutingDecision, TaskRequest, TaskResult, Tier

if TYPE_CHECKING:
    from fleet.aio import AsyncClient
    from fleet.producer import Client, result, submit

__all__ = [
    "AsyncClient",
    "Attempt",
    "BrokerError",
    "BudgetExceeded",
    "Client",
    "FleetError",
    "Hints",
    "InvalidRequest",
    "JobStatus",
    "ResultTimeout",
    "RoutingDecision",
    "TaskFailed",
    "TaskNotFound",
    "TaskRequest",
    "TaskResult",
    "Tier",
    "result",
    "submit",
]

__version__ = "0.1.0"

_LAZY = {"Client", "result", "submit"}


def __getattr__(name: str) -> Any:
    # The producer imports Celery; load it on first use so `import fleet.models` stays light.
    if name in _LAZY:
        from fleet import producer

        return getattr(producer, name)
    if name == "AsyncClient":
        from fleet import aio

        return aio.AsyncClient
    raise AttributeError(f"module 'fleet' has no attribute {name!r}")
