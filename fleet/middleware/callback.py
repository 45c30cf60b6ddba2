"""The tier job's completion callback: once its final result is stored, a job with a ``callback_url``
has the callback task queued (:mod:`fleet.callbacks`); a redelivery of a finished job queues it
again (at least once: the first run may have died between its result and this)."""

from __future__ import annotations

from collections.abc import Callable

from fleet.middleware.base import Job, Middleware

__all__ = ["Callback"]


class Callback(Middleware):
    def __init__(self, send: Callable[[str, str], None]) -> None:
        self.send = send

    def after_flush(self, job: Job, written: bool) -> None:
        url = job.request.callback_url
        if url and (written or job.skipped) and job.envelope.shadow is None:
            self.send(job.id, url)
