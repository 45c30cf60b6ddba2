"""Completion callbacks: a job with a ``callback_url`` gets its final result POSTed there.

The POST is made by the callback task on the escalations queue, never by a tier worker: a slow or
failing endpoint holds no model slot, and the result is stored in the fleet before any callback
exists, so it is never lost (``fleet result`` has it). A failed POST is retried with capped,
jittered backoff (``[callbacks]``), then logged and given up on. Delivery is at least once (a
redelivered job, a person's later answer): receivers deduplicate on ``task_id`` and keep the latest
``finished_at``.

The body is ``{"task_id", "result"}`` (the TaskResult). With the secret set (the variable named by
``[callbacks] secret_env``), each POST carries ``X-Fleet-Timestamp`` (epoch seconds) and
``X-Fleet-Signature: sha256=<hex>``, the HMAC-SHA256 of ``"<timestamp>." + body`` under the secret:
a receiver recomputes it and rejects an old timestamp, as with Stripe's and Slack's signatures.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
from typing import Any

from fleet import keys
from fleet.app import CALLBACK_TASK
from fleet.notify import backoff_s, post_webhook
from fleet.settings import CallbackSettings

__all__ = ["deliver", "request_callback", "send_callback", "signature"]

log = logging.getLogger(__name__)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: the HMAC-SHA256 of ``"<timestamp>." + body`` under ``secret``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def request_callback(request: Any) -> str | None:
    """The ``callback_url`` of a request as a message or a record holds it (a dict), if any."""
    url = request.get("callback_url") if isinstance(request, dict) else None
    return url if isinstance(url, str) and url else None


def send_callback(app: Any, task_id: str, url: str) -> None:
    """Queue the callback of a job whose final result is stored (the escalations worker POSTs it)."""
    app.send_task(CALLBACK_TASK, args=[task_id, url], queue="escalations")


def deliver(client: Any, settings: CallbackSettings, task_id: str, url: str, *, retries: int) -> float | None:
    """POST the job's stored result to ``url``; the delay before the next try when it failed and tries
    are left, else None."""
    from fleet.producer import decode_result  # deferred: the producer imports the app's machinery

    raw = client.get(keys.result(task_id))
    result = decode_result(raw) if raw is not None else None
    if result is None:
        log.error("callback for task %s: no final result stored (expired?): nothing sent", task_id)
        return None
    body = json.dumps({"task_id": task_id, "result": result.model_dump(mode="json")}).encode()
    headers = {"content-type": "application/json"}
    secret = os.environ.get(settings.secret_env)
    if secret:
        stamp = str(int(time.time()))
        headers.update({"x-fleet-timestamp": stamp, "x-fleet-signature": signature(secret, stamp, body)})
    failure = post_webhook(url, body, timeout_s=settings.timeout_s, headers=headers)
    if failure is None:
        log.info("callback for task %s delivered", task_id)
        return None
    if retries >= settings.max_retries:
        log.error("callback for task %s failed %d times, giving up: %s", task_id, retries + 1, failure)
        return None
    delay = backoff_s(retries, settings.backoff_s, settings.backoff_max_s)
    log.warning("callback for task %s failed (%s); retry in %.1f s", task_id, failure, delay)
    return delay
