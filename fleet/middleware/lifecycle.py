"""The worker process's housekeeping: keep start-up objects out of the garbage collector's scans,
and full collections rare.

What start-up allocated (Celery, kombu, pydantic, OpenTelemetry: most of a worker's heap) is frozen
once the process is ready: a full collection over it stalled every job in flight for tens of
milliseconds, a few times a minute at load (docs/performance.md).

The jobs in flight are the rest of the heap, and they outlive the young generations: a model call
takes seconds, the collector's young passes come every few thousand allocations, so nearly every
object of a job in flight reaches the oldest generation, and Python's default (a full collection
after 10 passes of generation 1) ran one every 2-3 s at 1,000 in flight, each over the whole heap
(about 220,000 objects: 90 ms). A full collection now waits for :data:`FULL_EVERY` generation-1
passes; Python's own rule (no full pass until the objects promoted since the last one are a quarter
of the heap) still holds.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

from fleet.middleware.base import Middleware

if TYPE_CHECKING:
    from fleet.runtime import Runtime

__all__ = ["WorkerLifecycle"]


#: Generation-1 passes before a full collection (Python's default: 10). At 1,000 calls in flight
#: (bench/concurrency.py): 16 full collections a run, 1.5 s of them, at 10; one at 100; the peak
#: RSS the same (docs/performance.md).
FULL_EVERY = 100


def settle_collector() -> None:
    """Collect, freeze what is left (start-up's objects), and make full collections rare."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_EVERY)


class WorkerLifecycle(Middleware):
    def after_worker_boot(self, runtime: Runtime) -> None:
        # The consumer (and a threads pool's tasks) run here; a prefork pool's children freeze their own.
        settle_collector()

    def after_process_boot(self, runtime: Runtime) -> None:
        settle_collector()
