"""The worker process's housekeeping: keep start-up objects out of the garbage collector's scans.

What start-up allocated (Celery, kombu, pydantic, OpenTelemetry: most of a worker's heap) is frozen
once the process is ready: a full collection over it stalled every job in flight for tens of
milliseconds, a few times a minute at load (docs/performance.md).
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

from fleet.middleware.base import Middleware

if TYPE_CHECKING:
    from fleet.runtime import Runtime

__all__ = ["WorkerLifecycle"]


def freeze_startup_objects() -> None:
    gc.collect()
    gc.freeze()


class WorkerLifecycle(Middleware):
    def after_worker_boot(self, runtime: Runtime) -> None:
        # The consumer (and a threads pool's tasks) run here; a prefork pool's children freeze their own.
        freeze_startup_objects()

    def after_process_boot(self, runtime: Runtime) -> None:
        freeze_startup_objects()
