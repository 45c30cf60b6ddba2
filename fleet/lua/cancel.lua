-- Mark a job cancelled, in one round trip. Only fleet/producer.py and fleet/aio.py call it.
--
-- KEYS: [1] the job's result, [2] its record. ARGV: [1] now (epoch seconds).
-- Returns 'final' (it has its final result: left as it is), 'unknown' (no such job) or 'marked'
-- (its start script and chain will see the mark; marking twice keeps the first time).
if redis.call('EXISTS', KEYS[1]) == 1 then return 'final' end
if redis.call('EXISTS', KEYS[2]) == 0 then return 'unknown' end
redis.call('HSETNX', KEYS[2], 'cancelled', ARGV[1])
return 'marked'
