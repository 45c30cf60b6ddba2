-- KEYS: a counter key, the breaker hash, then the bucket keys. ARGV: the gate's arguments (gate.lua).
-- Returns {reserved 0|1, wait_ms as a string, allowed 0|1, state}. Needs gcra.lua, breaker_allow.lua, gate.lua.
local buckets = {}
for i = 3, #KEYS do buckets[i - 2] = KEYS[i] end
local reserved, wait, allowed, state = gate(buckets, KEYS[1], KEYS[2], ARGV, 1)
return {reserved, tostring(wait), allowed, state}
