"""Tell people about new escalations: a Slack-compatible webhook, at least once, never in the way.

The record is stored before any message about it exists, so a webhook that is slow, down or wrong
never blocks or loses an escalation. The notify task (:func:`notify_people`) posts, retries with
capped exponential backoff (``[escalation] webhook_*``), and marks the record ``notified_at`` on
success. When an escalations worker starts, it re-announces every open or claimed record not yet
notified, so a pool killed in the middle of a notification catches up at once instead of after the
broker's visibility timeout. Delivery is at least once: a receiver can deduplicate on the
escalation id in the message.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import httpx
from celery.signals import worker_ready

from fleet.app import NOTIFY_TASK
from fleet.discovery import redis_client
from fleet.escalations import EscalationRecord, EscalationStore, RedisEscalationStore, State
from fleet.settings import EscalationSettings, Settings

__all__ = ["backoff_s", "notify_people", "post_webhook", "resend_unnotified", "slack_message"]

log = logging.getLogger(__name__)

#: Characters of the prompt shown in a message (with ``webhook_include_prompt``).
PROMPT_EXCERPT = 500


def _esc(text: str) -> str:
    """Slack's mrkdwn escaping: the three characters it treats as control."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(record: EscalationRecord, settings: EscalationSettings) -> dict[str, Any]:
    """The Slack-compatible JSON for a new escalation: ``text`` (fallback) and ``blocks``."""
    esc_id, tier, reason = record.id, record.tier or "no tier", str(record.reason)
    kind = record.kind or "job"
    attempts = record.attempts
    text = f"Escalation {esc_id}: a {kind} on tier {tier} needs a person ({reason})"
    fields = [
        f"*Tier*\n{_esc(str(tier))}",
        f"*Reason*\n`{_esc(reason)}`",
        f"*Kind*\n{_esc(kind)}",
        f"*Task*\n`{_esc(record.task_id)}`",
    ]
    if attempts:
        last = attempts[-1]
        fields.append(f"*Attempts*\n{len(attempts)}, last: {_esc(last.link)} -> {last.outcome}")
    if record.retry_of:
        fields.append(f"*Retry of*\n`{_esc(record.retry_of)}`")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"Escalation {esc_id} needs a person"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
    ]
    if record.detail:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _esc(record.detail[:1000])}})
    request = record.request
    if (
        settings.webhook_include_prompt
        and isinstance(request, dict)
        and isinstance(request.get("prompt"), str)
    ):
        prompt = request["prompt"]
        excerpt = prompt[:PROMPT_EXCERPT] + ("…" if len(prompt) > PROMPT_EXCERPT else "")
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"```{_esc(excerpt)}```"}})
    where = f"`fleet escalations show {esc_id}`"
    if settings.inbox_url:
        where = f"<{settings.inbox_url}#{esc_id}|open the inbox> or {where}"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": where}]})
    return {"text": text, "blocks": blocks}


def post_webhook(
    url: str, payload: dict[str, Any] | bytes, *, timeout_s: float, headers: dict[str, str] | None = None
) -> str | None:
    """POST the message (JSON data, or a body already encoded); None on a 2xx answer, else what went
    wrong (for the log and the retry)."""
    try:
        if isinstance(payload, bytes):
            response = httpx.post(url, content=payload, headers=headers, timeout=timeout_s)
        else:
            response = httpx.post(url, json=payload, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if response.is_success:
        return None
    return f"HTTP {response.status_code}: {response.text[:200]}"


def backoff_s(retries: int, base_s: float, cap_s: float) -> float:
    """Seconds before retry number ``retries + 1``: doubling from ``base_s``, capped, with jitter."""
    delay = min(cap_s, base_s * (2**retries))
    return float(delay * (0.5 + random.random() / 2))


def notify_people(
    store: EscalationStore, settings: EscalationSettings, esc_id: str, *, retries: int
) -> float | None:
    """Post a new escalation to the webhook and mark it notified; the delay before the next try when
    the post failed and tries are left, else None (a webhook that keeps failing is logged and given
    up on: the record stays)."""
    record = store.get_or_none(esc_id)
    if record is None:
        log.error("escalation %r announced but not found", esc_id)
        return None
    log.info(
        "escalation %s open: task %s, tier %s, reason %s",
        record.id,
        record.task_id,
        record.tier,
        record.reason,
    )
    if not settings.webhook_url or record.notified_at is not None or record.state not in ("open", "claimed"):
        return None
    failure = post_webhook(
        settings.webhook_url, slack_message(record, settings), timeout_s=settings.webhook_timeout_s
    )
    if failure is None:
        store.mark_notified(record.id)
        return None
    if retries >= settings.webhook_max_retries:
        log.error("escalation %s: webhook failed %d times, giving up: %s", record.id, retries + 1, failure)
        return None
    delay = backoff_s(retries, settings.webhook_backoff_s, settings.webhook_backoff_max_s)
    log.warning("escalation %s: webhook failed (%s); retry in %.1f s", record.id, failure, delay)
    return delay


def resend_unnotified(app: Any, settings: Settings, store: EscalationStore) -> int:
    """Announce again each open or claimed escalation that has no ``notified_at``; returns how many."""
    if not settings.escalation.webhook_url:
        return 0
    sent = 0
    waiting: tuple[State, ...] = ("open", "claimed")
    for state in waiting:
        for record in store.list(state=state):
            if record.notified_at is None:
                app.send_task(NOTIFY_TASK, args=[record.id], queue="escalations")
                sent += 1
    return sent


def _catch_up(sender: Any = None, **_: Any) -> None:
    """On an escalations worker's start: notifications a killed worker left undone go out now."""
    try:
        queues = {q.name for q in sender.task_consumer.queues}
    except AttributeError:
        return
    if "escalations" not in queues:
        return
    app = sender.app
    settings: Settings = app.fleet_settings
    store = RedisEscalationStore(redis_client(settings), retention_days=settings.escalation.retention_days)
    try:
        sent = resend_unnotified(app, settings, store)
    except Exception:  # a start-up hook must not stop the worker; the next start tries again
        log.exception("could not re-announce un-notified escalations")
        return
    if sent:
        log.warning("re-announced %d escalation(s) not yet notified", sent)


worker_ready.connect(_catch_up)
