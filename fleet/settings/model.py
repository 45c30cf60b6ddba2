"""The settings' model: the fleet's own sections and :class:`Settings`, which composes them with the
sections their owners declare (see :mod:`fleet.settings`)."""

from __future__ import annotations

import re
import ssl
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from fleet.batch.config import BatchSettings
from fleet.brokers import AMQP_SCHEMES, REDIS_SCHEMES
from fleet.budgets import BudgetSettings
from fleet.fairness import FairnessSettings
from fleet.keys import QUEUES, TIER_QUEUES
from fleet.middleware.chaos import ChaosSettings
from fleet.models import DEFAULT_MAX_PROMPT_BYTES, Tier
from fleet.pipelines.config import Pipeline
from fleet.providers.config import MockSettings, ModelSettings, ProviderSettings, check_links, split_links
from fleet.quality.config import QualitySettings
from fleet.retry import RetrySettings
from fleet.router.config import RouterSettings, default_router_settings

__all__ = [
    "ApiSettings",
    "BreakerSettings",
    "BrokerSettings",
    "CallbackSettings",
    "EmbeddedSettings",
    "EscalationSettings",
    "FlowerSettings",
    "LimitsSettings",
    "QueueSettings",
    "RecoverySettings",
    "Settings",
    "TelemetrySettings",
    "mask_url",
    "parse_rate",
]


_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(value: str) -> float:
    """``"600/m"`` -> 10.0 (per second). Raises ValueError on anything else, or on a rate <= 0."""
    match = _RATE_RE.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a rate like '600/m' (units: s, m, h)")
    count = float(match.group(1))
    if count <= 0:
        raise ValueError(f"{value!r}: the rate must be above 0")
    return count / _RATE_UNITS[match.group(2)]


