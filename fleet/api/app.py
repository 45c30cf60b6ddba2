"""The FastAPI application: tasks, escalations, the inbox page. Built by :func:`create_api`."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from fleet.api.auth import BearerAuth
from fleet.boundary import is_broker_error, translate
from fleet.errors import FleetError, InvalidRequest
from fleet.escalations import STATES, State
from fleet.inbox import Filter, Inbox
from fleet.models import Tier
from fleet.producer import Client
from fleet.settings import Settings

__all__ = ["STATUS_FOR_CODE", "create_api"]

#: HTTP status of each error code; anything else is a 500.
STATUS_FOR_CODE = {
    "escalation_not_found": 404,
    "task_not_found": 404,
    "illegal_transition": 409,
    "invalid_request": 422,
    "budget_exceeded": 429,
    "escalation_error": 422,
    "config_invalid": 500,
    "fleet_not_running": 503,
    "broker_unavailable": 503,
    "embedded_broker": 503,
    "result_timeout": 504,
}
#: Largest request body accepted by POST /v1/tasks, beyond the prompt limit (system, schema, hints).
_BODY_SLACK = 2 * 1024 * 1024


def _error(status: int, code: str, message: str, errors: list[str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse({"error": body}, status_code=status)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: str = Field(min_length=1, max_length=128, description="Who does it (shown in history).")


class ClaimBody(_Body):
    pass


class ReleaseBody(_Body):
    force: bool = Field(default=False, description="Release a claim someone else holds.")


class ResolveBody(_Body):
    answer: str = Field(min_length=1, max_length=1024 * 1024, description="Delivered as the task's answer.")


class RetryBody(_Body):
    tier: Tier | None = Field(default=None, description="Pin a tier; none: through the router again.")


class DiscardBody(_Body):
    reason: str = Field(min_length=1, max_length=4096, description="Why; delivered as the task's reason.")


class RedriveBody(_Body):
    action: Literal["retry", "discard"] = Field(description="Retry or discard every match.")
    reason: str | None = Field(default=None, max_length=256, description="Match: the escalation's reason.")
    tier: Tier | None = Field(default=None, description="Match: the tier it escalated on.")
    kind: str | None = Field(default=None, max_length=128, description="Match: the job's kind.")
    provider: str | None = Field(default=None, max_length=128, description="Match: its last call's provider.")
    since_s: float | None = Field(default=None, gt=0, description="Match: created within this many seconds.")
    retry_tier: Tier | None = Field(default=None, description="Retry: pin this tier (none: the router).")
    discard_reason: str = Field(default="", max_length=4096, description="Discard: why (required).")
    dry_run: bool = Field(default=False, description="Count the matches; move nothing.")


class _Fleet:
    """The producer client and the inbox, connected on first use (the API may start before the fleet)."""

    def __init__(self, settings: Settings, redis_url: str | None) -> None:
        self.settings, self.redis_url = settings, redis_url
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._inbox: Inbox | None = None

    def client(self) -> Client:
        """Raises FleetNotRunning (no broker configured or found)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = Client(self.settings, redis_url=self.redis_url)
        return self._client

    def inbox(self) -> Inbox:
        if self._inbox is None:
            client = self.client()
            with self._lock:
                if self._inbox is None:
                    self._inbox = Inbox(self.settings, redis_url=client.redis_url, app=client.app)
        return self._inbox

    def task(self, task_id: str) -> dict[str, Any]:
        """Raises TaskNotFound (404), BrokerError (503)."""
        status = self.client().status(task_id)
        if status.result is not None:
            return status.result.model_dump(mode="json")
        return status.model_dump(mode="json", exclude={"result"})

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def create_api(settings: Settings, redis_url: str | None = None, *, token: str | None = None) -> FastAPI:
    """The API for one fleet. ``token`` defaults to the variable named by ``[api] token_env``;
    with a token, every path but /healthz and the inbox page needs ``Authorization: Bearer <token>``."""
    if token is None:
        token = os.environ.get(settings.api.token_env) or None
    fleet = _Fleet(settings, redis_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        fleet.close()

    api = FastAPI(
        title="fleet",
        version="1",
        summary="Submit AI-model jobs, read their results, and work the escalation inbox.",
        lifespan=lifespan,
    )
    api.state.fleet = fleet
    if token:
        api.add_middleware(BearerAuth, token=token)
    _handle_errors(api, fleet)
    api.include_router(_task_routes(settings, fleet))
    api.include_router(_escalation_routes(fleet))
    return api


def _handle_errors(api: FastAPI, fleet: _Fleet) -> None:
    """Every error in the fleet's JSON shape: ``{"error": {"code", "message"[, "errors"]}}``."""

    @api.exception_handler(FleetError)
    async def _fleet_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, FleetError)
        body = exc.to_dict()
        return JSONResponse({"error": body}, status_code=STATUS_FOR_CODE.get(exc.code, 500))

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            lines.append(f"{where}: {err.get('msg', 'invalid')}")
        return _error(422, "invalid_request", "invalid request: " + "; ".join(lines), lines)

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if is_broker_error(exc):  # got past the boundary (fleet.boundary): still a 503, in one line
            body = translate(exc, fleet.redis_url).to_dict()
            return JSONResponse({"error": body}, status_code=503)
        raise exc


