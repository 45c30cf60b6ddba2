-- Reliable fetch of a queue's most urgent messages, recorded as unacked in the same step
-- (fleet/transport.py). KEYS[1..n-3] the queue's lists, most urgent first (priority 9 .. 1, then the
-- plain list); KEYS[n-2] the worker's in-flight list; KEYS[n-1] kombu's unacked index (zset);
-- KEYS[n] kombu's unacked hash. ARGV[1]: the worker's clock (the index's score, as kombu writes it);
-- ARGV[2]: how many messages at most (the worker's free prefetch; 1 when absent).
--
-- Takes the oldest messages of the first lists that have some, most urgent first, and writes
-- kombu's unacked record of each (the index entry under its delivery tag, and [message, exchange,
-- routing key]), as QoS.append would once the message reached the worker: a message whose reply is
-- lost on the way is unacked, held by no live worker, and the reaper gives it back
-- (fleet/recovery.py). A message that is not kombu's JSON goes to the in-flight list instead, as
-- BLMOVE would put it, for the worker to record as before, and ends the take.
-- Returns nil when the queue is empty (the worker then waits on the plain list), else {the in-flight
-- list's length (anything in it was lost on its way; 0 when the last message went there), message,
-- recorded (1 or 0), message, recorded, ...}.
local n = #KEYS
local inflight, index, unacked = KEYS[n - 2], KEYS[n - 1], KEYS[n]
local want = tonumber(ARGV[2]) or 1

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

local out, taken = {0}, 0
for i = 1, n - 3 do
  while taken < want do
    local message = redis.call('RPOP', KEYS[i])
    if not message then
      break
    end
    taken = taken + 1
    local ok, tag, record = pcall(record_of, message)
    if not ok then
      redis.call('LPUSH', inflight, message)
      out[#out + 1] = message
      out[#out + 1] = 0
      return out
    end
    redis.call('ZADD', index, ARGV[1], tag)
    redis.call('HSET', unacked, tag, record)
    out[#out + 1] = message
    out[#out + 1] = 1
  end
end
if taken == 0 then
  return false
end
out[1] = redis.call('LLEN', inflight)
return out
