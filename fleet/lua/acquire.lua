-- KEYS: the bucket keys, then a counter key. ARGV: max_wait_ms, then per bucket emission_ms,
-- tolerance_ms, cost. Returns {reserved 0|1, wait_ms as a string}. Needs gcra.lua.
local buckets = {}
for i = 1, #KEYS - 1 do buckets[i] = KEYS[i] end
local reserved, wait = acquire(buckets, KEYS[#KEYS], ARGV, 1, tonumber(ARGV[1]))
return {reserved, tostring(wait)}
