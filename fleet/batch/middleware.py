"""Runs the batch lane's pump in a worker that consumes the ``batch`` queue, from boot to shutdown."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fleet.batch.lane import BatchPump
from fleet.middleware.base import Middleware

if TYPE_CHECKING:
    from fleet.runtime import Runtime

__all__ = ["BatchLane"]


class BatchLane(Middleware):
    def __init__(self, build: Callable[[], BatchPump | None]) -> None:
        self._build = build
        self._pump: BatchPump | None = None

    def after_worker_boot(self, runtime: Runtime) -> None:
        pump = self._build()
        self._pump = pump.start() if pump is not None else None

    def before_worker_shutdown(self, runtime: Runtime) -> None:
        if self._pump is not None:
            self._pump.stop()
            self._pump = None
