"""The mock provider: a real HTTP server speaking the OpenAI and Anthropic wire formats.

    POST /v1/chat/completions   OpenAI chat completions (the ``openai`` SDK works unchanged)
    POST /v1/messages           Anthropic Messages (the ``anthropic`` SDK works unchanged)
    GET  /v1/models             both formats' model list
    GET  /stats                 calls in total, by kind ("ok" or a fault), by model, by model and kind
    POST /_mock/reset           zero the stats and the per-request occurrence counters
    GET|POST /_mock/config      the effective fault config; POST merges a JSON patch into it
    GET  /healthz

Answers are deterministic text built from the prompt. A JSON schema is honoured when asked through
OpenAI's ``response_format`` (``json_schema``) or through :data:`fleet.providers._http.SCHEMA_MARKER`
followed by the schema as JSON in any message or the system prompt (what the Anthropic adapter sends).

Faults (:data:`FAULT_KINDS`) are decided per call from a hash of (seed, model, messages, n), where n
counts earlier calls with the same model and messages: one workload under one seed meets the same
faults, while a retry of a call can draw another fate. ``x-mock-fault: <kind>`` (or ``ok``) forces one.
HTTP-error faults answer at once; answers (and answer-shaped faults) wait the configured latency.

    python -m fleet.providers.mock_server --port 8900 --failure-rate 0.1 --latency-ms 200 --seed 7
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.util
import json
import math
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from fleet.providers._http import SCHEMA_MARKER
from fleet.providers.mock_answers import MockCall as _Call
from fleet.providers.mock_answers import Wire, answer_text, answer_usage

__all__ = [
    "FAULT_KINDS",
    "FaultKind",
    "MockConfig",
    "MockServerThread",
    "create_app",
    "serve",
]

FaultKind = Literal[
    "rate_limited",
    "overloaded",
    "server_error",
    "timeout",
    "connection",
    "context_length_exceeded",
    "content_filtered",
    "auth",
    "bad_request",
    "malformed_response",
    "empty_answer",
    "truncated",
    "schema_mismatch",
]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)

# (openai status, openai type, openai code, anthropic status, anthropic type, message)
_HTTP_FAULTS: dict[str, tuple[int, str, str | None, int, str, str]] = {
    "rate_limited": (429, "requests", "rate_limit_exceeded", 429, "rate_limit_error", "Rate limit reached."),
    "overloaded": (503, "server_error", None, 529, "overloaded_error", "The server is overloaded."),
    "server_error": (500, "server_error", None, 500, "api_error", "The server had an error."),
    "auth": (401, "invalid_request_error", "invalid_api_key", 401, "authentication_error", "Bad API key."),
    "bad_request": (
        400,
        "invalid_request_error",
        "invalid_value",
        400,
        "invalid_request_error",
        "Bad request",
    ),
    # The message is built per call: the real ones name the token counts.
    "context_length_exceeded": (400, "invalid_request_error", "context_length_exceeded", 400, "", ""),
}
_TRANSPORT_KEY = "fleet.mock.transport"
#: Distinct (model, messages) pairs remembered for the occurrence count (about 100 bytes each).
_MAX_SEEN = 1_000_000


class MockConfig(BaseModel):
    """Every option of the mock provider; ``POST /_mock/config`` patches it at run time."""

    model_config = ConfigDict(extra="forbid")

    #: Seed of the per-call fate hash.
    seed: int = 0
    #: Probability that a call fails, spread over ``fault_weights``.
    failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    #: Relative weight of each fault kind under ``failure_rate`` (default: every kind equally).
    fault_weights: dict[FaultKind, float] = Field(default_factory=lambda: {k: 1.0 for k in FAULT_KINDS})
    #: Per-model probability of each kind; replaces ``failure_rate`` for the models listed.
    faults_by_model: dict[str, dict[FaultKind, float]] = Field(default_factory=dict)
    #: Models that always answer 503 (kind "overloaded").
    down_models: list[str] = Field(default_factory=list)
    #: Allow-list of model names; None accepts any (unknown ones get the provider's 404).
    models: list[str] | None = None
    #: Mean latency of an answer, in milliseconds.
    latency_ms: float = Field(default=0.0, ge=0.0)
    #: "fixed"; "uniform" in mean * (1 +- jitter); "lognormal" with sigma = jitter and that mean.
    latency_dist: Literal["fixed", "uniform", "lognormal"] = "fixed"
    latency_jitter: float = Field(default=0.5, ge=0.0, le=5.0)
    #: Retry-After sent with rate_limited (seconds; fractions go out in ``retry-after-ms`` too).
    retry_after_s: float = Field(default=1.0, ge=0.0)
    #: How long a "timeout" fault holds the call before answering.
    timeout_sleep_s: float = Field(default=30.0, ge=0.0)
    #: Context window named in context_length_exceeded messages.
    context_window: int = Field(default=128_000, gt=0)

    @field_validator("faults_by_model")
    @classmethod
    def _probabilities(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for model, kinds in value.items():
            if any(p < 0 for p in kinds.values()) or sum(kinds.values()) > 1.0 + 1e-9:
                raise ValueError(f"{model}: probabilities must be >= 0 and sum to at most 1")
        return value

    @field_validator("fault_weights")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in value.values()):
            raise ValueError("weights must be >= 0")
        return value


# --- the call -------------------------------------------------------------------------------------


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _marker_schema(texts: Sequence[str]) -> dict[str, Any] | None:
    for text in texts:
        at = text.find(SCHEMA_MARKER)
        if at >= 0:
            try:
                found, _ = json.JSONDecoder().raw_decode(text[at + len(SCHEMA_MARKER) :].lstrip())
            except ValueError:
                return None
            return found if isinstance(found, dict) else None
    return None


def _parse_call(wire: Wire, body: Any) -> _Call | str:
    """The call described by a request body, or the reason it is invalid."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return "model: a string is required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return "messages: a non-empty list of objects is required"
    if body.get("stream"):
        return "stream: the mock provider does not stream"
    system = _text(body.get("system")) if wire == "anthropic" else ""
    if wire == "anthropic" and not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    texts = [system, *(_text(m.get("content")) for m in messages)]
    users = [_text(m.get("content")) for m in messages if m.get("role") == "user"]
    fmt = body.get("response_format") if wire == "openai" else None
    schema = None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
    schema = schema if isinstance(schema, dict) else _marker_schema(texts)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    canonical = json.dumps([body["model"], system, messages], sort_keys=True, separators=(",", ":"))
    return _Call(
        wire=wire,
        model=body["model"],
        canonical=canonical.encode(),
        last_user=users[-1] if users else texts[-1],
        prompt_chars=sum(len(t) for t in texts),
        schema=schema,
        json_mode=isinstance(fmt, dict) and fmt.get("type") == "json_object",
        max_tokens=max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else None,
    )


