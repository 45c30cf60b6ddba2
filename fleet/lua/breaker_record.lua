-- KEYS[1] the breaker hash, KEYS[2] its failure zset. ARGV: ok 0|1, token, failure threshold,
-- window_ms, min failure ratio. Records a call's outcome; returns the state after it.
-- Closed: a failure is added to the window; enough failures that are also a large enough share of the
-- calls in the window open it. Half open: the probe's success closes it, its failure opens it again.
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
