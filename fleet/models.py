"""The wire contract: what producers send, what the router decides, what a job ends as.

Every model forbids unknown fields: a misspelt field is an error, never silently dropped.
Requests are validated at the producer and again at the worker (a message can come from anywhere).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

import pydantic_core
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fleet.errors import InvalidRequest

__all__ = [
    "DEFAULT_MAX_PROMPT_BYTES",
    "Attempt",
    "BatchAnswer",
    "ChatMessage",
    "Complexity",
    "Hints",
    "JobEnvelope",
    "JobState",
    "JobStatus",
    "Purpose",
    "QualityCheck",
    "RoutingDecision",
    "ShadowOf",
    "StepRef",
    "StepResult",
    "TaskRequest",
    "TaskResult",
    "Tier",
    "validate_request",
]

#: Default size limit of ``prompt`` (UTF-8 bytes); ``[limits] max_prompt_bytes`` in config overrides it.
DEFAULT_MAX_PROMPT_BYTES = 1024 * 1024
#: Upper bound of ``system``, in characters.
MAX_SYSTEM_CHARS = 1024 * 1024
#: Upper bound of a metadata value, a file path, and other short strings, in characters.
MAX_SHORT_TEXT = 4096

ShortStr = Annotated[StrictStr, Field(max_length=MAX_SHORT_TEXT)]
StopText = Annotated[StrictStr, Field(min_length=1, max_length=256)]


class Tier(StrEnum):
    """The four model tiers, cheapest first (``fast`` is latency-optimised, not capability-ranked)."""

    MINI = "mini"
    STANDARD = "standard"
    FULL = "full"
    FAST = "fast"

    @classmethod
    def of(cls, value: object) -> Tier | None:
        """The tier named ``value`` (a queue name, say), or None when it names none."""
        try:
            return cls(str(value))
        except ValueError:
            return None


class Complexity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hints(_Strict):
    """What the producer knows about the job; each hint outranks the content classifier."""

    complexity: Complexity | None = None
    requires_reasoning: StrictBool = False
    safety_critical: StrictBool = False
    latency_budget_ms: StrictInt | None = Field(default=None, gt=0, le=86_400_000)
    #: Seconds after submission by which the answer is wanted. A deadline at or above
    #: ``batch.min_deadline_s`` sends the job to the batch lane (a provider batch, at batch prices).
    deadline_s: StrictInt | None = Field(default=None, gt=0, le=86_400)
    files: list[ShortStr] = Field(default_factory=list, max_length=10_000)


class ChatMessage(_Strict):
    """One turn of a conversation."""

    role: Literal["system", "user", "assistant"]
    content: StrictStr


class TaskRequest(_Strict):
    """One job: a ``prompt``, or a conversation (``messages``), with optional hints. Exactly one of
    the two is required; the size limit applies to the whole conversation."""

    prompt: StrictStr | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=10_000)
    system: StrictStr | None = Field(default=None, max_length=MAX_SYSTEM_CHARS)
    kind: StrictStr | None = Field(default=None, min_length=1, max_length=128)
    tier: Tier | None = None
    hints: Hints = Field(default_factory=Hints)
    max_tokens: StrictInt | None = Field(default=None, gt=0, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    response_schema: dict[str, Any] | None = None
    #: Ask for a JSON object (OpenAI's JSON mode; an instruction where a provider has none).
    json_mode: StrictBool = False
    #: Sequences that end the answer (up to 4); passed through where the provider takes them.
    stop: list[StopText] | None = Field(default=None, max_length=4)
    #: A sampling seed, passed through where the provider takes one (OpenAI's; not Anthropic's).
    seed: StrictInt | None = None
    idempotency_key: StrictStr | None = Field(default=None, min_length=1, max_length=256)
    metadata: dict[ShortStr, ShortStr] = Field(default_factory=dict, max_length=64)
    max_cost_usd: float | None = Field(default=None, gt=0.0)
    #: Within its tier: 0 (the default) to 9, the most urgent first (Redis; see docs/api.md).
    priority: StrictInt = Field(default=0, ge=0, le=9)
    #: Run the request through this pipeline of ``config/pipelines.toml`` (its prompt is the input).
    pipeline: StrictStr | None = Field(default=None, min_length=1, max_length=64)
    #: POST the job's final result here (http or https), signed (``[callbacks]``).
    callback_url: StrictStr | None = Field(default=None, max_length=2048)

    @field_validator("callback_url", mode="after")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            from urllib.parse import urlsplit

            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError("expected an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _pipeline_alone(self) -> TaskRequest:
        if self.pipeline is not None:
            clash = [f for f in ("tier", "response_schema") if getattr(self, f) is not None]
            if clash:
                raise ValueError(f"a pipeline request cannot set {' or '.join(clash)}: its steps do")
        return self

    @model_validator(mode="after")
    def _one_input(self, info: ValidationInfo) -> TaskRequest:
        if (self.prompt is None) == (self.messages is None):
            both = "both prompt and messages are set" if self.prompt is not None else "neither is set"
            raise ValueError(f"give exactly one of prompt and messages ({both})")
        if self.messages is not None:
            if self.messages[-1].role != "user":
                raise ValueError("messages: the last message must be the user's (role 'user')")
            if not self.messages[-1].content.strip():
                raise ValueError("messages: the last user message must not be empty")
        limit = DEFAULT_MAX_PROMPT_BYTES
        if isinstance(info.context, dict):
            limit = int(info.context.get("max_prompt_bytes", limit))
        texts = [self.prompt] if self.prompt is not None else [m.content for m in self.messages or []]
        size = sum(len(_utf8(t)) for t in texts)
        if size > limit:
            what = "prompt" if self.prompt is not None else "the conversation"
            raise ValueError(f"{what} is {size} bytes, over the limit of {limit} bytes")
        return self

    @field_validator("prompt", mode="after")
    @classmethod
    def _prompt_text(cls, value: str | None) -> str | None:
        if value is not None:
            if not value.strip():
                raise ValueError("prompt must not be empty")
            _utf8(value)
        return value

    # -- the conversation, as models and the router read it -----------------------------------------

    @property
    def ask(self) -> str:
        """What is asked now: the prompt, or the conversation's last user message."""
        if self.prompt is not None:
            return self.prompt
        return self.messages[-1].content if self.messages else ""

    @property
    def history(self) -> list[ChatMessage]:
        """The conversation's turns before the last user message (its system messages apart)."""
        return [m for m in (self.messages or [])[:-1] if m.role != "system"]

    @property
    def instructions(self) -> str | None:
        """``system`` and the conversation's system messages, in order (None when there are none)."""
        parts = [self.system] if self.system else []
        parts += [m.content for m in self.messages or [] if m.role == "system" and m.content]
        return "\n\n".join(parts) if parts else None

    @property
    def text(self) -> str:
        """The prompt, or every turn as ``role: text``: what a judge or a classifier is shown, and what
        token estimates count."""
        if self.prompt is not None:
            return self.prompt
        return "\n\n".join(f"{m.role}: {m.content}" for m in self.messages or [])

    @field_validator("system", mode="after")
    @classmethod
    def _system_text(cls, value: str | None) -> str | None:
        if value is not None:
            _utf8(value)
        return value

    @field_validator("temperature", "max_cost_usd", mode="after")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("response_schema", mode="after")
    @classmethod
    def _schema_is_valid(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        # A dict validates whatever it holds; what goes on the wire is its JSON, as the envelope's
        # serialisation makes it (a set becomes a list, bytes a string; a lone surrogate fails).
        try:
            pydantic_core.to_json(value)
        except pydantic_core.PydanticSerializationError as exc:
            why = (
                "it holds a lone surrogate"
                if "UnicodeEncodeError" in str(exc)
                else "a value JSON cannot hold"
            )
            raise ValueError(f"cannot be sent as JSON ({why})") from None
        import jsonschema  # deferred: only requests that carry a schema pay for the import

        try:
            jsonschema.validators.validator_for(value).check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"response_schema is not a valid JSON schema: {exc.message}") from exc
        return value


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid unicode text (it holds a lone surrogate)") from None


