-- An acked message's unacked record goes (kombu's QoS.ack: ZREM and HDEL, in one step). KEYS: kombu's
-- unacked index (zset), kombu's unacked hash. ARGV: the delivery tag.
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('HDEL', KEYS[2], ARGV[1])
