"""The webhook message, its backoff, and the API's loopback rule: pure logic."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.api import check_bind
from fleet.errors import ConfigError, Reason
from fleet.escalations import EscalationRecord
from fleet.models import Attempt, Tier
from fleet.notify import backoff_s, slack_message
from fleet.settings import EscalationSettings, load_settings

RECORD = EscalationRecord(
    id="9c1e4b7a2f3d5e60", task_id="abc", state="open", tier=Tier.FULL, reason=Reason.CHAIN_EXHAUSTED,
    kind="code.review",
    detail="no link of the full chain gave an acceptable answer <script>",
    request={"prompt": "Review this secret design: " + "x" * 600},
    attempts=[Attempt(link="anthropic:claude-opus-4-1", provider="anthropic", model="claude-opus-4-1",
                      outcome="overloaded")],
    created_at=1000.0, updated_at=1000.0,
)  # fmt: skip


def _fields(msg: dict[str, Any]) -> list[str]:
    return [f["text"] for block in msg["blocks"] for f in block.get("fields", [])]


def test_slack_message_has_text_and_blocks_and_no_prompt_by_default() -> None:
    msg = slack_message(RECORD, EscalationSettings())
    assert "9c1e4b7a2f3d5e60" in msg["text"] and "chain_exhausted" in msg["text"]
    kinds = [b["type"] for b in msg["blocks"]]
    assert kinds[0] == "header" and "section" in kinds and kinds[-1] == "context"
    dumped = str(msg)
    assert "secret design" not in dumped
    assert "&lt;script&gt;" in dumped and "<script>" not in dumped
    assert "fleet escalations show 9c1e4b7a2f3d5e60" in dumped
    fields = _fields(msg)
    assert (
        "*Tier*\nfull" in fields and "*Attempts*\n1, last: anthropic:claude-opus-4-1 -> overloaded" in fields
    )
    assert not any(f.startswith("*Retry of*") for f in fields)


def test_slack_message_names_the_escalation_a_retry_follows() -> None:
    msg = slack_message(RECORD.model_copy(update={"retry_of": "0a1b2c3d4e5f6a7b"}), EscalationSettings())
    assert "*Retry of*\n`0a1b2c3d4e5f6a7b`" in _fields(msg)


def test_slack_message_includes_a_bounded_prompt_excerpt_when_asked() -> None:
    cfg = EscalationSettings(webhook_include_prompt=True, inbox_url="https://fleet.example.com/inbox")
    dumped = str(slack_message(RECORD, cfg))
    assert "Review this secret design" in dumped and "x" * 600 not in dumped
    assert "https://fleet.example.com/inbox#9c1e4b7a2f3d5e60" in dumped


def test_backoff_doubles_and_is_capped() -> None:
    assert 1.0 <= backoff_s(0, 2.0, 10.0) <= 2.0
    assert 4.0 <= backoff_s(2, 2.0, 10.0) <= 8.0
    assert 5.0 <= backoff_s(10, 2.0, 10.0) <= 10.0


def test_the_api_refuses_to_serve_off_loopback_without_a_token() -> None:
    settings = load_settings(env={})
    with pytest.raises(
        ConfigError, match=r"refusing to listen on 0\.0\.0\.0 without a token.*FLEET_API_TOKEN"
    ):
        check_bind("0.0.0.0", None, settings)
    check_bind("127.0.0.1", None, settings)
    check_bind("::1", None, settings)
    check_bind("0.0.0.0", "s3cret", settings)


def test_the_token_variable_is_not_read_as_a_config_key() -> None:
    settings = load_settings(env={"FLEET_API_TOKEN": "s3cret", "FLEET_API__PORT": "9000"})
    assert settings.api.port == 9000 and settings.api.token_env == "FLEET_API_TOKEN"
    assert "s3cret" not in str(settings.masked())
