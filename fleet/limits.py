"""Limits shared by every worker on every machine, kept in Redis: rate limits and circuit breakers.

Each operation is one atomic Lua script that takes its time from Redis (``TIME``), not from the
worker's clock, so workers with skewed clocks still agree.

Rate limits (a queue's ``rate_limit``, a model's ``rpm`` and ``tpm``) are token buckets kept as
GCRA: one number per bucket, the theoretical arrival time of the next unit. An acquire reserves
its units when the wait is within a bound (the caller sleeps that long, then runs) and refuses
otherwise, telling how long to wait, so a job goes back to its queue with a countdown instead of
holding a worker slot. Several buckets (rpm and tpm) are acquired all-or-nothing in one round trip.
We chose a short script over the ``limits`` library: ``limits`` has no token bucket, takes its
time from the client, and has no way to correct a reservation afterwards (tpm is estimated before
the call and corrected with the actual usage after it).

Breaker states: ``closed`` (calls flow; failures are counted in a sliding window), ``open``
(``failure_threshold`` failures within ``window_s`` that are also ``min_failure_ratio`` of the calls
in the window: calls are skipped without being made), and
``half_open`` (``cooldown_s`` after opening, one probe call is let through; its success closes the
breaker, its failure opens it again).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import redis
from redis.client import Pipeline

from fleet import keys
from fleet.settings import BreakerSettings

__all__ = [
    "BREAKER_FAILURES",
    "GATE_LUA",
    "GCRA_LUA",
    "BreakerState",
    "Bucket",
    "CircuitBreaker",
    "Gate",
    "GateAnswer",
    "Permit",
    "RateLimiter",
    "acquire_args",
]

#: Outcomes that count against a provider's availability (quality failures do not).
BREAKER_FAILURES = frozenset({"server_error", "overloaded", "timeout", "connection"})

BreakerState = Literal["closed", "open", "half_open"]

# allow(key, cooldown_ms, token) -> allowed 0|1, state: whether a call may go out now.
_ALLOW_FN = """
local function allow(key, cooldown, token, window)
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  local state = redis.call('HGET', key, 'state')
  if not state or state == 'closed' then
    -- calls in the current window, so a failure rate (not a failure count) opens the breaker
    local calls = key .. ':calls'
    if redis.call('INCR', calls) == 1 then redis.call('PEXPIRE', calls, window) end
    return 1, 'closed'
  end
  local opened = tonumber(redis.call('HGET', key, 'opened_at') or '0')
  if now - opened < cooldown then return 0, 'open' end
  local probe = redis.call('HGET', key, 'probe')
  local probe_at = tonumber(redis.call('HGET', key, 'probe_at') or '0')
  if probe and now - probe_at < cooldown then return 0, 'half_open' end
  redis.call('HSET', key, 'state', 'half_open', 'probe', token, 'probe_at', now)
  return 1, 'half_open'
end
"""

# KEYS[1] breaker hash. ARGV: cooldown_ms, probe token. Returns {allowed 0|1, state}.
_ALLOW = (
    _ALLOW_FN
    + """
local allowed, state = allow(KEYS[1], tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]))
return {allowed, state}
"""
)

# KEYS[1] breaker hash, KEYS[2] failure zset. ARGV: ok 0|1, token, threshold, window_ms.
# Returns the state after recording.
_RECORD = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local is_probe = redis.call('HGET', KEYS[1], 'probe') == ARGV[2]
if ARGV[1] == '1' then
  if state ~= 'closed' and is_probe then
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[1] .. ':calls')
    return 'closed'
  end
  return state
end
if state ~= 'closed' then
  if is_probe then
    redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now)
    redis.call('HDEL', KEYS[1], 'probe', 'probe_at')
    redis.call('HINCRBY', KEYS[1], 'opens', 1)
    return 'open'
  end
  return state
end
local window = tonumber(ARGV[4])
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], 0, now - window)
redis.call('PEXPIRE', KEYS[2], window)
local failures = redis.call('ZCARD', KEYS[2])
local calls = tonumber(redis.call('GET', KEYS[1] .. ':calls') or '0')
if failures >= tonumber(ARGV[3]) and failures >= tonumber(ARGV[5]) * calls then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now)
  redis.call('HINCRBY', KEYS[1], 'opens', 1)
  redis.call('DEL', KEYS[2], KEYS[1] .. ':calls')
  return 'open'
end
return 'closed'
"""


#: acquire(buckets, counter, argv, base, max_wait_ms) -> allowed 0|1, wait_ms: GCRA over several
#: buckets, all-or-nothing; bucket i's emission_ms, tolerance_ms, cost are argv[base + 3(i-1) + 1..3].
#: Counts the reservation in ``counter``. Other scripts (the execute task's start) include it.
GCRA_LUA = """
local function acquire(buckets, counter, argv, base, max_wait)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
  local worst = 0
  local tats = {}
  for i = 1, #buckets do
    local emission = tonumber(argv[base + (i - 1) * 3 + 1])
    local tolerance = tonumber(argv[base + (i - 1) * 3 + 2])
    local cost = tonumber(argv[base + (i - 1) * 3 + 3])
    local tat = tonumber(redis.call('GET', buckets[i]) or '0')
    if tat < now then tat = now end
    local new_tat = tat + emission * cost
    local wait = new_tat - emission - tolerance - now
    if wait > worst then worst = wait end
    tats[i] = new_tat
  end
  if worst > max_wait then return 0, worst end
  for i = 1, #buckets do
    redis.call('SET', buckets[i], tostring(tats[i]), 'PX', math.ceil(tats[i] - now) + 60000)
  end
  redis.call('INCR', counter)
  redis.call('EXPIRE', counter, 180)
  return 1, worst
end
"""

