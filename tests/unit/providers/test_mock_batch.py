"""The mock provider's batch APIs over real HTTP, as the providers document them: OpenAI's Files and
Batches, Anthropic's Message Batches; the SIMULATED completion delay, item failures and cancel."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from fleet.providers.mock_server import MockConfig, MockServerThread


@pytest.fixture(scope="module")
def mock() -> Iterator[MockServerThread]:
    with MockServerThread(MockConfig(batch_delay_s=0.3)) as server:
        yield server


def _chat(i: int) -> dict[str, object]:
    return {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": f"Rename f{i} to g{i}"}]}


def _jsonl(url: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in httpx.get(url, timeout=5).text.splitlines()]


def _item(custom_id: str, content: str) -> dict[str, object]:
    params = {
        "model": "claude-haiku-4-5",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": content}],
    }
    return {"custom_id": custom_id, "params": params}


def _wait(get: object, url: str, done: str, key: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while True:
        body: dict[str, object] = httpx.get(url, timeout=5).json()
        if body[key] == done or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_an_openai_batch_is_in_progress_then_completes_with_an_output_file(mock: MockServerThread) -> None:
    lines = "\n".join(
        json.dumps(
            {"custom_id": f"job-{i}", "method": "POST", "url": "/v1/chat/completions", "body": _chat(i)}
        )
        for i in range(3)
    )
    uploaded = httpx.post(f"{mock.url}/v1/files", data={"purpose": "batch"},
                          files={"file": ("batch.jsonl", lines.encode())}, timeout=5)  # fmt: skip
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]
    spec = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    created = httpx.post(f"{mock.url}/v1/batches", timeout=5, json=spec)
    batch = created.json()
    assert batch["status"] == "in_progress" and batch["request_counts"]["total"] == 3
    done = _wait(httpx.get, f"{mock.url}/v1/batches/{batch['id']}", "completed", "status")
    assert done["status"] == "completed" and done["error_file_id"] is None
    output = httpx.get(f"{mock.url}/v1/files/{done['output_file_id']}/content", timeout=5).text
    rows = [json.loads(line) for line in output.splitlines()]
    assert sorted(r["custom_id"] for r in rows) == ["job-0", "job-1", "job-2"]
    answer = rows[0]["response"]["body"]
    assert rows[0]["response"]["status_code"] == 200 and answer["choices"][0]["message"]["content"]
    assert answer["usage"]["prompt_tokens"] > 0


def test_an_anthropic_batch_ends_with_results_and_simulated_failures(mock: MockServerThread) -> None:
    httpx.post(f"{mock.url}/_mock/config", json={"batch_failure_rate": 0.5}, timeout=5)
    try:
        requests = [_item(f"item-{i}", f"Summarise note {i}") for i in range(20)]
        batch = httpx.post(f"{mock.url}/v1/messages/batches", json={"requests": requests}, timeout=5).json()
        assert batch["processing_status"] == "in_progress" and batch["results_url"] is None
        ended = _wait(
            httpx.get, f"{mock.url}/v1/messages/batches/{batch['id']}", "ended", "processing_status"
        )
        counts = ended["request_counts"]
        assert counts["succeeded"] + counts["errored"] == 20 and 0 < counts["errored"] < 20
        results = [
            json.loads(line) for line in httpx.get(str(ended["results_url"]), timeout=5).text.splitlines()
        ]
        kinds = {r["result"]["type"] for r in results}
        assert kinds == {"succeeded", "errored"}
        ok = next(r for r in results if r["result"]["type"] == "succeeded")
        assert ok["result"]["message"]["content"][0]["text"]
    finally:
        httpx.post(f"{mock.url}/_mock/config", json={"batch_failure_rate": 0.0}, timeout=5)


def test_a_cancelled_batch_ends_at_once_with_its_items_cancelled(mock: MockServerThread) -> None:
    httpx.post(f"{mock.url}/_mock/config", json={"batch_delay_s": 60}, timeout=5)
    try:
        requests = [_item("only", "hi")]
        batch = httpx.post(f"{mock.url}/v1/messages/batches", json={"requests": requests}, timeout=5).json()
        cancelled = httpx.post(f"{mock.url}/v1/messages/batches/{batch['id']}/cancel", timeout=5).json()
        assert cancelled["processing_status"] == "ended"
        [row] = [
            json.loads(line) for line in httpx.get(str(cancelled["results_url"]), timeout=5).text.splitlines()
        ]
        assert row["result"]["type"] == "canceled"
        assert httpx.get(f"{mock.url}/v1/messages/batches/nope", timeout=5).status_code == 404
    finally:
        httpx.post(f"{mock.url}/_mock/config", json={"batch_delay_s": 0.3}, timeout=5)
