"""The providers' batch APIs, on the adapters' own client, payloads and parsing.

OpenAI (and OpenAI-compatible servers that offer it): upload the items as a JSONL file
(``POST {base}/files``, purpose ``batch``), create the batch (``POST {base}/batches``, window 24h),
poll it (``GET {base}/batches/{id}``), read its output and error files
(``GET {base}/files/{id}/content``), cancel it (``POST {base}/batches/{id}/cancel``).
Anthropic: ``POST /v1/messages/batches`` with the items, ``GET .../{id}`` until ``ended``,
``GET .../{id}/results`` (JSONL), ``POST .../{id}/cancel``.

Each item is the body the adapter sends for a live call (``_payload``) and each answer is read by the
adapter's own parser (``_parse``), so a batch item's answer is checked and counted as a live one's.
A batch lives on the provider that holds its file: every call here names the provider it was made on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from fleet.errors import ProviderError, ServerError
from fleet.providers.anthropic import ANTHROPIC_VERSION, AnthropicProvider
from fleet.providers.base import ChatRequest, ChatResponse
from fleet.providers.openai_compat import OpenAICompatProvider

__all__ = ["BatchAPI", "BatchItem", "BatchState", "batch_api"]

#: How long one batch API call may take (an upload of a large file included).
_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One job's call in a batch: its ``custom_id`` (the job's id) and its request."""

    custom_id: str
    request: ChatRequest


@dataclass(frozen=True, slots=True)
class BatchState:
    """A batch as its provider last described it."""

    ended: bool
    #: The provider's own status word (``in_progress``, ``completed``, ``ended``, ...).
    status: str


class BatchAPI(Protocol):
    """One provider's batch API. Every method raises a :class:`ProviderError` on failure."""

    provider: str

    def submit(self, model: str, items: list[BatchItem]) -> str:
        """Create a batch of ``items`` on ``model``; its id."""
        ...

    def poll(self, batch_id: str) -> BatchState: ...

    def results(
        self, batch_id: str, requests: dict[str, ChatRequest]
    ) -> dict[str, ChatResponse | ProviderError]:
        """Each item's answer (parsed as a live call's) or error, by ``custom_id``; an item the
        provider did not answer is missing."""
        ...

    def cancel(self, batch_id: str) -> None: ...


def batch_api(adapter: Any) -> BatchAPI | None:
    """The batch API of a provider adapter, or None when its wire has none (the inline mock)."""
    if isinstance(adapter, OpenAICompatProvider):
        return _OpenAIBatches(adapter)
    if isinstance(adapter, AnthropicProvider):
        return _AnthropicBatches(adapter)
    return None


class _Batches:
    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter
        self.provider = str(adapter.name)

    def _headers(self) -> dict[str, str]:
        raise NotImplementedError

    def _call(self, method: str, url: str, model: str = "", **kwargs: Any) -> httpx.Response:
        """One call of the batch API; an error status raises the adapter's ProviderError for it."""
        # A stand-in request names the batch in the adapter's messages and errors.
        request = ChatRequest(model=model or "batch", prompt="", timeout_s=_TIMEOUT_S)
        headers = {**self._headers(), **kwargs.pop("headers", {})}
        client: httpx.Client = self.adapter._client
        try:
            response = client.request(method, url, headers=headers, timeout=_TIMEOUT_S, **kwargs)
        except httpx.RequestError as exc:
            raise ServerError(
                f"{self.provider}: batch API {method} {url}: {type(exc).__name__}: {exc}",
                provider=self.provider,
            ) from exc
        if not response.is_success:
            self.adapter._raise_for_status(response, request)
        return response

    def _parse(self, body: Any, request: ChatRequest) -> ChatResponse | ProviderError:
        """An item's answer body, read by the adapter's own parser (as a live answer is)."""
        response = httpx.Response(200, json=body, request=httpx.Request("POST", self.adapter.base_url))
        try:
            parsed: ChatResponse = self.adapter._parse(response, request)
        except ProviderError as exc:
            return exc
        return parsed