# --- state: config, fates, stats ------------------------------------------------------------------


class _State:
    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.started = time.time()
        self.reset()

    def reset(self) -> None:
        self.total = 0
        self.by_kind: Counter[str] = Counter()
        self.by_model: Counter[str] = Counter()
        self.by_model_kind: defaultdict[str, Counter[str]] = defaultdict(Counter)
        # Seen-count per (model, messages) digest: the n in the fate hash.
        self.seen: dict[bytes, int] = {}

    def record(self, model: str, kind: str) -> None:
        self.total += 1
        self.by_kind[kind] += 1
        self.by_model[model] += 1
        self.by_model_kind[model][kind] += 1

    def stats(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_kind": dict(self.by_kind),
            "by_model": dict(self.by_model),
            "by_model_kind": {m: dict(k) for m, k in self.by_model_kind.items()},
            "uptime_s": round(time.time() - self.started, 3),
        }

    def decide(self, call: _Call) -> tuple[str, float, bytes]:
        """(kind, latency in seconds, digest of the prompt) for one call."""
        base = hashlib.blake2b(call.canonical, digest_size=16).digest()
        n = self.seen.get(base, 0)
        if n == 0 and len(self.seen) >= _MAX_SEEN:
            # Bound memory under endless unique workloads; only runs this long lose exact replay.
            self.seen.clear()
        self.seen[base] = n + 1
        key = str(self.config.seed).encode() + b"\0" + base + n.to_bytes(8, "big")
        digest = hashlib.blake2b(key, digest_size=32).digest()
        u = [int.from_bytes(digest[i : i + 8], "big") / 2.0**64 for i in (0, 8, 16, 24)]
        return self._kind(call, u[0], u[1]), self._latency(u[2], u[3]), base

    def _kind(self, call: _Call, draw: float, pick: float) -> str:
        cfg = self.config
        if call.model in cfg.down_models:
            return "overloaded"
        per_model = cfg.faults_by_model.get(call.model)
        if per_model is not None:
            acc = 0.0
            for kind in FAULT_KINDS:  # a fixed order keeps fates stable across config dumps
                acc += per_model.get(kind, 0.0)
                if draw < acc:
                    return kind if kind != "schema_mismatch" or call.schema else "ok"
            return "ok"
        if draw >= cfg.failure_rate:
            return "ok"
        weights = [
            (k, cfg.fault_weights.get(k, 0.0))
            for k in FAULT_KINDS
            if k != "schema_mismatch" or call.schema  # a mismatch needs a schema to miss
        ]
        total = sum(w for _, w in weights)
        target = pick * total
        for kind, weight in weights:
            target -= weight
            if target < 0:
                return kind
        return "ok"

    def _latency(self, u1: float, u2: float) -> float:
        cfg = self.config
        mean = cfg.latency_ms / 1000.0
        if mean <= 0 or cfg.latency_dist == "fixed":
            return mean
        if cfg.latency_dist == "uniform":
            return max(0.0, mean * (1 + cfg.latency_jitter * (2 * u1 - 1)))
        sigma = cfg.latency_jitter  # lognormal with the configured mean
        z = math.sqrt(-2.0 * math.log(max(u1, 1e-12))) * math.cos(2 * math.pi * u2)
        return mean * math.exp(sigma * z - sigma * sigma / 2)


