"""kombu's Redis transport with one client for a channel's synchronous commands (workers only).

kombu builds a new ``redis.Redis`` for every ack, every unacked-index update and every publish
(``Channel.conn_or_acquire``), and redis-py's constructor builds the client's response-callback
tables each time: about a seventh of a worker's main-process CPU at load, and a share of every
router publish (docs/performance.md). A ``redis.Redis`` over a connection pool is thread-safe (each
command takes a connection from the pool), so one per pool serves them all. A new pool (after a
fork or a reconnect) gets a new client. ``fleet.worker`` registers this transport for the
``redis://`` and ``rediss://`` schemes in worker processes; producers keep kombu's own.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

__all__ = ["Channel", "Transport"]

#: kombu's own client factory (private, and absent from the stubs).
_kombu_create_client: Any = kombu_redis.Channel._create_client  # type: ignore[attr-defined]


class Channel(kombu_redis.Channel):
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # BRPOP and pub/sub hold their connection: one client each, as before
            return _kombu_create_client(self, asynchronous=True)
        pool = self.pool
        client = self._sync_client
        if client is None or client.connection_pool is not pool:
            client = self._sync_client = _kombu_create_client(self)
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