def validate_request(data: Any, *, max_prompt_bytes: int = DEFAULT_MAX_PROMPT_BYTES) -> TaskRequest:
    """Validate a request from a dict, a JSON string or a ``TaskRequest``.

    Raises:
        InvalidRequest: one readable line per problem (``hints.latency_budget_ms: ...``).
    """
    if isinstance(data, TaskRequest):
        data = data.model_dump(exclude_unset=True)
    context = {"max_prompt_bytes": max_prompt_bytes}
    try:
        if isinstance(data, str | bytes):
            return TaskRequest.model_validate_json(data, context=context)
        if not isinstance(data, dict):
            raise InvalidRequest([f"a task request must be a JSON object, got {type(data).__name__}"])
        return TaskRequest.model_validate(data, context=context)
    except ValidationError as exc:
        raise InvalidRequest(_error_lines(exc)) from None
    except RecursionError:
        raise InvalidRequest(["request is nested too deeply"]) from None


def _error_lines(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "request"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{where}: {msg}")
    return lines


class RoutingDecision(_Strict):
    """Where the router sent a job and why; ``reasons`` are for people."""

    tier: Tier
    score: int | None = Field(default=None, ge=1, le=5)
    reasons: list[str] = Field(default_factory=list)
    classifier: str = "rules"


#: What a model call was for: the job's answer, a judge's verdict on it, or a stronger model's rewrite.
Purpose = Literal["answer", "judge", "polish"]


class Attempt(_Strict):
    """One call on one link of a chain, successful or not."""

    link: str
    provider: str
    model: str
    purpose: Purpose = "answer"
    outcome: str  # "ok" or an error code from fleet.errors
    http_status: int | None = None
    latency_ms: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    tokens_estimated: bool = False
    #: Of ``input_tokens``: read from the provider's prompt cache, and written to it.
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    #: Of ``output_tokens``: spent reasoning (OpenAI's ``completion_tokens_details.reasoning_tokens``).
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    error: str | None = None
    #: The provider batch this call was an item of (priced at the model's batch price), if any.
    batch_id: str | None = None


class BatchAnswer(_Strict):
    """A batch item's answer, carried to the job's tier worker: the job runs there as a live job
    does (quality gate, cost line, result), with this answer in place of its chain's first call."""

    batch_id: str
    answer: str
    attempt: Attempt


class QualityCheck(_Strict):
    """One quality check of an answer: why it was judged, the verdict, and what the gate did."""

    tier: Tier
    #: Why the answer was checked: "sampled", "low confidence", "upgraded before", ...
    why: str
    #: Confidence signals that fired on the answer (reasons, for people), judged or not.
    signals: list[str] = Field(default_factory=list)
    #: The judge's link and verdict; None when no judge answered (the answer then passes).
    judge: str | None = None
    score: int | None = Field(default=None, ge=1, le=5)
    problems: list[str] = Field(default_factory=list)
    passed: bool = True
    #: What the gate did: "pass", "upgrade", "polish", "escalate" (or "judge_unavailable").
    action: str = "pass"
    #: What the check's calls cost (the judge's, a polish's).
    cost_usd: float = 0.0


class ShadowOf(_Strict):
    """A shadow run's subject: the job whose answer a shadow run on the full tier is compared with."""

    task_id: str
    tier: Tier
    kind: str | None = None
    answer: str


class StepRef(_Strict):
    """Which pipeline step a job is: the pipeline's id (its producer's task id), the pipeline's name,
    the step, and the item of a map step."""

    pipeline_id: str
    pipeline: str
    step: str
    index: int | None = None


class StepResult(_Strict):
    """One finished step (or map item) of a pipeline, as its final result shows it."""

    step: str
    index: int | None = None
    task_id: str
    status: Literal["completed", "escalated", "discarded", "cancelled"]
    tier: Tier | None = None
    provider: str | None = None
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    resolved_by: Literal["model", "human"] | None = None
    escalation_id: str | None = None
    #: The step's quality checks (its own gate: a judged draft, a rewrite).
    quality: list[QualityCheck] = Field(default_factory=list)
    output: str | None = None


class JobEnvelope(_Strict):
    """What travels beside the request from hop to hop: identity, timing, routing, history."""

    #: Fields older fleets sent that mean nothing now: dropped, so their messages still run.
    _LEGACY: ClassVar[frozenset[str]] = frozenset({"deliveries"})

    id: str
    submitted_at: float
    routing: RoutingDecision | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    #: Times the job went back to its queue to wait for a rate-limit token.
    requeues: int = 0
    #: The job's next delivery already holds its queue rate-limit slot.
    slot_reserved: bool = False
    #: The broker redelivered this job's message and the job went back to its queue before that
    #: delivery was counted (another run's lock was in its way): its next run counts it.
    uncounted_redelivery: bool = False
    #: The escalation this job is a retry of (people sent it again from the inbox).
    retry_of: str | None = None
    #: The quality checks of earlier hops (an answer the gate sent up a tier).
    quality: list[QualityCheck] = Field(default_factory=list)
    #: Set on a shadow run: the job it re-runs on the full tier, in the background.
    shadow: ShadowOf | None = None
    #: Set on a pipeline's step: the pipeline, the step and the item it is.
    step: StepRef | None = None
    #: Set when the job comes back from the batch lane with its answer (fleet.batch).
    batch: BatchAnswer | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_legacy(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls._LEGACY & data.keys():
            return {k: v for k, v in data.items() if k not in cls._LEGACY}
        return data


class TaskResult(_Strict):
    """A job's final state as stored in the result backend."""

    task_id: str
    status: Literal["completed", "escalated", "discarded", "cancelled"]
    answer: str | None = None
    tier: Tier | None = None
    provider: str | None = None
    model: str | None = None
    kind: str | None = None
    routing: RoutingDecision | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    fallback_index: int | None = None
    escalation_id: str | None = None
    reason: str | None = None
    resolved_by: Literal["model", "human"] | None = None
    resolver: str | None = None
    #: The quality checks the answer went through, on every tier it ran on.
    quality: list[QualityCheck] = Field(default_factory=list)
    #: A pipeline's result: its name and its finished steps, in order.
    pipeline: str | None = None
    steps: list[StepResult] = Field(default_factory=list)
    submitted_at: float | None = None
    finished_at: float | None = None

    @property
    def latency_ms(self) -> float | None:
        if self.submitted_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.submitted_at) * 1000.0

    @classmethod
    def from_attempts(
        cls,
        task_id: str,
        status: Literal["completed", "escalated", "discarded", "cancelled"],
        attempts: Sequence[Attempt],
        **fields: Any,
    ) -> TaskResult:
        """A result whose tokens and cost are those of ``attempts`` (the cost rounded to 1e-8 USD).

        Every final result is built here: a model's answer, an escalation, a person's answer.
        """
        return cls(
            task_id=task_id,
            status=status,
            attempts=list(attempts),
            input_tokens=sum(a.input_tokens for a in attempts),
            output_tokens=sum(a.output_tokens for a in attempts),
            cost_usd=round(sum(a.cost_usd for a in attempts), 8),
            **fields,
        )


#: Where a job is: waiting in a queue (``queued``), sent to its tier by the router (``routed``),
#: running on a worker (``running``), or its final state.
JobState = Literal[
    "queued", "routed", "batched", "running", "completed", "escalated", "discarded", "cancelled", "failed"
]


class JobStatus(_Strict):
    """What ``Client.status`` tells about a job: its state, where it is, its result once final."""

    task_id: str
    state: JobState
    #: The queue it was last sent to ("router" or a tier).
    queue: str | None = None
    submitted_at: float | None = None
    #: When it entered this state (sent to its queue, routed, started), epoch seconds.
    since: float | None = None
    #: Routed or running: the tier, and the router's reasons.
    tier: Tier | None = None
    reasons: list[str] = Field(default_factory=list)
    #: Running: the worker (its identity and delivery), the chain's first link, the delivery (1: first).
    worker: str | None = None
    link: str | None = None
    attempt: int | None = None
    #: Cancelled but not final yet: it ends ``cancelled`` when a worker reaches it (or after its call).
    cancelling: bool = False
    result: TaskResult | None = None

    @property
    def waited_s(self) -> float | None:
        """Seconds since the job entered its state (how long it has waited in its queue)."""
        return None if self.since is None else max(0.0, time.time() - self.since)
