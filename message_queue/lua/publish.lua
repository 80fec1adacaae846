-- Publish a batch made elsewhere (enqueue_front, or an event bus's own publish_inbound) at once, under the
-- channel's next batch id. The channel's open batch, if any, stays open and is published after it.
-- KEYS: state, stream[, node]
-- ARGV: channel id, tag, MessageBatch frame, count, reason, maxlen, by[, operation number, node key ttl ms]
-- Returns {batch id, now}, or {"", now} for an operation applied before (a replayed pipeline; see append).
local now = now_ms()
if KEYS[3] then
  local last = redis.call('GET', KEYS[3])
  if last and tonumber(last) >= tonumber(ARGV[8]) then
    return {'', now}
  end
  redis.call('SET', KEYS[3], ARGV[8], 'PX', ARGV[9])
end
local id = publish(KEYS[1], KEYS[2], tonumber(ARGV[6]), ARGV[2], ARGV[1], ARGV[5], tonumber(ARGV[4]), ARGV[3], 0,
                   now, ARGV[7])
return {id, now}
