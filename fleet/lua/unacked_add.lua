-- A delivered message's unacked record, and its in-flight copy's removal, in one step (reliable fetch,
-- fleet/transport.py). KEYS: kombu's unacked index (zset), kombu's unacked hash, the worker's in-flight
-- list. ARGV: delivery tag, its time (the index's score), the record, the raw message as fetched.
-- Returns what is left in the in-flight list: anything there was lost on its way to this worker.
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('LREM', KEYS[3], 1, ARGV[4])
return redis.call('LLEN', KEYS[3])
