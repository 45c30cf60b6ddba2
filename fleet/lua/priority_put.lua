-- A message of priority 1-9 onto its queue (fleet/transport.py). KEYS[1] the list of its priority,
-- KEYS[2..n] every list of the queue, the plain (priority 0) one last. ARGV[1] the message.
-- On an idle queue (every list empty) it goes on the plain list: a worker waits on that list alone
-- (BLMOVE takes from one list), and takes it at once. Behind a backlog it goes on its own list,
-- which workers look at before the plain one.
for i = 2, #KEYS do
  if redis.call('LLEN', KEYS[i]) > 0 then
    return redis.call('LPUSH', KEYS[1], ARGV[1])
  end
end
return redis.call('LPUSH', KEYS[#KEYS], ARGV[1])