def mask_url(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BrokerSettings(_Section):
    #: The message broker: a Redis or Valkey URL (``redis://``, ``rediss://``: messages and state on
    #: one server), or a RabbitMQ URL (``amqp://``, ``amqps://``: quorum queues; the state stays in
    #: ``redis_url``); ``FLEET_BROKER_URL`` sets it. Empty: the Redis of ``redis_url``.
    url: str = ""
    #: The Redis of the fleet's state (limits, breakers, locks, escalations, results);
    #: ``FLEET_REDIS_URL`` sets it. Empty: ``url`` when that is Redis, else the embedded valkey-server.
    redis_url: str = ""
    #: Seconds between Redis health checks on idle connections.
    health_check_interval: int = Field(default=25, ge=0)
    #: How long a worker rides out a broker that went away: its calls in flight finish and their
    #: results wait for the broker this long (then the message is redelivered when it returns).
    outage_grace_s: float = Field(default=60.0, gt=0)
    #: How long task results are kept in the backend, in seconds (default 7 days).
    result_expires_s: int = Field(default=7 * 24 * 3600, gt=0)
    #: How long an idempotency key maps to its first task id, in seconds (default 24 h).
    idempotency_ttl_s: int = Field(default=24 * 3600, gt=0)
    #: Seconds before Redis redelivers an unacked message; None: derived from the longest queue
    #: timeout (2 x timeout + 60 s). Below a job's duration, only the execution lock prevents a
    #: second concurrent run.
    visibility_timeout_s: int | None = Field(default=None, gt=0)
    #: CA bundle that verifies a rediss:// server's certificate (None: the system's store).
    tls_ca_file: str | None = None
    #: Client certificate and key, for servers that require mutual TLS.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in (*REDIS_SCHEMES, *AMQP_SCHEMES):
            raise ValueError("expected a redis://, rediss://, amqp:// or amqps:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in REDIS_SCHEMES:
            raise ValueError("expected a redis:// or rediss:// URL")
        return value


class EmbeddedSettings(_Section):
    #: Port for the embedded valkey-server; 0 picks a free one.
    port: int = Field(default=0, ge=0, le=65535)
    #: Append-only file on, so a restart of the broker loses nothing.
    appendonly: bool = True


class LimitsSettings(_Section):
    #: Largest accepted prompt, in UTF-8 bytes.
    max_prompt_bytes: int = Field(default=DEFAULT_MAX_PROMPT_BYTES, gt=0)
    #: Longest a job may hold a worker slot waiting for a rate-limit token; beyond it the job goes
    #: back to its queue with a countdown.
    max_slot_wait_s: float = Field(default=1.0, ge=0)
    #: Furthest ahead a job may reserve its queue rate-limit slot (it waits in the queue until then);
    #: keep it well under the broker's visibility timeout.
    max_reserve_s: float = Field(default=120.0, gt=0)
    #: Broker deliveries of one job before it is a poison message and goes to people.
    max_deliveries: int = Field(default=5, ge=1)
    #: A provider model at its rpm/tpm: "next_link" tries the next link, "wait" requeues the job.
    provider_limit: Literal["next_link", "wait"] = "next_link"
    #: Output tokens assumed for tpm when a request sets no max_tokens (corrected after the call).
    default_output_tokens: int = Field(default=512, gt=0)
    #: Read the providers' rate-limit headers (x-ratelimit-*, anthropic-ratelimit-*) and slow a model
    #: down before its quota runs out: its rpm/tpm buckets are booked ahead (needs rpm/tpm set).
    header_pacing: bool = True
    #: Share of a provider's quota kept unused for calls already on their way when it reported it.
    quota_reserve: float = Field(default=0.1, ge=0.0, lt=1.0)


class BreakerSettings(_Section):
    """A circuit breaker per provider, shared by every worker through Redis."""

    enabled: bool = True
    #: Availability failures (5xx, overloaded, timeout, connection) within ``window_s`` that open it,
    failure_threshold: int = Field(default=5, ge=1)
    #: ... when they are also at least this share of the calls made in the window (a busy provider
    #: failing 2% of 10,000 calls stays closed; one failing every call opens).
    min_failure_ratio: float = Field(default=0.5, ge=0.0, le=1.0)
    window_s: float = Field(default=30.0, gt=0)
    #: Seconds an open breaker waits before letting one probe call through.
    cooldown_s: float = Field(default=15.0, gt=0)


class QueueSettings(_Section):
    name: str
    #: Worker slots of each of the queue's worker processes.
    concurrency: int = Field(default=4, gt=0, le=10_000)
    #: Worker processes for the queue (each with ``concurrency`` slots). A threads pool shares one
    #: interpreter lock and one consumer thread per process: I/O-bound tiers scale better as 2-4
    #: processes of 25-50 threads than as one process of 100-200.
    processes: int = Field(default=1, gt=0, le=64)
    #: Celery pool type; model calls are I/O-bound, so tiers want threads, or "asyncio" (each job a
    #: greenlet on one event loop per process, fleet/asyncio_pool.py: hundreds of calls in flight
    #: without a thread each), or gevent.
    pool: Literal["prefork", "threads", "asyncio", "gevent", "solo"] = "threads"
    #: Fleet-wide rate limit of the queue, e.g. "600/m" (None: no limit).
    rate_limit: str | None = None
    #: (min, max) worker slots for Celery's autoscaler (None: fixed concurrency).
    autoscale: tuple[int, int] | None = None
    #: Hard time limit of one job on this queue, in seconds.
    timeout_s: float = Field(default=120.0, gt=0)
    #: Ordered ``provider:model`` links; after the last, the job goes to people.
    chain: list[str] = Field(default_factory=list)
    #: Celery's two INFO lines per task ("received", "succeeded in"). About a tenth of a tier
    #: worker's CPU at hundreds of jobs a second (docs/performance.md); the tiers' queue files turn
    #: them off: Flower, the traces and ``fleet result`` show every job, and failures still log.
    task_log_lines: bool = True

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate(value)
        return value

    @field_validator("autoscale")
    @classmethod
    def _autoscale(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not (0 < value[0] <= value[1]):
            raise ValueError("expected [min, max] with 0 < min <= max")
        return value

    @field_validator("chain")
    @classmethod
    def _links(cls, value: list[str]) -> list[str]:
        return check_links(value)

    def links(self) -> list[tuple[str, str]]:
        return split_links(self.chain)


class RecoverySettings(_Section):
    """``[recovery]``: how fast a dead worker's jobs come back (Redis; RabbitMQ needs none of it)."""

    #: Seconds between a worker's heartbeats (what it holds and runs).
    heartbeat_s: float = Field(default=2.0, gt=0)
    #: A worker whose heartbeat is this old is gone: its locks are taken over.
    worker_ttl_s: float = Field(default=12.0, gt=0)
    #: An unacked message this old that no live worker holds goes back on its queue (and so does
    #: an in-flight list idle this long).
    orphan_after_s: float = Field(default=12.0, gt=0)
    #: Take messages with BLMOVE into a per-worker in-flight list, so none is lost when a reply is
    #: (fleet/transport.py; needs Redis or Valkey >= 6.2). Off: kombu's BRPOP.
    reliable_fetch: bool = True

    @model_validator(mode="after")
    def _beats_fit(self) -> RecoverySettings:
        if self.worker_ttl_s < 3 * self.heartbeat_s:
            raise ValueError("worker_ttl_s must be at least 3 heartbeats (heartbeat_s)")
        return self


class EscalationSettings(_Section):
    #: Days a resolved, retried or discarded escalation is kept.
    retention_days: float = Field(default=30.0, gt=0)
    #: Webhook notified of each new escalation (Slack-compatible JSON); empty: none.
    webhook_url: str = ""
    #: Seconds one webhook POST may take.
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=300)
    #: Retries of a failed POST (then the escalation stays un-notified; it is never lost).
    webhook_max_retries: int = Field(default=5, ge=0, le=50)
    #: First retry after this many seconds, doubling up to ``webhook_backoff_max_s`` (with jitter).
    webhook_backoff_s: float = Field(default=2.0, ge=0)
    webhook_backoff_max_s: float = Field(default=60.0, ge=0)
    #: Put an excerpt of the prompt in the message (off: prompts may hold what a chat must not see).
    webhook_include_prompt: bool = False
    #: Link to the inbox page shown in notifications, e.g. "https://fleet.example.com/inbox".
    inbox_url: str = ""
    #: A bulk retry or discard moves at most this many escalations per second (a redrive after an
    #: outage must not itself trip the tiers' rate limits).
    redrive_per_s: float = Field(default=5.0, gt=0, le=1000)

    @field_validator("webhook_url", "inbox_url")
    @classmethod
    def _http_or_empty(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("expected an http:// or https:// URL, or empty")
        return value


class CallbackSettings(_Section):
    """``[callbacks]``: a job's ``callback_url`` gets its final result, POSTed by the escalations
    worker (never a tier worker), signed, retried with capped, jittered backoff."""

    #: The environment variable holding the HMAC-SHA256 secret (never a file); unset: unsigned.
    secret_env: str = "FLEET_CALLBACK_SECRET"
    #: Seconds one POST may take.
    timeout_s: float = Field(default=5.0, gt=0, le=300)
    #: Retries of a failed POST (then it is logged and given up on: the result stays in the fleet).
    max_retries: int = Field(default=5, ge=0, le=50)
    #: First retry after this many seconds, doubling up to ``backoff_max_s`` (with jitter).
    backoff_s: float = Field(default=2.0, ge=0)
    backoff_max_s: float = Field(default=60.0, ge=0)


class ApiSettings(_Section):
    """``fleet api``: the HTTP API and the inbox page."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: Name of the environment variable holding the bearer token (the token is never in a file).
    #: Without a token the API only listens on loopback, and serves there without auth.
    token_env: str = "FLEET_API_TOKEN"


class TelemetrySettings(_Section):
    service_name: str = "fleet"
    #: Record prompt and answer text on spans (the GenAI conventions' opt-in).
    capture_content: bool = False
    #: Also append every finished span to this file as one JSON line ("" = off); ``--trace-file``.
    trace_file: str = ""


class FlowerSettings(_Section):
    address: str = "127.0.0.1"
    port: int = Field(default=5555, ge=0, le=65535)
    #: "user:password" for basic auth; required unless Flower listens on loopback.
    basic_auth: SecretStr | None = None
    #: How long a worker gathers task events (received, started, succeeded) before it publishes
    #: them as one message; Flower sees a task at most this much later. 0: one publish per event
    #: loop pass, as Celery does (about three per task).
    events_flush_ms: int = Field(default=100, ge=0, le=10_000)


class Settings(_Section):
    """Every section of the fleet's configuration; ``retry``, ``providers``, ``router`` and ``mock``
    are declared by their owners (see the module docstring)."""

    config_dir: str = ""
    state_dir: str = ".fleet"
    profile: str | None = None
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    embedded: EmbeddedSettings = Field(default_factory=EmbeddedSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    queues: dict[str, QueueSettings] = Field(default_factory=dict)
    #: Without a router table: the one the package ships (``config/router.toml``).
    router: RouterSettings = Field(default_factory=default_router_settings)
    escalation: EscalationSettings = Field(default_factory=EscalationSettings)
    callbacks: CallbackSettings = Field(default_factory=CallbackSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    flower: FlowerSettings = Field(default_factory=FlowerSettings)
    mock: MockSettings = Field(default_factory=MockSettings)
    chaos: ChaosSettings = Field(default_factory=ChaosSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    recovery: RecoverySettings = Field(default_factory=RecoverySettings)
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    fairness: FairnessSettings = Field(default_factory=FairnessSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    #: ``config/pipelines.toml``: read and checked by :func:`fleet.pipelines.config.load_pipelines`.
    pipelines: dict[str, Pipeline] = Field(default_factory=dict, exclude=True)

    @model_validator(mode="after")
    def _cross_check(self) -> Settings:
        missing = [q for q in QUEUES if q not in self.queues]
        if missing:
            raise ValueError(f"missing queue files for: {', '.join(missing)}")
        for tier in TIER_QUEUES:
            queue = self.queues[tier]
            if not queue.chain:
                raise ValueError(f"queues.{tier}.chain: a tier queue needs at least one provider:model link")
            for provider, model in queue.links():
                if provider not in self.providers:
                    raise ValueError(f"queues.{tier}.chain: unknown provider {provider!r}")
                if model not in self.providers[provider].models:
                    raise ValueError(f"queues.{tier}.chain: provider {provider!r} has no model {model!r}")
        return self

    # -- derived values --------------------------------------------------------------------------

    def tier(self, tier: Tier | str) -> QueueSettings:
        return self.queues[str(tier)]

    def model(self, provider: str, model: str) -> ModelSettings:
        return self.providers[provider].models[model]

    def visibility_timeout(self) -> int:
        """Seconds before Redis redelivers an unacked message: above the longest task timeout."""
        if self.broker.visibility_timeout_s is not None:
            return self.broker.visibility_timeout_s
        longest = max(q.timeout_s for q in self.queues.values())
        return int(longest * 2 + 60)

    def redis_tls(self) -> dict[str, Any]:
        """redis-py/kombu TLS options for a rediss:// URL: certificates are always verified."""
        options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        if self.broker.tls_ca_file:
            options["ssl_ca_certs"] = self.broker.tls_ca_file
        if self.broker.tls_cert_file:
            options["ssl_certfile"] = self.broker.tls_cert_file
        if self.broker.tls_key_file:
            options["ssl_keyfile"] = self.broker.tls_key_file
        return options

    def masked(self) -> dict[str, Any]:
        """The effective configuration as plain data, with every secret masked."""
        data = self.model_dump(mode="json")
        data["broker"]["url"] = mask_url(self.broker.url)
        data["broker"]["redis_url"] = mask_url(self.broker.redis_url)
        for name, provider in self.providers.items():
            data["providers"][name]["api_key"] = "***" if provider.api_key else None
        data["flower"]["basic_auth"] = "***" if self.flower.basic_auth else None
        return data
