-- Reliable fetch of the most urgent message of a queue (fleet/transport.py). KEYS[1..n-1] the queue's
-- lists, most urgent first (priority 9 .. 1, then the plain list); KEYS[n] the worker's in-flight
-- list. Moves the oldest message of the first list that has one into the in-flight list, as BLMOVE
-- does, and returns it; nil when the queue is empty (the worker then waits on the plain list).
local inflight = KEYS[#KEYS]
for i = 1, #KEYS - 1 do
  local message = redis.call('LMOVE', KEYS[i], inflight, 'RIGHT', 'LEFT')
  if message then
    return message
  end
end
return false