# --- responses ------------------------------------------------------------------------------------


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, separators=(",", ":")).encode()
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _error(
    wire: Wire, status: int, etype: str, message: str, code: str | None = None, **hdr: str
) -> Response:
    if wire == "openai":
        body: dict[str, Any] = {"error": {"message": message, "type": etype, "param": None, "code": code}}
    else:
        body = {"type": "error", "error": {"type": etype, "message": message}}
    return _json(body, status, hdr or None)


def _fault_response(state: _State, call: _Call, kind: str, down: bool) -> Response:
    o_status, o_type, o_code, a_status, a_type, message = _HTTP_FAULTS[kind]
    a_type = a_type or o_type
    headers: dict[str, str] = {}
    if kind == "rate_limited":
        after = state.config.retry_after_s
        headers["retry-after"] = str(int(after)) if after == int(after) else f"{after:g}"
        headers["retry-after-ms"] = str(round(after * 1000))
    if kind == "context_length_exceeded":
        tokens = max(state.config.context_window + 1, call.prompt_chars // 4)
        message = (
            f"This model's maximum context length is {state.config.context_window} tokens. However, your "
            f"messages resulted in {tokens} tokens. Please reduce the length of the messages."
            if call.wire == "openai"
            else f"prompt is too long: {tokens} tokens > {state.config.context_window} maximum"
        )
    if call.wire == "openai":
        return _error("openai", 503 if down else o_status, o_type, message, o_code, **headers)
    return _error("anthropic", 503 if down else a_status, a_type, message, **headers)


def _answer(state: _State, call: _Call, kind: str, base: bytes) -> Response:
    ref = base.hex()
    text, finish = answer_text(call, kind, ref)
    tokens_in, tokens_out = answer_usage(call, text)
    if call.wire == "openai":
        content = None if finish == "content_filter" else text
        return _json(
            {
                "id": f"chatcmpl-mock{ref[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": call.model,
                "system_fingerprint": "fp_mock",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": {
                    "prompt_tokens": tokens_in,
                    "completion_tokens": tokens_out,
                    "total_tokens": tokens_in + tokens_out,
                },
            }
        )
    stop = {"stop": "end_turn", "length": "max_tokens", "content_filter": "refusal"}[finish]
    return _json(
        {
            "id": f"msg_mock{ref[:24]}",
            "type": "message",
            "role": "assistant",
            "model": call.model,
            # Anthropic sends no block for an empty answer or a refusal.
            "content": [{"type": "text", "text": text}] if text else [],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out},
        }
    )


