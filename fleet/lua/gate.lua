-- gate(buckets, counter, breaker, argv, a) -> reserved 0|1, wait_ms, allowed 0|1, state
-- A chain link's admission: its rpm/tpm buckets (argv[a + 4] the wait bound, then each bucket's
-- triple), then, when they reserved (or there is none), its provider's breaker (argv[a] = '1': ask it;
-- argv[a + 1 .. 3]: cooldown_ms, probe token, window_ms). Needs gcra.lua and breaker_allow.lua.
local function gate(buckets, counter, breaker, argv, a)
  local reserved, wait = 1, 0
  if #buckets > 0 then
    reserved, wait = acquire(buckets, counter, argv, a + 4, tonumber(argv[a + 4]))
    if reserved == 0 then return 0, wait, 0, '' end
  end
  if argv[a] ~= '1' then return 1, wait, 1, '' end
  local allowed, state = allow(breaker, tonumber(argv[a + 1]), argv[a + 2], tonumber(argv[a + 3]))
  return 1, wait, allowed, state
end
