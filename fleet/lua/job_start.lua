-- A tier job's start, in one round trip. Needs gcra.lua, breaker_allow.lua, gate.lua and fair_admit.lua.
-- Only fleet/middleware/start.py builds its KEYS and ARGV (StartPlan -> this layout -> StartAnswer).
--
-- KEYS: [1] the job's result, [2] its lock, [3] its delivery count, [4] the queue's rate counter,
--       [5 .. 4+nq] the queue's buckets, then (when the first link is asked) the link's counter,
--       its provider's breaker and its buckets.
-- ARGV: [1] lock owner ('': take no lock), [2] lock ttl_ms, [3] '1': count this redelivery, [4] max deliveries,
--       [5] delivery count ttl_s, [6] nq (-1: take no queue token), [7] '1': ask the first link,
--       [8] the queue wait (ms) within which the link is asked now, [9] the queue's max wait (ms),
--       [10 .. 9+3nq] the queue buckets' triples, then the gate's arguments (gate.lua).
-- The last KEY is the job's record and the last ARGV the chain's first link ('': do not mark it): a
-- job that runs now is marked `running` there (worker, delivery, link, since), in this round trip.
-- The ARGV before it is the team's fair share (fair_admit.lua's spec as JSON; '': not asked): asked
-- once the lock is ours, before any token is taken, so a refused job takes none.
--
-- Returns, in the order the parts are tried:
--   {'done'}                        the job already has its final result (a late redelivery)
--   {'cancelled'}                   the job was cancelled (its record says so): run nothing
--   {'locked', holder_ttl_ms, holder}  another worker runs it
--   {'poison', deliveries}          delivered more than max deliveries times (the lock is held)
--   {'ok', deliveries, q_reserved, q_wait_ms, l_reserved, l_wait_ms, l_allowed, l_state,
--    f_admitted, f_own, f_running, f_teams, f_others_waiting}
-- (a job its fair share refuses: 'ok' with the queue and link parts '', and f_admitted 0)
-- where deliveries counts this one (a first delivery is not counted: it is 1).
--                                   locked for us; '' for the parts not asked
local stored = redis.call('GET', KEYS[1])
if stored then
  local ok, meta = pcall(cjson.decode, stored)
  if ok and meta['status'] == 'SUCCESS' then return {'done'} end
end
if redis.call('HGET', KEYS[#KEYS], 'cancelled') then return {'cancelled'} end
if ARGV[1] ~= '' and not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'locked', redis.call('PTTL', KEYS[2]), redis.call('GET', KEYS[2]) or ''}
end
local deliveries = 1
if ARGV[3] == '1' then
  deliveries = redis.call('INCR', KEYS[3]) + 1
  redis.call('EXPIRE', KEYS[3], ARGV[5])
  if deliveries > tonumber(ARGV[4]) then return {'poison', deliveries} end
end
local fair = {'', '', '', '', ''}
if ARGV[#ARGV - 1] ~= '' then
  fair = {fair_admit(cjson.decode(ARGV[#ARGV - 1]))}
  if fair[1] == 0 then return {'ok', deliveries, '', '', '', '', '', '', unpack(fair)} end
end
local function mark_running()
  local record = KEYS[#KEYS]
  if ARGV[#ARGV] == '' or redis.call('EXISTS', record) == 0 then return end
  local now = redis.call('TIME')
  redis.call('HSET', record, 'state', 'running', 'worker', ARGV[1], 'attempt', deliveries,
    'link', ARGV[#ARGV], 'since', now[1] .. '.' .. string.format('%06d', tonumber(now[2])))
end
local nq = tonumber(ARGV[6])
if nq < 0 then
  mark_running()
  return {'ok', deliveries, '', '', '', '', '', '', unpack(fair)}
end
local queue = {}
for i = 1, nq do queue[i] = KEYS[4 + i] end
local reserved, wait = acquire(queue, KEYS[4], ARGV, 9, tonumber(ARGV[9]))
if reserved == 1 and wait <= tonumber(ARGV[8]) then mark_running() end
if ARGV[7] ~= '1' or reserved == 0 or wait > tonumber(ARGV[8]) then
  return {'ok', deliveries, reserved, tostring(wait), '', '', '', '', unpack(fair)}
end
local k = 5 + nq
local link = {}
for i = k + 2, #KEYS - 1 do link[#link + 1] = KEYS[i] end
local r, w, allowed, state = gate(link, KEYS[k], KEYS[k + 1], ARGV, 10 + 3 * nq)
return {'ok', deliveries, reserved, tostring(wait), r, tostring(w), allowed, state, unpack(fair)}
