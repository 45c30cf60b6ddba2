"""The mock provider: a real HTTP server speaking the OpenAI and Anthropic wire formats.

    POST /v1/chat/completions   OpenAI chat completions (the ``openai`` SDK works unchanged)
    POST /v1/messages           Anthropic Messages (the ``anthropic`` SDK works unchanged)
    GET  /v1/models             both formats' model list
    GET  /stats                 calls in total, by kind ("ok" or a fault), by model, by model and kind
    POST /_mock/reset           zero the stats, the per-request occurrence counters and the truth
    GET|POST /_mock/config      the effective fault config; POST merges a JSON patch into it
    POST /_mock/truth           SIMULATED truth for a measurement harness: which answers were flawed
    GET  /healthz
    /v1/files, /v1/batches, /v1/messages/batches   both providers' batch APIs (mock_batch)

Answers are deterministic text built from the prompt. A JSON schema is honoured when asked through
OpenAI's ``response_format`` (``json_schema``) or through :data:`fleet.providers._http.SCHEMA_MARKER`
followed by the schema as JSON in any message or the system prompt (what the Anthropic adapter sends).
Requests are read and answers written by :mod:`fleet.providers.mock_wire`; this module decides.
With ``quality.enabled`` the mock SIMULATES model capability: answers are sometimes flawed, a judge
sometimes wrong (:mod:`fleet.providers.mock_quality`). Also SIMULATED: per-model account quotas with
the providers' rate-limit headers (``quotas``, :mod:`fleet.providers.mock_quota`), prompt caching of
long prefixes (:mod:`fleet.providers.mock_cache`), and batches that end after ``batch_delay_s`` with
``batch_failure_rate`` of their items failed (:mod:`fleet.providers.mock_batch`).

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

from fleet.providers.mock_answers import MockCall as _Call
from fleet.providers.mock_answers import Wire
from fleet.providers.mock_batch import BatchBook, batch_routes
from fleet.providers.mock_cache import CacheUse, PromptCache
from fleet.providers.mock_quality import Simulation, TruthBook, decide_answer, job_prompt, simulate
from fleet.providers.mock_quota import MockQuota, Quotas, quota_headers
from fleet.providers.mock_wire import (
    HTTP_FAULTS,
    MALFORMED,
    answer_response,
    error_response,
    fault_response,
    json_response,
    model_not_found,
    parse_call,
)

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
    #: SIMULATED model quality: capability per model, difficulty per job, flawed answers, a judge's
    #: accuracy (:mod:`fleet.providers.mock_quality`). Off by default.
    quality: Simulation = Field(default_factory=Simulation)
    #: SIMULATED account quotas per model (:mod:`fleet.providers.mock_quota`): a call over one gets a
    #: 429, and every answer of the model carries the provider's rate-limit headers. None by default.
    quotas: dict[str, MockQuota] = Field(default_factory=dict)
    #: SIMULATED batch APIs (:mod:`fleet.providers.mock_batch`): a batch ends this long after it was
    #: created, and each of its items fails with this probability.
    batch_delay_s: float = Field(default=30.0, ge=0.0)
    batch_failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    #: SIMULATED prompt caching of long repeated prefixes (:mod:`fleet.providers.mock_cache`); off:
    #: every prompt is read in full (a workload's cost without the providers' caches).
    prompt_cache: bool = True

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
        #: The simulated truth of every answer given (mock_quality).
        self.book = TruthBook()
        #: The simulated quotas' buckets (mock_quota), and prompt cache (mock_cache).
        self.quotas = Quotas()
        self.cache = PromptCache()
        #: The batch APIs' files and batches (mock_batch).
        self.batches = BatchBook()

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


# --- the app --------------------------------------------------------------------------------------


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
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", _chat_completions, methods=["POST"]),
            Route("/chat/completions", _chat_completions, methods=["POST"]),
            Route("/v1/messages", _messages, methods=["POST"]),
            Route("/v1/models", _list_models, methods=["GET"]),
            Route("/stats", _stats, methods=["GET"]),
            Route("/_mock/reset", _reset, methods=["POST"]),
            Route("/_mock/config", _config_endpoint, methods=["GET", "POST"]),
            Route("/_mock/truth", _truth, methods=["POST"]),
            Route("/healthz", _healthz, methods=["GET"]),
            *batch_routes(),
        ]
    )
    app.state.mock = _State(config)
    return _CaptureTransport(app)


def _state(request: Request) -> _State:
    state: _State = request.app.state.mock
    return state


async def _call(request: Request, wire: Wire) -> Response:
    """One model call: its model's quota first (when it has one), then its fate decided by the hash
    (or ``x-mock-fault``), then answered, with the quota's rate-limit headers."""
    state = _state(request)
    parsed = await _read_call(request, state, wire)
    if isinstance(parsed, Response):
        return parsed
    quota = state.config.quotas.get(parsed.model)
    if quota is None:
        return await _answer(request, state, parsed)
    admission = state.quotas.admit(parsed.model, quota, parsed.prompt_chars // 4 + 1, time.monotonic())
    headers = quota_headers(parsed.wire, admission, time.time())
    if admission.allowed:
        response = await _answer(request, state, parsed)
    else:
        state.record(parsed.model, "quota_exceeded")
        response = fault_response(
            parsed, "rate_limited", down=False, retry_after_s=round(admission.retry_after_s, 3),
            context_window=state.config.context_window,
        )  # fmt: skip
    response.headers.update(headers)
    return response


async def _answer(request: Request, state: _State, parsed: _Call) -> Response:
    """The call's fate decided by the hash (or ``x-mock-fault``), then answered."""
    kind, latency, base = state.decide(parsed)
    forced = request.headers.get("x-mock-fault")
    if forced is not None:
        if forced != "ok" and forced not in FAULT_KINDS:
            why = f"unknown x-mock-fault {forced!r}"
            return error_response(parsed.wire, 400, "invalid_request_error", why)
        kind = forced
    state.record(parsed.model, kind)
    if kind == "connection":
        return await _drop(request)
    if kind in HTTP_FAULTS:
        cfg = state.config
        down = parsed.model in cfg.down_models and forced is None
        return fault_response(
            parsed, kind, down=down, retry_after_s=cfg.retry_after_s, context_window=cfg.context_window
        )
    await asyncio.sleep(state.config.timeout_sleep_s if kind == "timeout" else latency)
    if kind == "malformed_response":
        return Response(MALFORMED, media_type="application/json")
    cache = state.cache.use(parsed, time.monotonic()) if state.config.prompt_cache else CacheUse()
    sim = state.config.quality
    if kind == "ok" and sim.enabled:
        simulated = simulate(sim, state.config.seed, state.book, parsed, base.hex())
        if simulated is not None:
            text, low = simulated
            return answer_response(parsed, kind, base, text=text, low_confidence=low, cache=cache)
    return answer_response(parsed, kind, base, cache=cache)


async def _read_call(request: Request, state: _State, wire: Wire) -> _Call | Response:
    """The call in the request, or the 400/404 a provider answers to a bad body or an unknown model."""
    try:
        parsed = parse_call(wire, json.loads(await request.body()))
    except ValueError:
        parsed = "the body is not valid JSON"
    if isinstance(parsed, str):
        state.record("", "bad_request")
        return error_response(wire, 400, "invalid_request_error", parsed)
    models = state.config.models
    if models is not None and parsed.model not in models:
        state.record(parsed.model, "bad_request")
        return model_not_found(wire, parsed.model)
    return parsed


async def _chat_completions(request: Request) -> Response:
    return await _call(request, "openai")


async def _messages(request: Request) -> Response:
    return await _call(request, "anthropic")


async def _list_models(request: Request) -> Response:
    state = _state(request)
    names = state.config.models or sorted({"mock-small", "mock-large", *state.by_model} - {""})
    data = [
        {"id": n, "object": "model", "created": 0, "owned_by": "mock", "type": "model"}
        | {"display_name": n, "created_at": "2024-01-01T00:00:00Z"}
        for n in names
    ]
    first, last = (names[0], names[-1]) if names else (None, None)
    page = {"object": "list", "data": data, "has_more": False, "first_id": first, "last_id": last}
    return json_response(page)


async def _stats(request: Request) -> Response:
    return json_response(_state(request).stats())


async def _reset(request: Request) -> Response:
    _state(request).reset()
    return json_response({"reset": True})


async def _config_endpoint(request: Request) -> Response:
    state = _state(request)
    if request.method == "POST":
        try:
            patch = json.loads(await request.body() or b"{}")
            if not isinstance(patch, dict):
                raise ValueError("expected a JSON object")
            state.config = MockConfig.model_validate({**state.config.model_dump(), **patch})
        except (ValueError, ValidationError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
    return json_response(state.config.model_dump(mode="json"))


async def _truth(request: Request) -> Response:
    """SIMULATED truth, for a measurement harness only (the fleet never asks): which of ``answers``
    the mock gave flawed, and which ``prompts`` a ``model`` would answer flawed on a first try."""
    state = _state(request)
    try:
        body = json.loads(await request.body() or b"{}")
        answers = [str(a) for a in body.get("answers", [])]
        prompts = [str(p) for p in body.get("prompts", [])]
        model = str(body.get("model", ""))
    except (ValueError, AttributeError, TypeError) as exc:
        return JSONResponse({"error": f"expected {{answers, prompts, model}}: {exc}"}, status_code=422)
    sim, seed = state.config.quality, state.config.seed
    out: dict[str, Any] = {"simulated": True, "answers": [], "counterfactual": []}
    for answer in answers:
        truth = state.book.get(answer)
        out["answers"].append(
            {"known": False}
            if truth is None
            else {"known": True, "flawed": truth.flawed, "model": truth.model}
        )
    for prompt in prompts:
        out["counterfactual"].append(decide_answer(sim, seed, model, job_prompt(prompt), polish=False).flawed)
    return json_response(out)


async def _healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


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