# KEYS: bucket keys..., then a counter key. ARGV: max_wait_ms, then per bucket: emission_ms,
# tolerance_ms, cost. Returns {allowed 0|1, wait_ms as a string}.
_ACQUIRE = (
    GCRA_LUA
    + """
local buckets = {}
for i = 1, #KEYS - 1 do buckets[i] = KEYS[i] end
local allowed, wait = acquire(buckets, KEYS[#KEYS], ARGV, 1, tonumber(ARGV[1]))
return {allowed, tostring(wait)}
"""
)

#: gate(buckets, counter, breaker, argv, a) -> reserved 0|1, wait_ms, allowed 0|1, state: a link's
#: admission. The rpm/tpm acquire (argv[a + 4] the wait bound, then the buckets' triples), and when it
#: reserved (or there is no bucket) the breaker's allow (argv[a] '1': ask it; argv[a + 1..3]:
#: cooldown_ms, probe token, window_ms). Needs GCRA_LUA before it. The job's start includes it.
GATE_LUA = (
    _ALLOW_FN
    + """
local function gate(buckets, counter, breaker, argv, a)
  local reserved, wait = 1, 0
  if #buckets > 0 then
    reserved, wait = acquire(buckets, counter, argv, a + 4, tonumber(argv[a + 4]))
    if reserved == 0 then return 0, wait, 0, '' end
  end
  if argv[a] ~= '1' then return 1, wait, 1, '' end
  local allowed, state = allow(breaker, tonumber(argv[a + 1]), argv[a + 2], tonumber(argv[a + 3]))
  return 1, wait, allowed, state
end
"""
)

# KEYS: a counter key, the breaker hash, then the bucket keys. ARGV: Gate.args(). Returns
# {reserved 0|1, wait_ms as a string, allowed 0|1, state}.
_GATE = (
    GCRA_LUA
    + GATE_LUA
    + """
local buckets = {}
for i = 3, #KEYS do buckets[i - 2] = KEYS[i] end
local reserved, wait, allowed, state = gate(buckets, KEYS[1], KEYS[2], ARGV, 1)
return {reserved, tostring(wait), allowed, state}
"""
)

# KEYS[1] bucket. ARGV: emission_ms, delta cost (may be negative). Corrects a reservation.
_ADJUST = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = tonumber(raw) + tonumber(ARGV[1]) * tonumber(ARGV[2])
if tat < now then tat = now end
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(tat - now) + 60000)
return 1
"""


def acquire_args(buckets: list[Bucket], max_wait_s: float) -> list[float]:
    """ARGV of :data:`GCRA_LUA`'s ``acquire`` (base 1): the wait bound, then each bucket's triple."""
    args: list[float] = [max_wait_s * 1000.0]
    for b in buckets:
        args += [b.emission_ms, max(0.0, b.burst - 1) * b.emission_ms, b.cost]
    return args


@dataclass(frozen=True, slots=True)
class GateAnswer:
    """A link's admission: ``reserved`` its rpm/tpm tokens (``wait_s`` until they are due, or until
    a token is free when not reserved), and the breaker's ``permit`` (None: no breaker asked)."""

    reserved: bool
    wait_s: float
    permit: Permit | None


@dataclass(frozen=True, slots=True)
class Gate:
    """A link's admission, asked in one round trip: its rpm/tpm buckets, then its provider's breaker
    (:data:`GATE_LUA`). :meth:`RateLimiter.ask` asks it alone; the execute task's start script asks
    the first link's together with the job's lock."""

    buckets: Sequence[Bucket]
    counter: str
    provider: str
    max_wait_s: float
    breaker: BreakerSettings | None
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def asks_breaker(self) -> bool:
        return self.breaker is not None and self.breaker.enabled

    def keys(self) -> list[str]:
        return [self.counter, keys.breaker(self.provider), *(b.key for b in self.buckets)]

    def args(self) -> list[Any]:
        b = self.breaker
        return [
            "1" if self.asks_breaker else "0",
            int(b.cooldown_s * 1000) if b else 0,
            self.token,
            int(b.window_s * 1000) if b else 0,
            *acquire_args(list(self.buckets), self.max_wait_s),
        ]

    def answer(self, reserved: Any, wait_ms: Any, allowed: Any, state: Any) -> GateAnswer:
        """The script's reply as a :class:`GateAnswer`."""
        wait = max(0.0, float(wait_ms) / 1000.0)
        if not int(reserved):
            return GateAnswer(False, wait, None)
        if not self.asks_breaker:
            return GateAnswer(True, wait, None)
        name = state.decode() if isinstance(state, bytes) else str(state)
        return GateAnswer(True, wait, Permit(bool(int(allowed)), name, self.token))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket: ``rate_per_s`` units a second, up to ``burst`` at once; this acquire's ``cost``."""

    key: str
    rate_per_s: float
    burst: float
    cost: float = 1.0

    @property
    def emission_ms(self) -> float:
        return 1000.0 / self.rate_per_s