def _task_routes(settings: Settings, fleet: _Fleet) -> APIRouter:
    """Liveness, the inbox page, and submitting and reading tasks."""
    api = APIRouter()

    @api.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        """Liveness: the API process answers (no broker call, no auth)."""
        return {"status": "ok"}

    @api.get("/inbox", response_class=HTMLResponse, include_in_schema=False)
    def inbox_page() -> HTMLResponse:
        html = resources.files("fleet.api").joinpath("inbox.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @api.post("/v1/tasks", status_code=202, tags=["tasks"])
    async def submit_task(request: Request) -> JSONResponse:
        """Validate a TaskRequest (JSON) and enqueue it: 202 ``{"task_id"}``; invalid: 422."""
        limit = settings.limits.max_prompt_bytes + _BODY_SLACK
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return _error(413, "invalid_request", f"request body over {limit} bytes")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(["request: the body is not UTF-8 JSON"]) from None
        if not text.strip():
            raise InvalidRequest(["request: the body is empty; send a TaskRequest as JSON"])
        task_id = await run_in_threadpool(fleet.client().submit, text)
        return JSONResponse({"task_id": task_id}, status_code=202)

    @api.get("/v1/tasks/{task_id}", tags=["tasks"])
    def get_task(task_id: str) -> dict[str, Any]:
        """The job's TaskResult when it has a final state, else its JobStatus: ``state`` (queued,
        routed, batched, running), ``queue``, ``since``, ``tier`` and ``reasons``, ``worker``, ``link``,
        ``attempt``, ``cancelling``; 404 for an id nobody submitted."""
        return fleet.task(task_id)

    @api.delete("/v1/tasks/{task_id}", status_code=202, tags=["tasks"])
    def cancel_task(task_id: str) -> dict[str, Any]:
        """Cancel a job (see ``Client.cancel``): its status after the mark (its TaskResult when it is
        already final); 404 for an id nobody submitted. Cancelling twice is harmless."""
        status = fleet.client().cancel(task_id)
        if status.result is not None:
            return status.result.model_dump(mode="json")
        return status.model_dump(mode="json", exclude={"result"})

    return api


def _escalation_routes(fleet: _Fleet) -> APIRouter:
    """The inbox's verbs; each answers with the record as stored (``EscalationRecord``'s JSON)."""
    api = APIRouter(tags=["escalations"])

    @api.get("/v1/escalations")
    def list_escalations(
        state: Annotated[State | None, Query(description=f"One of {', '.join(STATES)}.")] = None,
        tier: Annotated[Tier | None, Query()] = None,
    ) -> list[dict[str, Any]]:
        """Escalations, oldest first, filtered by state and tier."""
        return [record.model_dump(mode="json") for record in fleet.inbox().list(state=state, tier=tier)]

    @api.get("/v1/escalations/stats")
    def escalation_stats() -> dict[str, Any]:
        """Counts by state, by tier and by reason (each split by state); age of the oldest open one."""
        return fleet.inbox().stats().model_dump(mode="json")

    @api.get("/v1/escalations/{esc_id}")
    def get_escalation(esc_id: str) -> dict[str, Any]:
        """One escalation: request, routing, attempts, history, resolution."""
        return fleet.inbox().get(esc_id).model_dump(mode="json")

    @api.post("/v1/escalations/{esc_id}/claim")
    def claim(esc_id: str, body: ClaimBody) -> dict[str, Any]:
        """Take an open escalation: only you can act on it until you release it. 409 if someone holds it."""
        return fleet.inbox().claim(esc_id, body.by).model_dump(mode="json")

    @api.post("/v1/escalations/{esc_id}/release")
    def release(esc_id: str, body: ReleaseBody) -> dict[str, Any]:
        """Give a claimed escalation back to the open pile (``force``: someone else's claim)."""
        return fleet.inbox().release(esc_id, body.by, force=body.force).model_dump(mode="json")

    @api.post("/v1/escalations/{esc_id}/resolve")
    def resolve(esc_id: str, body: ResolveBody) -> dict[str, Any]:
        """Answer it: the answer becomes the task's result (``resolved_by: human``)."""
        return fleet.inbox().resolve(esc_id, body.answer, body.by).model_dump(mode="json")

    @api.post("/v1/escalations/{esc_id}/retry")
    def retry(esc_id: str, body: RetryBody) -> dict[str, Any]:
        """Enqueue the original request again under the same task id (pinned to ``tier`` if given)."""
        record = fleet.inbox().retry(esc_id, body.by, tier=str(body.tier) if body.tier else None)
        return record.model_dump(mode="json")

    @api.post("/v1/escalations/redrive")
    def redrive(body: RedriveBody) -> dict[str, Any]:
        """Retry or discard every open escalation that matches (all given keys), paced at
        ``escalation.redrive_per_s``; ``dry_run`` only counts. Answers with the counts and the ids
        moved and left (claimed or closed meanwhile, with why)."""
        where = Filter(
            reason=body.reason, tier=str(body.tier) if body.tier else None, kind=body.kind,
            provider=body.provider, since_s=body.since_s,
        )  # fmt: skip
        report = fleet.inbox().redrive(
            body.action, where, body.by, reason=body.discard_reason, dry_run=body.dry_run,
            tier=str(body.retry_tier) if body.retry_tier else None,
        )  # fmt: skip
        return report.to_dict()

    @api.post("/v1/escalations/{esc_id}/discard")
    def discard(esc_id: str, body: DiscardBody) -> dict[str, Any]:
        """Close it without an answer; the task's result says discarded, with the reason."""
        return fleet.inbox().discard(esc_id, body.reason, body.by).model_dump(mode="json")

    return api
