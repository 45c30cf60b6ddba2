"""The fleet's one error tree.

Every error the fleet raises to a user derives from :class:`FleetError` and carries a stable
``code`` string: the dead-letter record, the CLI's ``--json`` output and the HTTP API use it.
Third-party errors are translated at the boundary (``raise ProviderTimeout(...) from exc``).

    FleetError                      fleet_error
    ├── ConfigError                 config_invalid         (file, key, expected)
    ├── InvalidRequest              invalid_request        (errors: one line per problem)
    ├── BrokerError                 broker_unavailable     (url, masked)
    │   └── EmbeddedBrokerError     embedded_broker
    ├── FleetNotRunning             fleet_not_running
    ├── TaskNotFound                task_not_found         (task_id)
    ├── ResultTimeout               result_timeout
    ├── TaskFailed                  task_failed
    ├── EscalationError             escalation_error
    │   ├── EscalationNotFound      escalation_not_found
    │   └── IllegalTransition       illegal_transition
    └── ProviderError               provider_error         (provider, model, status)
        ├── RateLimited             rate_limited           (retry_after)
        ├── Overloaded              overloaded
        ├── ServerError             server_error
        ├── ProviderTimeout         timeout
        ├── ProviderConnectionError connection
        ├── ContextLengthExceeded   context_length_exceeded
        ├── ContentFiltered         content_filtered
        ├── AuthError               auth
        ├── BadRequest              bad_request
        ├── MalformedResponse       malformed_response
        └── AnswerRejected          answer_rejected        (quality checks on a well-formed answer)
            ├── EmptyAnswer         empty_answer
            ├── TruncatedAnswer     truncated
            └── SchemaMismatch      schema_mismatch
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from fleet.providers.base import Quota

__all__ = [
    "AnswerRejected",
    "AuthError",
    "BadRequest",
    "BrokerError",
    "BudgetExceeded",
    "ConfigError",
    "ContentFiltered",
    "ContextLengthExceeded",
    "EmbeddedBrokerError",
    "EmptyAnswer",
    "EscalationError",
    "EscalationNotFound",
    "FleetError",
    "FleetNotRunning",
    "IllegalTransition",
    "InvalidRequest",
    "MalformedResponse",
    "Overloaded",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderTimeout",
    "RateLimited",
    "Reason",
    "ResultTimeout",
    "SchemaMismatch",
    "ServerError",
    "TaskFailed",
    "TaskNotFound",
    "TruncatedAnswer",
    "error_for_code",
]


class FleetError(Exception):
    """Root of every error the fleet raises."""

    code: ClassVar[str] = "fleet_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape used by ``--json`` output and the HTTP API."""
        return {"code": self.code, "message": self.message}


class ConfigError(FleetError):
    """A configuration file or ``FLEET_*`` variable holds a bad value."""

    code = "config_invalid"

    def __init__(self, message: str, *, file: str = "", key: str = "", expected: str = "") -> None:
        where = f"{file}: " if file else ""
        where += f"{key}: " if key else ""
        super().__init__(f"{where}{message}")
        self.file, self.key, self.expected = file, key, expected


class InvalidRequest(FleetError):
    """A TaskRequest failed validation; nothing was enqueued."""

    code = "invalid_request"

    def __init__(self, errors: list[str]) -> None:
        super().__init__("invalid task request: " + "; ".join(errors))
        self.errors = errors

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "errors": self.errors}


class BudgetExceeded(FleetError):
    """A team is at its budget and ``budgets.action`` is ``refuse``: nothing was enqueued."""

    code = "budget_exceeded"

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


class BrokerError(FleetError):
    """The broker cannot be reached or used."""

    code = "broker_unavailable"


class EmbeddedBrokerError(BrokerError):
    """The embedded valkey-server could not be started."""

    code = "embedded_broker"


class FleetNotRunning(FleetError):
    """No broker is configured and no running fleet was found under the state directory."""

    code = "fleet_not_running"


class TaskNotFound(FleetError):
    """No job was ever submitted under this id (or its record expired with its result)."""

    code = "task_not_found"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"no such job: {task_id!r} (never submitted here, or past its retention)")
        self.task_id = task_id


