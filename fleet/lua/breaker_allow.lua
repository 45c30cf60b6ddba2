-- allow(key, cooldown_ms, token, window_ms) -> allowed 0|1, state
-- Whether a call to a provider may go out now. Closed: yes (and the call is counted in the window, so
-- a failure rate, not a failure count, opens the breaker). Open: no, until cooldown_ms have passed;
-- then one probe (identified by `token`) is let through in the half-open state.
local function allow(key, cooldown, token, window)
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  local state = redis.call('HGET', key, 'state')
  if not state or state == 'closed' then
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
