-- KEYS[1] a token bucket. ARGV[1] floor_ms. Books it at least that far ahead of now (a provider's
-- rate-limit headers said its quota is nearly spent). Needs adjust_fn.lua.
return pace(KEYS[1], tonumber(ARGV[1]))
