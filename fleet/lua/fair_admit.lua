-- fair_admit(spec) -> admitted 0|1, own, running, teams, others_waiting
-- A team's fair share of a tier's concurrency (fleet/fairness.py), asked with a job's start. `spec`
-- is JSON: teams (the tier's set of teams); waiting, delayed and running (the prefixes of a team's
-- sorted sets: its waiting jobs scored by when each mark lapses, those of them that cannot start
-- before a time scored by that time, its running jobs scored by when each lease lapses; all in ms,
-- each key prefix .. team); team and job; lease_ms; capacity (the tier's worker slots as
-- configured, 0: unknown); teams_ttl_ms.
--
-- Marks past their time are dropped first, from every team of the tier, and a team with none left
-- leaves the set. `own` counts the team's running jobs, `running` every team's, `teams` the teams with
-- a job running or ready to start (the job's own team always), `others_waiting` the other teams' jobs
-- ready to start (the job itself is counted in none). The job is refused when another team has a job
-- ready to start, its own team already runs its share of what would run with it,
-- ceil((running + 1) / teams), and the tier has no room for it and every such job of the other teams.
-- Otherwise its marks move from waiting to running, leased for lease_ms.
--
-- The per-team keys are built here from their prefixes, not passed as KEYS: fine on one Redis or
-- Valkey (the fleet's state lives on one), not on a Redis Cluster.
local function fair_admit(spec)
  local job, own_team = spec['job'], spec['team']
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local own, running, teams, others = 0, 0, 0, 0
  local seen = false
  for _, team in ipairs(redis.call('SMEMBERS', spec['teams'])) do
    local waiting_key, delayed_key = spec['waiting'] .. team, spec['delayed'] .. team
    local running_key = spec['running'] .. team
    redis.call('ZREMRANGEBYSCORE', waiting_key, '-inf', now)
    redis.call('ZREMRANGEBYSCORE', delayed_key, '-inf', now)
    redis.call('ZREMRANGEBYSCORE', running_key, '-inf', now)
    local marked = redis.call('ZCARD', waiting_key)
    local w = math.max(0, marked - redis.call('ZCARD', delayed_key))
    local r = redis.call('ZCARD', running_key)
    if team == own_team then
      seen = true
      if redis.call('ZSCORE', running_key, job) then r = r - 1 end  -- a redelivery of this job
      own = r
      teams = teams + 1
    elseif w + r > 0 then
      others = others + w
      teams = teams + 1
    elseif marked == 0 then
      redis.call('SREM', spec['teams'], team)
    end
    running = running + r
  end
  if not seen then teams = teams + 1 end
  local share = math.ceil((running + 1) / teams)
  local capacity = tonumber(spec['capacity'])
  local room = capacity > 0 and running + 1 + others <= capacity
  if others > 0 and own >= share and not room then
    return 0, own, running, teams, others
  end
  local own_running = spec['running'] .. own_team
  redis.call('ZREM', spec['waiting'] .. own_team, job)
  redis.call('ZREM', spec['delayed'] .. own_team, job)
  redis.call('ZADD', own_running, now + tonumber(spec['lease_ms']), job)
  if redis.call('PTTL', own_running) < tonumber(spec['lease_ms']) then
    redis.call('PEXPIRE', own_running, spec['lease_ms'])
  end
  redis.call('SADD', spec['teams'], own_team)
  redis.call('PEXPIRE', spec['teams'], spec['teams_ttl_ms'])
  return 1, own, running, teams, others
end