class RateLimiter:
    """Token buckets shared by every worker through Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._acquire = client.register_script(_ACQUIRE)
        self._adjust = client.register_script(_ADJUST)
        self._gate = client.register_script(_GATE)

    def acquire(self, buckets: list[Bucket], *, max_wait_s: float, counter: str) -> tuple[bool, float]:
        """Reserve ``cost`` units in every bucket if the wait is at most ``max_wait_s``.

        Returns ``(True, wait_s)``: reserved, sleep ``wait_s`` then go; or ``(False, wait_s)``:
        nothing reserved, come back in about ``wait_s``. ``counter`` counts reservations (per
        10-second slot, for `fleet status`).
        """
        allowed, wait_ms = self._acquire(
            keys=[*(b.key for b in buckets), counter], args=acquire_args(buckets, max_wait_s)
        )
        return bool(int(allowed)), max(0.0, float(wait_ms) / 1000.0)

    def ask(self, gate: Gate) -> GateAnswer:
        """A link's admission in one round trip (see :class:`Gate`)."""
        return gate.answer(*self._gate(keys=gate.keys(), args=gate.args()))

    def adjust(self, bucket: Bucket, delta_cost: float, *, pipe: Pipeline | None = None) -> None:
        """Correct a reservation by ``delta_cost`` units (actual minus estimated usage); queued on
        ``pipe`` (sent with the caller's other writes) when given."""
        if not delta_cost:
            return
        if pipe is None:
            self._adjust(keys=[bucket.key], args=[bucket.emission_ms, delta_cost])
        else:
            # EVAL, not a registered script: a pipeline would check SCRIPT EXISTS in a round trip of its own.
            pipe.eval(_ADJUST, 1, bucket.key, bucket.emission_ms, delta_cost)

    def fill(self, bucket: Bucket) -> float:
        """Units available now (0 .. burst), for `fleet status`."""
        raw = self.redis.get(bucket.key)
        seconds, micros = self.redis.time()
        now = seconds * 1000 + micros / 1000
        if raw is None:
            return bucket.burst
        backlog_ms = max(0.0, float(raw) - now)
        return max(0.0, min(bucket.burst, bucket.burst - backlog_ms / bucket.emission_ms))


@dataclass(frozen=True, slots=True)
class Permit:
    """The breaker's answer for one call: whether to make it, and the token to report back with."""

    allowed: bool
    state: BreakerState
    token: str


class CircuitBreaker:
    """A breaker per provider, shared by every worker through Redis."""

    def __init__(self, client: redis.Redis, settings: BreakerSettings) -> None:
        self.redis = client
        self.settings = settings
        self._allow = client.register_script(_ALLOW)
        self._record = client.register_script(_RECORD)

    def allow(self, provider: str) -> Permit:
        """Whether a call to ``provider`` may go out now (one round trip)."""
        if not self.settings.enabled:
            return Permit(True, "closed", "")
        token = uuid.uuid4().hex
        allowed, state = self._allow(
            keys=[keys.breaker(provider)],
            args=[int(self.settings.cooldown_s * 1000), token, int(self.settings.window_s * 1000)],
        )
        name = state.decode() if isinstance(state, bytes) else str(state)
        return Permit(bool(int(allowed)), name, token)  # type: ignore[arg-type]

    def record(self, provider: str, permit: Permit, outcome: str) -> BreakerState | None:
        """Report a call's outcome. A success in the closed state costs no round trip."""
        if not self.settings.enabled:
            return None
        ok = outcome not in BREAKER_FAILURES
        if ok and permit.state == "closed":
            return "closed"
        state = self._record(
            keys=[keys.breaker(provider), keys.breaker_failures(provider)],
            args=[
                "1" if ok else "0",
                permit.token,
                self.settings.failure_threshold,
                int(self.settings.window_s * 1000),
                self.settings.min_failure_ratio,
            ],
        )
        return state.decode() if isinstance(state, bytes) else str(state)  # type: ignore[return-value]

    def states(self, providers: list[str]) -> dict[str, dict[str, object]]:
        """Each provider's breaker state, for `fleet status`."""
        pipe = self.redis.pipeline(transaction=False)
        for provider in providers:
            pipe.hgetall(keys.breaker(provider))
            pipe.zcard(keys.breaker_failures(provider))
        raw = pipe.execute()
        out: dict[str, dict[str, object]] = {}
        for i, provider in enumerate(providers):
            data = {k.decode(): v.decode() for k, v in raw[2 * i].items()}
            out[provider] = {
                "state": data.get("state", "closed"),
                "recent_failures": int(raw[2 * i + 1]),
                "opens": int(data.get("opens", 0)),
            }
        return out
