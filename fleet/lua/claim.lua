-- KEYS idempotency keys, one per job that has one (a key may repeat). ARGV[1] their TTL in seconds,
-- ARGV[1 + i] the task id of the job of KEYS[i].
-- Returns, for each key, the task id it maps to: the job's own when this call claimed the key, else
-- the first one submitted with it (earlier, or earlier in this call). One round trip for a batch.
local firsts = {}
for i, key in ipairs(KEYS) do
  local first = redis.call('GET', key)
  if not first then
    first = ARGV[i + 1]
    redis.call('SET', key, first, 'EX', ARGV[1])
  end
  firsts[i] = first
end
return firsts
