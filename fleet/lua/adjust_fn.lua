-- adjust(bucket, emission_ms, delta): correct a token bucket's reservation by delta units (actual
-- minus estimated usage; may be negative). A bucket that expired is left alone.
local function adjust(bucket, emission, delta)
  local raw = redis.call('GET', bucket)
  if not raw then return 0 end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
  local tat = tonumber(raw) + emission * delta
  if tat < now then tat = now end
  redis.call('SET', bucket, tostring(tat), 'PX', math.ceil(tat - now) + 60000)
  return 1
end

-- pace(bucket, floor_ms): book a token bucket at least floor_ms ahead of now (a provider's
-- rate-limit headers said its quota is nearly spent: fleet.limits.model.pace_floor_ms). A bucket
-- booked further ahead already is left alone.
local function pace(bucket, floor)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
  local want = now + floor
  if tonumber(redis.call('GET', bucket) or '0') >= want then return 0 end
  redis.call('SET', bucket, tostring(want), 'PX', math.ceil(floor) + 60000)
  return 1
end
