"""Bearer-token auth for the API, and the rule that keeps an unauthenticated API on loopback."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from fleet.errors import ConfigError
from fleet.settings import Settings

__all__ = ["PUBLIC_PATHS", "BearerAuth", "check_bind", "is_loopback_host"]

#: Paths served without a token: liveness, and the inbox page itself (static HTML with no data in it;
#: it asks for the token and sends it with every call).
PUBLIC_PATHS = frozenset({"/healthz", "/inbox", "/inbox/"})


def is_loopback_host(host: str) -> bool:
    return host in ("localhost", "::1", "[::1]") or host.startswith("127.")


def check_bind(host: str, token: str | None, settings: Settings) -> None:
    """Refuse to serve without a token anywhere but loopback.

    Raises:
        ConfigError: ``host`` is not a loopback address and no token is configured.
    """
    if token or is_loopback_host(host):
        return
    raise ConfigError(
        f"refusing to listen on {host} without a token: anyone who can reach it could answer and "
        f"discard escalations. Set {settings.api.token_env} to a long random secret, or listen on 127.0.0.1",
        key="api.token_env",
    )


class BearerAuth:
    """ASGI middleware: every HTTP request outside :data:`PUBLIC_PATHS` needs ``Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        header = Request(scope).headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token):
            response: Response = JSONResponse(
                {"error": {"code": "unauthorized", "message": "missing or wrong bearer token"}},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
