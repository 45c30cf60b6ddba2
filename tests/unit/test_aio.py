"""The asyncio client refuses a bad batch before any I/O, as the sync client does."""

from __future__ import annotations

import asyncio
import socket

import pytest

from fleet.aio import AsyncClient
from fleet.errors import InvalidRequest
from fleet.settings import load_settings


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


def test_a_bad_request_in_a_batch_is_refused_before_the_broker_is_touched() -> None:
    async def scenario() -> None:
        # Given a client whose broker is unreachable (any I/O would raise BrokerError)
        async with AsyncClient(load_settings(env={}), redis_url=_dead_url()) as client:
            # When one request of three is invalid, Then InvalidRequest names it by its index
            with pytest.raises(InvalidRequest, match=r"requests\[1\]\.prompt"):
                await client.submit_many([{"prompt": "a"}, {"prompt": ""}, {"prompt": "c"}])
            with pytest.raises(InvalidRequest, match=r"^invalid task request: prompt: "):
                await client.submit({"prompt": ""})
            assert await client.submit_many([]) == []

    asyncio.run(scenario())
