-- acquire(buckets, counter, argv, base, max_wait) -> reserved 0|1, wait_ms
-- GCRA over several token buckets, all or nothing. Bucket i's emission_ms, tolerance_ms and cost are
-- argv[base + 3(i-1) + 1 .. 3]. A reservation whose wait is within max_wait is made (and counted in
-- `counter`, per 10-second slot, for `fleet status`); a longer one is refused with the wait.
-- Time comes from Redis, so workers with skewed clocks agree.
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
