-- A tier job's last writes, in one round trip, applied only while the job is still this run's.
-- Needs adjust_fn.lua. Only fleet/middleware/tail.py builds its KEYS and ARGV.
--
-- KEYS: [1] the job's lock, [2] the job's result.
-- ARGV: [1] the lock's owner ('' : a run that holds no lock: apply the writes unguarded),
--       [2] the writes, a JSON array of commands: ["SET", key, value, "EX", ttl], ["PUBLISH", ..],
--           ["XADD", ..], ["HINCRBY", ..], ["EXPIRE", ..], a team's share marks (["ZREM", ..],
--           ["ZADD", ..], ["PEXPIRE", ..], ["SADD", ..]), and the rate-limit corrections
--           ["ADJUST", bucket, emission_ms, delta] and ["PACE", bucket, floor_ms].
--
-- Returns 'ok' (written; the lock, when ours, released) or 'superseded': another worker took the job
-- over (this run's worker was judged dead) or already finished it, so this run writes nothing.
if ARGV[1] ~= '' then
  local holder = redis.call('GET', KEYS[1])
  if holder and holder ~= ARGV[1] then return 'superseded' end
  if not holder and redis.call('EXISTS', KEYS[2]) == 1 then return 'superseded' end
end
for _, op in ipairs(cjson.decode(ARGV[2])) do
  if op[1] == 'ADJUST' then
    adjust(op[2], tonumber(op[3]), tonumber(op[4]))
  elseif op[1] == 'PACE' then
    pace(op[2], tonumber(op[3]))
  else
    redis.call(unpack(op))
  end
end
if ARGV[1] ~= '' then redis.call('DEL', KEYS[1]) end
return 'ok'
