-- Publish a batch made elsewhere (enqueue_front, or an event bus's own publish_inbound) at once, under the
-- channel's next batch id. The channel's open batch, if any, stays open and is published after it. A paused
-- channel (see common.lua) puts it at the head of its held list instead: resume publishes it first.
-- KEYS: state, stream, seq floor, config, held[, node]
-- ARGV: channel id, tag, MessageBatch frame, count, reason, maxlen, by, idle ttl ms (of the channel's state)
--       [, operation number, node key ttl ms], [the time now in ms (a test's fake clock; see common.lua): ARGV[11]
--       with the node key, ARGV[9] without]
-- Returns {batch id, now}, {"", now} for an operation applied before (a replayed pipeline; see append), or
-- {"", now, "held"} when the channel holds the batch.
local node = KEYS[6]
local now = now_ms(node and 11 or 9)
if node then
  local last = redis.call('GET', node)
  if last and tonumber(last) >= tonumber(ARGV[9]) then
    return {'', now}
  end
  redis.call('SET', node, ARGV[9], 'PX', ARGV[10])
end
if holding(KEYS[4], KEYS[5]) then
  redis.call('LPUSH', KEYS[5], held_entry(KEYS[2], tonumber(ARGV[6]), ARGV[5], tonumber(ARGV[4]), 0, ARGV[1],
                                          ARGV[3]))
  redis.call('HINCRBY', KEYS[1], 'hm', tonumber(ARGV[4]))
  redis.call('PERSIST', KEYS[1])  -- kept while it counts held messages (see rest)
  return {'', now, 'held'}
end
local id, seq = publish(KEYS[1], KEYS[3], KEYS[2], tonumber(ARGV[6]), ARGV[2], ARGV[1], ARGV[5], tonumber(ARGV[4]),
                        ARGV[3], 0, now, ARGV[7])
if redis.call('HEXISTS', KEYS[1], 'o') == 0 then
  rest(KEYS[1], KEYS[3], seq, ARGV[8])
end
return {id, now}
