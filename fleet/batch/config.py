"""``[batch]``: the batch lane (fleet.batch)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from fleet.models import RoutingDecision, TaskRequest
    from fleet.settings import Settings

__all__ = ["BatchSettings", "batch_link"]


class BatchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Send jobs that can wait to the batch lane (off: every job is a live call).
    enabled: bool = True
    #: A job whose ``hints.deadline_s`` is at least this goes to the batch lane.
    min_deadline_s: float = Field(default=3600.0, gt=0)
    #: A pool is submitted as one batch when it holds this many jobs ...
    max_items: int = Field(default=1000, ge=1, le=50_000)
    #: ... or when its oldest job has waited this long.
    max_wait_s: float = Field(default=60.0, gt=0)
    #: How often the batch worker looks at its pools and polls the batches in flight.
    poll_s: float = Field(default=15.0, gt=0)
    #: A batch not ended this long before its earliest job's deadline is cancelled and its jobs go
    #: to their live chains (time enough for the tier's timeout, its queue and its fallbacks).
    fallback_margin_s: float = Field(default=600.0, gt=0)

    @model_validator(mode="after")
    def _reachable(self) -> BatchSettings:
        floor = self.max_wait_s + self.poll_s + self.fallback_margin_s
        if self.min_deadline_s < floor:
            raise ValueError(
                f"min_deadline_s ({self.min_deadline_s:g}) must be at least max_wait_s + poll_s + "
                f"fallback_margin_s ({floor:g}): a job must have time to be pooled, submitted and fall back"
            )
        return self


def batch_link(settings: Settings, request: TaskRequest, routing: RoutingDecision) -> tuple[str, str] | None:
    """The ``(provider, model)`` whose batch a routed job goes to, or None for a live call: the lane
    is on, the job can wait (``hints.deadline_s`` >= ``batch.min_deadline_s``), it is no pipeline's,
    and its tier's first link is on a provider that takes batches."""
    lane = settings.batch
    deadline = request.hints.deadline_s
    if not lane.enabled or deadline is None or deadline < lane.min_deadline_s or request.pipeline is not None:
        return None
    links = settings.tier(routing.tier).links()
    if not links or not settings.providers[links[0][0]].batch:
        return None
    return links[0]
