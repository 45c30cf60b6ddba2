-- KEYS[1] the breaker hash. ARGV: cooldown_ms, probe token, window_ms. Returns {allowed 0|1, state}.
-- Needs breaker_allow.lua.
local allowed, state = allow(KEYS[1], tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]))
return {allowed, state}
