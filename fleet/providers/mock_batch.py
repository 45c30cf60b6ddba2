"""The providers' batch APIs on the mock provider: OpenAI's Files and Batches, Anthropic's Message
Batches. SIMULATED: a batch ends ``batch_delay_s`` after it was created (real batches take minutes to
hours, within 24 h), and each item fails with probability ``batch_failure_rate`` (decided by a hash
of the batch and the item's ``custom_id``, so a run is repeatable). Items are answered as live calls
are (same text, usage and schema handling), without faults or latency.

OpenAI:    POST /v1/files (multipart, purpose=batch, a JSONL of {custom_id, method, url, body}),
           POST /v1/batches, GET /v1/batches/{id}, POST /v1/batches/{id}/cancel,
           GET /v1/files/{id}/content (the output or error file, JSONL)
Anthropic: POST /v1/messages/batches ({requests: [{custom_id, params}]}), GET /v1/messages/batches/{id},
           GET /v1/messages/batches/{id}/results (JSONL), POST /v1/messages/batches/{id}/cancel
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fleet.providers.mock_answers import Wire
from fleet.providers.mock_wire import answer_response, error_response, json_response, parse_call

__all__ = ["BatchBook", "batch_routes"]


@dataclass
class _Batch:
    id: str
    wire: Wire
    created: float
    #: (custom_id, request body) per item.
    items: list[tuple[str, dict[str, Any]]]
    input_file_id: str = ""
    cancelled_at: float | None = None
    #: custom_id -> (ok, answer body or error text), made when the batch ends.
    results: dict[str, tuple[bool, Any]] | None = None


@dataclass
class BatchBook:
    """The mock's files and batches (its state; ``/_mock/reset`` empties it)."""

    files: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, _Batch] = field(default_factory=dict)


def _settings(request: Request) -> tuple[Any, BatchBook]:
    state = request.app.state.mock
    return state.config, state.batches


def _find(request: Request, wire: Wire, *, cancel: bool = False) -> _Batch | Response:
    """The batch the path names, in ``wire``'s API (cancelled first, when asked and not ended), or
    the provider's 404."""
    _, book = _settings(request)
    batch = book.batches.get(request.path_params["batch_id"])
    if batch is None or batch.wire != wire:
        kind = "invalid_request_error" if wire == "openai" else "not_found_error"
        return error_response(wire, 404, kind, "no such batch")
    if cancel and batch.results is None:
        batch.cancelled_at = time.time()
    return batch


def _is_ended(request: Request, batch: _Batch) -> bool:
    config, _ = _settings(request)
    return _ended(batch, config.batch_delay_s, config.batch_failure_rate, config.seed)


def _ended(batch: _Batch, delay_s: float, failure_rate: float, seed: int) -> bool:
    """Whether the batch has ended; its results are made the first time it is seen ended."""
    if batch.cancelled_at is None and time.time() - batch.created < delay_s:
        return False
    if batch.results is None:
        batch.results = {}
        for custom_id, body in batch.items:
            key = f"{seed}\0{batch.id}\0{custom_id}".encode()
            draw = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2.0**64
            if batch.cancelled_at is not None:
                batch.results[custom_id] = (False, "cancelled")
            elif draw < failure_rate:
                batch.results[custom_id] = (False, "SIMULATED item failure")
            else:
                call = parse_call(batch.wire, body)
                if isinstance(call, str):
                    batch.results[custom_id] = (False, call)
                else:
                    digest = hashlib.blake2b(call.canonical, digest_size=16).digest()
                    answer = bytes(answer_response(call, "ok", digest).body)
                    batch.results[custom_id] = (True, json.loads(answer))
    return True


# --- OpenAI ---------------------------------------------------------------------------------------


