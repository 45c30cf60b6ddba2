-- KEYS[1] a lock. ARGV[1] its owner. Deletes the lock only if that owner still holds it.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
