"""The worker's housekeeping: start-up objects frozen out of the collector's scans, full collections rare."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from fleet.middleware.lifecycle import FULL_EVERY, WorkerLifecycle


@pytest.fixture
def collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.usefixtures("collector")
@pytest.mark.parametrize("hook", ["after_worker_boot", "after_process_boot"])
def test_a_ready_process_freezes_start_up_and_makes_full_collections_rare(hook: str) -> None:
    # Given a process with start-up objects and Python's default thresholds
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    made = [{"start-up": i} for i in range(1000)]
    # When the worker (or a pool child) is ready
    getattr(WorkerLifecycle(), hook)(None)
    # Then start-up's objects are out of the collector's scans
    assert gc.get_freeze_count() >= len(made)
    # And a full collection waits for FULL_EVERY passes of generation 1, the young ones unchanged
    assert gc.get_threshold() == (700, 10, FULL_EVERY)