# --- the app --------------------------------------------------------------------------------------

_MALFORMED = b'{"id": "mock", "object": "chat.completion", "choices": [{"message": {"content": "cut'


async def _drop(request: Request) -> Response:
    """Close the connection without an answer (uvicorn's transport), as a dead upstream would."""
    transport = request.scope.get(_TRANSPORT_KEY)
    if transport is None:
        # Not under uvicorn: raising makes the server abort the exchange (at worst a bare 500).
        raise ConnectionAbortedError("mock fault: connection")
    transport.abort()
    await asyncio.sleep(0)  # let connection_lost run, so uvicorn drops what we return
    return Response(b"", status_code=500)


class _CaptureTransport:
    """Outermost ASGI layer: remembers uvicorn's transport, which the "connection" fault closes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if transport is not None:
            scope[_TRANSPORT_KEY] = transport
        await self.app(scope, receive, send)


def create_app(config: MockConfig) -> ASGIApp:
    """The mock provider as an ASGI app (its Starlette app's ``state.mock`` holds config and stats)."""
    state = _State(config)

    async def call(request: Request, wire: Wire) -> Response:
        try:
            parsed = _parse_call(wire, json.loads(await request.body()))
        except ValueError:
            parsed = "the body is not valid JSON"
        if isinstance(parsed, str):
            state.record("", "bad_request")
            return _error(wire, 400, "invalid_request_error", parsed)
        models = state.config.models
        if models is not None and parsed.model not in models:
            state.record(parsed.model, "bad_request")
            if wire == "openai":
                text = f"The model `{parsed.model}` does not exist or you do not have access to it."
                return _error(wire, 404, "invalid_request_error", text, "model_not_found")
            return _error(wire, 404, "not_found_error", f"model: {parsed.model}")
        kind, latency, base = state.decide(parsed)
        forced = request.headers.get("x-mock-fault")
        if forced is not None:
            if forced != "ok" and forced not in FAULT_KINDS:
                return _error(wire, 400, "invalid_request_error", f"unknown x-mock-fault {forced!r}")
            kind = forced
        state.record(parsed.model, kind)
        if kind == "connection":
            return await _drop(request)
        if kind in _HTTP_FAULTS:
            down = parsed.model in state.config.down_models and forced is None
            return _fault_response(state, parsed, kind, down)
        await asyncio.sleep(state.config.timeout_sleep_s if kind == "timeout" else latency)
        if kind == "malformed_response":
            return Response(_MALFORMED, media_type="application/json")
        return _answer(state, parsed, kind, base)

    async def chat_completions(request: Request) -> Response:
        return await call(request, "openai")

    async def messages(request: Request) -> Response:
        return await call(request, "anthropic")

    async def list_models(request: Request) -> Response:
        names = state.config.models or sorted({"mock-small", "mock-large", *state.by_model} - {""})
        data = [
            {"id": n, "object": "model", "created": 0, "owned_by": "mock", "type": "model"}
            | {"display_name": n, "created_at": "2024-01-01T00:00:00Z"}
            for n in names
        ]
        first, last = (names[0], names[-1]) if names else (None, None)
        return _json({"object": "list", "data": data, "has_more": False, "first_id": first, "last_id": last})

    async def stats(request: Request) -> Response:
        return _json(state.stats())

    async def reset(request: Request) -> Response:
        state.reset()
        return _json({"reset": True})

    async def config_endpoint(request: Request) -> Response:
        if request.method == "POST":
            try:
                patch = json.loads(await request.body() or b"{}")
                if not isinstance(patch, dict):
                    raise ValueError("expected a JSON object")
                state.config = MockConfig.model_validate({**state.config.model_dump(), **patch})
            except (ValueError, ValidationError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=422)
        return _json(state.config.model_dump(mode="json"))

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok"})

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/stats", stats, methods=["GET"]),
            Route("/_mock/reset", reset, methods=["POST"]),
            Route("/_mock/config", config_endpoint, methods=["GET", "POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )
    app.state.mock = state
    return _CaptureTransport(app)


# --- serving --------------------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP,
    # and without it every answer (headers, then body) waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def _server(config: MockConfig, host: str, port: int) -> uvicorn.Server:
    # httptools parses several times faster than h11; use it when it is installed.
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host=host,
            port=port,
            loop="asyncio",
            http=http,
            ws="none",
            lifespan="off",
            access_log=False,
            log_config=None,  # leave the process's logging alone; warnings reach stderr anyway
            log_level="warning",
            backlog=4096,
            timeout_keep_alive=75,
            server_header=False,
        )
    )


async def _run(server: uvicorn.Server, sock: socket.socket, ready: Callable[[int], None] | None) -> None:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.005)
    if server.started and ready is not None:
        ready(sock.getsockname()[1])
    await task


