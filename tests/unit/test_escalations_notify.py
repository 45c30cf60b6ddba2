"""The webhook message, its backoff, and the API's loopback rule: pure logic."""

from __future__ import annotations

import pytest

from fleet.api import check_bind
from fleet.errors import ConfigError
from fleet.notify import backoff_s, slack_message
from fleet.settings import EscalationSettings, load_settings

RECORD = {
    "id": "9c1e4b7a2f3d5e60", "task_id": "abc", "tier": "full", "reason": "chain_exhausted",
    "kind": "code.review",
    "detail": "no link of the full chain gave an acceptable answer <script>",
    "request": {"prompt": "Review this secret design: " + "x" * 600},
    "attempts": [{"link": "anthropic:claude-opus-4-1", "outcome": "overloaded"}], "retry_of": None,
}  # fmt: skip


def test_slack_message_has_text_and_blocks_and_no_prompt_by_default() -> None:
    msg = slack_message(RECORD, EscalationSettings())
    assert "9c1e4b7a2f3d5e60" in msg["text"] and "chain_exhausted" in msg["text"]
    kinds = [b["type"] for b in msg["blocks"]]
    assert kinds[0] == "header" and "section" in kinds and kinds[-1] == "context"
    dumped = str(msg)
    assert "secret design" not in dumped
    assert "&lt;script&gt;" in dumped and "<script>" not in dumped
    assert "fleet escalations show 9c1e4b7a2f3d5e60" in dumped


def test_slack_message_includes_a_bounded_prompt_excerpt_when_asked() -> None:
    cfg = EscalationSettings(webhook_include_prompt=True, inbox_url="https://fleet.example.com/inbox")
    dumped = str(slack_message(RECORD, cfg))
    assert "Review this secret design" in dumped and "x" * 600 not in dumped
    assert "https://fleet.example.com/inbox#9c1e4b7a2f3d5e60" in dumped


def test_backoff_doubles_and_is_capped() -> None:
    cfg = EscalationSettings(webhook_backoff_s=2.0, webhook_backoff_max_s=10.0)
    assert 1.0 <= backoff_s(0, cfg) <= 2.0
    assert 4.0 <= backoff_s(2, cfg) <= 8.0
    assert 5.0 <= backoff_s(10, cfg) <= 10.0


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
