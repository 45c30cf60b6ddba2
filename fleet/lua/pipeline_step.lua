-- A pipeline step (or map item) finished: record it once, and count it toward its step's join.
-- Only fleet/pipelines/engine.py builds its KEYS and ARGV.
--
-- KEYS: [1] the pipeline's state (a hash).
-- ARGV: [1] the item's field ("extract", or "claims:3" for a map item), [2] its summary (JSON),
--       [3] its output, [4] the step's name, [5] the state's lifetime in seconds.
--
-- Returns the whole state (HGETALL): the caller sends the next step when the join is complete. A
-- second report of the same item (a redelivery, a person's answer sent twice) counts nothing.
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
if redis.call('HSETNX', KEYS[1], 'res:' .. ARGV[1], ARGV[2]) == 1 then
  redis.call('HSET', KEYS[1], 'out:' .. ARGV[1], ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'done:' .. ARGV[4], 1)
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
return redis.call('HGETALL', KEYS[1])