class _OpenAIBatches(_Batches):
    def _headers(self) -> dict[str, str]:
        key = self.adapter._api_key
        return {"authorization": f"Bearer {key.get_secret_value()}"} if key is not None else {}

    def submit(self, model: str, items: list[BatchItem]) -> str:
        base = self.adapter.base_url
        url = "/v1/chat/completions"
        payload = self.adapter._payload
        rows = [
            {"custom_id": i.custom_id, "method": "POST", "url": url, "body": payload(i.request)}
            for i in items
        ]
        lines = [json.dumps(row) for row in rows]
        upload = self._call(
            "POST", f"{base}/files", model, data={"purpose": "batch"},
            files={"file": ("batch.jsonl", ("\n".join(lines) + "\n").encode(), "application/jsonl")},
        )  # fmt: skip
        file_id = str(upload.json()["id"])
        created = self._call(
            "POST", f"{base}/batches", model,
            json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        )  # fmt: skip
        return str(created.json()["id"])

    def poll(self, batch_id: str) -> BatchState:
        data = self._call("GET", f"{self.adapter.base_url}/batches/{batch_id}").json()
        status = str(data.get("status"))
        return BatchState(status in ("completed", "failed", "expired", "cancelled"), status)

    def results(
        self, batch_id: str, requests: dict[str, ChatRequest]
    ) -> dict[str, ChatResponse | ProviderError]:
        base = self.adapter.base_url
        data = self._call("GET", f"{base}/batches/{batch_id}").json()
        out: dict[str, ChatResponse | ProviderError] = {}
        for key in ("output_file_id", "error_file_id"):
            file_id = data.get(key)
            if not file_id:
                continue
            for custom_id, request, row in _rows(
                self._call("GET", f"{base}/files/{file_id}/content"), requests
            ):
                response = row.get("response") or {}
                if response.get("status_code") == 200 and isinstance(response.get("body"), dict):
                    out[custom_id] = self._parse(response["body"], request)
                else:
                    body = response.get("body") or row.get("error") or {}
                    out[custom_id] = _item_error(self.provider, request.model, body)
        return out

    def cancel(self, batch_id: str) -> None:
        self._call("POST", f"{self.adapter.base_url}/batches/{batch_id}/cancel")


class _AnthropicBatches(_Batches):
    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        key = self.adapter._api_key
        if key is not None:
            headers["x-api-key"] = key.get_secret_value()
        return headers

    def _url(self, batch_id: str = "") -> str:
        return f"{self.adapter.base_url}/v1/messages/batches" + (f"/{batch_id}" if batch_id else "")

    def submit(self, model: str, items: list[BatchItem]) -> str:
        body = {
            "requests": [
                {"custom_id": i.custom_id, "params": self.adapter._payload(i.request)} for i in items
            ]
        }
        return str(self._call("POST", self._url(), model, json=body).json()["id"])

    def poll(self, batch_id: str) -> BatchState:
        status = str(self._call("GET", self._url(batch_id)).json().get("processing_status"))
        return BatchState(status == "ended", status)

    def results(
        self, batch_id: str, requests: dict[str, ChatRequest]
    ) -> dict[str, ChatResponse | ProviderError]:
        out: dict[str, ChatResponse | ProviderError] = {}
        for custom_id, request, row in _rows(self._call("GET", f"{self._url(batch_id)}/results"), requests):
            result = row.get("result") or {}
            if result.get("type") == "succeeded" and isinstance(result.get("message"), dict):
                out[custom_id] = self._parse(result["message"], request)
            else:
                error = result.get("error") or {}
                out[custom_id] = _item_error(self.provider, request.model, error, str(result.get("type")))
        return out

    def cancel(self, batch_id: str) -> None:
        self._call("POST", f"{self._url(batch_id)}/cancel")


def _rows(
    response: httpx.Response, requests: dict[str, ChatRequest]
) -> Iterator[tuple[str, ChatRequest, dict[str, Any]]]:
    """A JSONL results file, row by row, with the request of each row's ``custom_id`` (rows of
    items the fleet did not ask for are left out)."""
    for line in response.text.splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        custom_id = str(row.get("custom_id"))
        request = requests.get(custom_id)
        if request is not None and isinstance(row, dict):
            yield custom_id, request, row


def _item_error(provider: str, model: str, body: Any, kind: str = "errored") -> ProviderError:
    """A batch item that failed, as the server error it stands for (the job goes to its live chain)."""
    error = body.get("error") if isinstance(body, dict) else None
    while isinstance(error, dict) and isinstance(error.get("error"), dict):
        error = error["error"]
    message = str(error.get("message")) if isinstance(error, dict) else kind
    return ServerError(
        f"{provider}/{model}: batch item {kind}: {message[:300]}", provider=provider, model=model
    )
