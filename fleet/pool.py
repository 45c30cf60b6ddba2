"""A Celery threads pool that can grow and shrink while running (``fleet scale``, pool_grow/shrink).

Celery's own threads pool has a fixed size. Model calls are I/O-bound, so threads are the tiers'
default pool, and a tier must be resizable without a restart.
"""

from __future__ import annotations

from typing import Any

from celery.concurrency.thread import TaskPool

__all__ = ["ResizableThreadPool"]


class ResizableThreadPool(TaskPool):
    """Celery's threads pool plus grow/shrink.

    Growing raises the executor's thread ceiling (threads start on demand); shrinking lowers it, and
    Celery lowers the prefetch count with it, so no more than ``limit`` jobs run at once.
    """

    limit: int
    executor: Any  # Celery's ThreadPoolExecutor (the stubs leave it out)

    def grow(self, n: int = 1) -> None:
        self.limit += n
        self.executor._max_workers = self.limit

    def shrink(self, n: int = 1) -> None:
        self.limit = max(1, self.limit - n)
        self.executor._max_workers = self.limit

    @property
    def num_processes(self) -> int:
        return self.limit