class ResultTimeout(FleetError):
    """The task did not reach a final state in time."""

    code = "result_timeout"


class TaskFailed(FleetError):
    """The task raised inside a worker instead of returning a result or an escalation."""

    code = "task_failed"


class EscalationError(FleetError):
    """An escalation could not be handled as asked."""

    code = "escalation_error"


class EscalationNotFound(EscalationError):
    code = "escalation_not_found"


class IllegalTransition(EscalationError):
    code = "illegal_transition"


class ProviderError(FleetError):
    """A model call failed; carries which provider, model and HTTP status."""

    code = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        model: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider, self.model, self.status, self.retry_after = provider, model, status, retry_after
        #: What the error's rate-limit headers said is left of the quota (a 429 says it is spent).
        self.quota: Quota | None = None


class RateLimited(ProviderError):
    code = "rate_limited"


class Overloaded(ProviderError):
    code = "overloaded"


class ServerError(ProviderError):
    code = "server_error"


class ProviderTimeout(ProviderError):
    code = "timeout"


class ProviderConnectionError(ProviderError):
    code = "connection"


class ContextLengthExceeded(ProviderError):
    code = "context_length_exceeded"


class ContentFiltered(ProviderError):
    code = "content_filtered"


class AuthError(ProviderError):
    code = "auth"


class BadRequest(ProviderError):
    code = "bad_request"


class MalformedResponse(ProviderError):
    code = "malformed_response"


class AnswerRejected(ProviderError):
    """The provider answered, but the answer failed a quality check."""

    code = "answer_rejected"


class EmptyAnswer(AnswerRejected):
    code = "empty_answer"


class TruncatedAnswer(AnswerRejected):
    code = "truncated"


class SchemaMismatch(AnswerRejected):
    code = "schema_mismatch"


class Reason(StrEnum):
    """Why a job was handed to people: the escalation record's ``reason``.

    The fleet's own reasons come first; the rest are the outcome codes of :class:`ProviderError`
    subclasses, for a chain whose last link ended with that outcome (``--where reason=server_error``).
    A unit test pins that every provider outcome code has a member here.
    """

    CHAIN_EXHAUSTED = "chain_exhausted"  # every link was tried; none gave an acceptable answer
    POISON_MESSAGE = "poison_message"  # delivered limits.max_deliveries times without finishing
    INVALID_MESSAGE = "invalid_message"  # the message did not decode or validate
    UNKNOWN_TASK = "unknown_task"  # a message for a task name no worker knows
    COST_CEILING = "cost_ceiling"  # max_cost_usd was spent before an acceptable answer
    THROTTLED = "throttled"  # requeued for rate limits more often than allowed
    QUALITY_CHECK_FAILED = "quality_check_failed"  # the quality gate's judge failed the answer
    PIPELINE_INPUT = "pipeline_input"  # a pipeline step's input could not be built from earlier steps
    TIMEOUT = "timeout"  # the queue's timeout_s ran out (also a provider outcome)
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    SERVER_ERROR = "server_error"
    CONNECTION = "connection"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    CONTENT_FILTERED = "content_filtered"
    AUTH = "auth"
    BAD_REQUEST = "bad_request"
    MALFORMED_RESPONSE = "malformed_response"
    EMPTY_ANSWER = "empty_answer"
    TRUNCATED = "truncated"
    SCHEMA_MISMATCH = "schema_mismatch"
    CIRCUIT_OPEN = "circuit_open"  # the last link's provider had its breaker open
    PROVIDER_ERROR = "provider_error"
    ANSWER_REJECTED = "answer_rejected"

    @classmethod
    def of(cls, code: str | None) -> Reason:
        """The reason for an outcome code; an unknown or empty code is ``chain_exhausted``."""
        try:
            return cls(code) if code else cls.CHAIN_EXHAUSTED
        except ValueError:
            return cls.CHAIN_EXHAUSTED


def _walk(cls: type[FleetError]) -> list[type[FleetError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_walk(sub))
    return out


def error_for_code(code: str) -> type[FleetError]:
    """The error class whose ``code`` is ``code`` (``FleetError`` when unknown)."""
    for cls in _walk(FleetError):
        if cls.code == code:
            return cls
    return FleetError
