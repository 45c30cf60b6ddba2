-- KEYS[1] a token bucket. ARGV: emission_ms, delta cost (may be negative). Corrects a reservation
-- (tpm is estimated before a call and corrected with the actual usage after it). Needs adjust_fn.lua.
return adjust(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