def serve(
    config: MockConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Run the mock provider until interrupted; ``ready(port)`` is called once it accepts calls.

    Raises:
        OSError: the address cannot be bound.
    """
    sock = _bind(host, port)
    try:
        asyncio.run(_run(_server(config, host, port), sock, ready))
    finally:
        sock.close()


class MockServerThread:
    """The mock provider on a background thread, for tests and benchmarks.

    ``with MockServerThread(MockConfig()) as mock: httpx.get(mock.url + "/healthz")``
    """

    def __init__(self, config: MockConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._sock = _bind(host, port)
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self._server = _server(config, host, self.port)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="fleet-mock-provider", daemon=True)

    def _main(self) -> None:
        asyncio.run(_run(self._server, self._sock, lambda _port: self._ready.set()))

    def start(self, timeout: float = 10.0) -> MockServerThread:
        """Start serving; raises RuntimeError when the server is not up within ``timeout``."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the mock provider did not start")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10.0)
        self._sock.close()

    def __enter__(self) -> MockServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _parse_args(argv: Sequence[str] | None) -> tuple[MockConfig, str, int]:
    parser = argparse.ArgumentParser(prog="python -m fleet.providers.mock_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--latency-dist", choices=["fixed", "uniform", "lognormal"], default="fixed")
    parser.add_argument("--latency-jitter", type=float, default=0.5)
    parser.add_argument("--retry-after-s", type=float, default=1.0)
    parser.add_argument("--timeout-sleep-s", type=float, default=30.0)
    parser.add_argument("--down-model", dest="down_models", action="append", default=[], help="repeatable")
    parser.add_argument("--model", dest="models", action="append", help="allow-list entry; repeatable")
    parser.add_argument("--config-json", default="{}", help="more MockConfig options as a JSON object")
    args = parser.parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k in MockConfig.model_fields}
    try:
        config = MockConfig.model_validate({**options, **json.loads(args.config_json)})
    except (ValueError, ValidationError) as exc:
        parser.error(str(exc))
    return config, args.host, args.port


if __name__ == "__main__":
    _config, _host, _port = _parse_args(None)

    def _announce(port: int) -> None:
        print(f"mock provider listening on http://{_host}:{port}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        serve(_config, _host, _port, ready=_announce)
