"""The model call of a job on the asyncio pool (:mod:`fleet.asyncio_pool`): aiohttp on the pool's loop.

The adapters stay as they are: they build a request and read an ``httpx.Response``. Here the POST
goes out through one ``aiohttp.ClientSession`` per loop, and its answer comes back as an
``httpx.Response`` (status, headers, the undecoded body, which httpx decodes as its own transport's);
aiohttp's failures come back as httpx's (``ConnectTimeout``, ``ReadTimeout``, ``ConnectError``,
``ReadError``, ``RemoteProtocolError``), so :meth:`fleet.providers._http.HTTPProvider._post` translates
both paths' failures the same way.

Why aiohttp: an event loop's calls through ``httpx.AsyncClient`` cost about 1.1 ms of CPU each with a
client per in-flight call (and 22 ms with one client shared by 200 calls, encode/httpx#3215), through
aiohttp 0.2-0.27 ms, against the same mock provider (docs/performance.md, "The asyncio pool").
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
import urllib.request
import weakref
from typing import Any

import aiohttp
import httpx

from fleet.asyncio_pool import at_stop

__all__ = ["close", "post"]

_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
    weakref.WeakKeyDictionary()
)


def _session(verify: ssl.SSLContext) -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None or session.closed:
        connector = aiohttp.TCPConnector(limit=0, ssl=verify, ttl_dns_cache=60)
        session = aiohttp.ClientSession(
            connector=connector,
            # httpx decodes the body (as with its own transport), so aiohttp hands it over as sent,
            # and asks only for encodings httpx reads without optional packages.
            auto_decompress=False,
            headers={"Accept-Encoding": "gzip, deflate"},
            # aiohttp would read the proxy variables and ~/.netrc in a thread for every request
            # (4-5% of a worker's CPU under py-spy): the proxy is read once per host (_proxy).
            trust_env=False,
        )
        _sessions[loop] = session

        at_stop(close)
    return session


async def close() -> None:
    """Close the running loop's session (the asyncio pool does at its stop)."""
    session = _sessions.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


@functools.cache
def _proxy(scheme: str, host: str) -> str | None:
    """The proxy for ``scheme://host`` from HTTP(S)_PROXY and NO_PROXY, as httpx reads them."""
    proxies = urllib.request.getproxies_environment()
    if not proxies or urllib.request.proxy_bypass(host):  # NO_PROXY
        return None
    return proxies.get(scheme) or proxies.get("all")


@functools.lru_cache(maxsize=256)
def _request(url: str) -> httpx.Request:
    """The ``httpx.Request`` a response or failure of a POST to ``url`` names, one per URL: it only
    names the call (httpx parses the URL in building it, ~50 us a call here, about 1% of a job's CPU).
    """
    return httpx.Request("POST", url)


def _dumps(payload: Any) -> bytes:
    # What httpx sends for ``json=``: compact, UTF-8, no NaN.
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


async def post(
    url: str, payload: Any, headers: dict[str, str], timeout: httpx.Timeout, verify: ssl.SSLContext
) -> httpx.Response:
    """POST ``payload`` as JSON; the answer as an ``httpx.Response``; failures as httpx's exceptions."""
    request = _request(url)
    limits = aiohttp.ClientTimeout(total=None, sock_connect=timeout.connect, sock_read=timeout.read)
    body = _dumps(payload)
    sent = {**headers, "Content-Type": "application/json"}
    try:
        session = _session(verify)
        proxy = _proxy(request.url.scheme, request.url.host)
        async with session.post(url, data=body, headers=sent, timeout=limits, proxy=proxy) as answer:
            content = await answer.read()
            return httpx.Response(
                answer.status, headers=list(answer.raw_headers), content=content, request=request
            )
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(str(exc), request=request) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        raise httpx.RemoteProtocolError(str(exc) or type(exc).__name__, request=request) from exc
    except aiohttp.ClientError as exc:
        raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from exc
