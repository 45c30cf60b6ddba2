-- KEYS[1] a token bucket. ARGV: emission_ms, delta cost (may be negative). Corrects a reservation
-- (tpm is estimated before a call and corrected with the actual usage after it).
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = tonumber(raw) + tonumber(ARGV[1]) * tonumber(ARGV[2])
if tat < now then tat = now end
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(tat - now) + 60000)
return 1