async def _upload(request: Request) -> Response:
    _, book = _settings(request)
    content_type = request.headers.get("content-type", "")
    raw = await request.body()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
    )
    fields: dict[str, bytes] = {}
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        fields[str(part.get_param("name", header="content-disposition"))] = (
            payload if isinstance(payload, bytes) else b""
        )
    data, purpose = fields.get("file"), fields.get("purpose", b"").decode()
    if not data or purpose != "batch":
        return error_response("openai", 400, "invalid_request_error", "expected a file and purpose=batch")
    file_id = f"file-{uuid.uuid4().hex[:24]}"
    book.files[file_id] = data
    return json_response({"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                          "filename": "batch.jsonl", "purpose": "batch"})  # fmt: skip


def _openai_batch(batch: _Batch, ended: bool) -> dict[str, Any]:
    results = batch.results or {}
    failed = sum(1 for ok, _ in results.values() if not ok)
    status = "in_progress"
    if ended:
        status = "cancelled" if batch.cancelled_at is not None else "completed"
    return {
        "id": batch.id, "object": "batch", "endpoint": "/v1/chat/completions",
        "input_file_id": batch.input_file_id, "completion_window": "24h", "status": status,
        "output_file_id": f"{batch.id}-output" if ended and len(results) > failed else None,
        "error_file_id": f"{batch.id}-errors" if ended and failed else None,
        "created_at": int(batch.created), "completed_at": int(time.time()) if ended else None,
        "request_counts": {"total": len(batch.items), "completed": len(results) - failed if ended else 0,
                           "failed": failed},
    }  # fmt: skip


async def _create_openai(request: Request) -> Response:
    _, book = _settings(request)
    try:
        body = json.loads(await request.body())
        lines = book.files[body["input_file_id"]].decode().splitlines()
        items = [
            (str(r["custom_id"]), r["body"]) for r in (json.loads(line) for line in lines if line.strip())
        ]
    except (ValueError, KeyError, TypeError) as exc:
        return error_response("openai", 400, "invalid_request_error", f"bad batch request: {exc}")
    batch = _Batch(f"batch_{uuid.uuid4().hex[:24]}", "openai", time.time(), items, body["input_file_id"])
    book.batches[batch.id] = batch
    return json_response(_openai_batch(batch, False))


async def _get_openai(request: Request) -> Response:
    batch = _find(request, "openai")
    return (
        batch
        if isinstance(batch, Response)
        else json_response(_openai_batch(batch, _is_ended(request, batch)))
    )


async def _cancel_openai(request: Request) -> Response:
    batch = _find(request, "openai", cancel=True)
    return (
        batch
        if isinstance(batch, Response)
        else json_response(_openai_batch(batch, _is_ended(request, batch)))
    )


async def _file_content(request: Request) -> Response:
    _, book = _settings(request)
    file_id = request.path_params["file_id"]
    batch_id, _, which = file_id.rpartition("-")
    batch = book.batches.get(batch_id)
    if batch is None or batch.results is None or which not in ("output", "errors"):
        data = book.files.get(file_id)
        if data is None:
            return error_response("openai", 404, "invalid_request_error", "no such file")
        return Response(data, media_type="application/jsonl")
    lines = []
    for custom_id, (ok, result) in batch.results.items():
        if ok != (which == "output"):
            continue
        response = {"status_code": 200, "request_id": uuid.uuid4().hex, "body": result} if ok else {
            "status_code": 500, "request_id": uuid.uuid4().hex,
            "body": {"error": {"message": result, "type": "server_error"}},
        }  # fmt: skip
        lines.append(json.dumps({"id": f"batch_req_{uuid.uuid4().hex[:16]}", "custom_id": custom_id,
                                 "response": response, "error": None}))  # fmt: skip
    return Response("\n".join(lines) + "\n", media_type="application/jsonl")


# --- Anthropic ------------------------------------------------------------------------------------


def _anthropic_batch(batch: _Batch, ended: bool, request: Request) -> dict[str, Any]:
    base_url = str(request.base_url).rstrip("/")
    results = batch.results or {}
    errored = sum(1 for ok, _ in results.values() if not ok)
    counts = {"processing": 0 if ended else len(batch.items), "succeeded": len(results) - errored,
              "errored": errored, "canceled": 0, "expired": 0}  # fmt: skip
    return {
        "id": batch.id, "type": "message_batch",
        "processing_status": "ended" if ended else ("canceling" if batch.cancelled_at else "in_progress"),
        "request_counts": counts,
        "created_at": _iso(batch.created), "ended_at": _iso(time.time()) if ended else None,
        "expires_at": _iso(batch.created + 86400),
        "results_url": f"{base_url}/v1/messages/batches/{batch.id}/results" if ended else None,
    }  # fmt: skip


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


async def _create_anthropic(request: Request) -> Response:
    _, book = _settings(request)
    try:
        body = json.loads(await request.body())
        items = [(str(r["custom_id"]), r["params"]) for r in body["requests"]]
    except (ValueError, KeyError, TypeError) as exc:
        return error_response("anthropic", 400, "invalid_request_error", f"bad batch request: {exc}")
    batch = _Batch(f"msgbatch_{uuid.uuid4().hex[:24]}", "anthropic", time.time(), items)
    book.batches[batch.id] = batch
    return json_response(_anthropic_batch(batch, False, request))


async def _get_anthropic(request: Request) -> Response:
    batch = _find(request, "anthropic")
    if isinstance(batch, Response):
        return batch
    return json_response(_anthropic_batch(batch, _is_ended(request, batch), request))


async def _cancel_anthropic(request: Request) -> Response:
    batch = _find(request, "anthropic", cancel=True)
    if isinstance(batch, Response):
        return batch
    return json_response(_anthropic_batch(batch, _is_ended(request, batch), request))


async def _anthropic_results(request: Request) -> Response:
    _, book = _settings(request)
    batch = book.batches.get(request.path_params["batch_id"])
    if batch is None or batch.wire != "anthropic" or batch.results is None:
        return error_response("anthropic", 404, "not_found_error", "no results for this batch (yet)")
    lines = []
    for custom_id, (ok, result) in batch.results.items():
        outcome = {"type": "succeeded", "message": result} if ok else {
            "type": "canceled" if result == "cancelled" else "errored",
            "error": {"type": "error", "error": {"type": "api_error", "message": result}},
        }  # fmt: skip
        lines.append(json.dumps({"custom_id": custom_id, "result": outcome}))
    return Response("\n".join(lines) + "\n", media_type="application/jsonl")


def batch_routes() -> list[Route]:
    """The batch APIs' routes, for the mock provider's app."""
    return [
        Route("/v1/files", _upload, methods=["POST"]),
        Route("/v1/files/{file_id}/content", _file_content, methods=["GET"]),
        Route("/v1/batches", _create_openai, methods=["POST"]),
        Route("/v1/batches/{batch_id}", _get_openai, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", _cancel_openai, methods=["POST"]),
        Route("/v1/messages/batches", _create_anthropic, methods=["POST"]),
        Route("/v1/messages/batches/{batch_id}", _get_anthropic, methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}/results", _anthropic_results, methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}/cancel", _cancel_anthropic, methods=["POST"]),
    ]
