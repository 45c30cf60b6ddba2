-- Reliable fetch of the most urgent message of a queue, recorded as unacked in the same step
-- (fleet/transport.py). KEYS[1..n-3] the queue's lists, most urgent first (priority 9 .. 1, then the
-- plain list); KEYS[n-2] the worker's in-flight list; KEYS[n-1] kombu's unacked index (zset);
-- KEYS[n] kombu's unacked hash. ARGV[1]: the worker's clock (the index's score, as kombu writes it).
--
-- Takes the oldest message of the first list that has one and writes kombu's unacked record of it
-- (the index entry under its delivery tag, and [message, exchange, routing key]), as QoS.append would
-- once the message reached the worker: a message whose reply is lost on the way is unacked, held by no
-- live worker, and the reaper gives it back (fleet/recovery.py). A message that is not kombu's JSON
-- goes to the in-flight list instead, as BLMOVE would put it, for the worker to record as before.
-- Returns nil when the queue is empty (the worker then waits on the plain list), else {message,
-- recorded (1 or 0), the in-flight list's length}: anything in that list was lost on its way.
local n = #KEYS
local inflight, index, unacked = KEYS[n - 2], KEYS[n - 1], KEYS[n]

local function record_of(message)
  local m = cjson.decode(message)
  local properties = m['properties']
  local tag, info = properties['delivery_tag'], properties['delivery_info']
  local exchange, routing_key = info['exchange'], info['routing_key']
  if type(tag) ~= 'string' or type(exchange) ~= 'string' or type(routing_key) ~= 'string' then
    error('not a kombu message')
  end
  return tag, '[' .. message .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(routing_key) .. ']'
end

for i = 1, n - 3 do
  local message = redis.call('RPOP', KEYS[i])
  if message then
    local ok, tag, record = pcall(record_of, message)
    if ok then
      redis.call('ZADD', index, ARGV[1], tag)
      redis.call('HSET', unacked, tag, record)
      return {message, 1, redis.call('LLEN', inflight)}
    end
    redis.call('LPUSH', inflight, message)
    return {message, 0, 0}
  end
end
return false
