"""The HTTP API and the inbox page (``fleet api``): FastAPI on uvicorn, OpenAPI at /openapi.json.

    POST /v1/tasks                          a TaskRequest -> 202 {"task_id"}
    GET  /v1/tasks/{id}                     the TaskResult, or {"task_id", "state"}
    GET  /v1/escalations?state=&tier=       records, oldest first
    GET  /v1/escalations/stats              counts by state, tier and reason; the oldest open one
    GET  /v1/escalations/{id}               one record
    POST /v1/escalations/{id}/claim|release|resolve|retry|discard
    GET  /inbox                             the page people work the inbox from
    GET  /healthz                           liveness, never behind auth

Errors have one shape, ``{"error": {"code", "message", ...}}``, with the status taken from the code.
"""

from __future__ import annotations

from fleet.api.app import create_api
from fleet.api.auth import check_bind

__all__ = ["check_bind", "create_api"]
