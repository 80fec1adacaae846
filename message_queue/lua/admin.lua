-- The admin commands on one channel of distributed mode, each one atomic step (a mode per command).
-- KEYS: deadlines, seq floor, paused set, msgs, state, config, held (of the channel), then streams: flush:
--       the stream of the state's "st" (see common.lua); resume: every stream its held batches name
-- ARGV: mode ("flush", "clear", "pause", "resume"), tag, by, idle ttl ms (of the channel's state), flush: the
--       "st" value the caller read ("": none; then maxlen 0), [the time now in ms at ARGV[6] (a test's fake
--       clock; see common.lua)]
-- Returns {now, r} (server ms):
--   flush   r 1: the open batch closed now, reason "flushed", and was published (held while paused) exactly as a
--           deadline publishes it; 0: no batch open; -1: "st" changed since the caller read it (read, call again)
--   clear   r: messages discarded: the open batch's (its deadline too) and the held batches'. Published batches
--           belong to the stream's consumers and are not touched
--   pause   r 1: paused now, 0: it was paused already. The settings hash gets paused = "1" and the paused set
--           the tag
--   resume  r: batches published, the held ones in order (as their deadline would have published them, by
--           ``by`` and at the time now), then the flag and the tag are removed; -1: a held batch names a
--           stream not among KEYS (read, call again)
local deadlines, floor, paused, msgs, state, config, held = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6],
  KEYS[7]
local mode, tag, by, idle = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = now_ms(6)
local hold = {config, held}

local function streams()
  local given = {}
  for i = 8, #KEYS do
    given[KEYS[i]] = true
  end
  return given
end

if mode == 'flush' then
  if redis.call('EXISTS', msgs) == 0 then
    return {now, 0}
  end
  local st = redis.call('HGET', state, 'st') or ''
  if st ~= ARGV[5] or not KEYS[8] then
    return {now, -1}
  end
  local maxlen = tonumber(string.match(st, '^(%d+):') or '0')
  local _, seq = flush(hold, msgs, state, floor, deadlines, KEYS[8], maxlen, tag, 'flushed', 0, now, by, nil, nil)
  rest(state, floor, seq, idle)
  return {now, 1}
elseif mode == 'clear' then
  local removed = redis.call('LLEN', msgs)
  redis.call('ZREM', deadlines, tag)
  if removed > 0 then
    redis.call('DEL', msgs)
    redis.call('HDEL', state, 'o', 'l')
  end
  for _, entry in ipairs(redis.call('LRANGE', held, 0, -1)) do
    removed = removed + cmsgpack.unpack(entry)[4]
  end
  redis.call('DEL', held)
  redis.call('HDEL', state, 'hm')
  if redis.call('HGET', config, 'paused') ~= '1' then
    redis.call('SREM', paused, tag)
  end
  if redis.call('EXISTS', state) == 1 then
    rest(state, floor, nil, idle)
  end
  return {now, removed}
elseif mode == 'pause' then
  local was = redis.call('HGET', config, 'paused') == '1'
  redis.call('HSET', config, 'paused', '1')
  redis.call('SADD', paused, tag)
  return {now, was and 0 or 1}
elseif mode == 'resume' then
  local given = streams()
  local entries = {}
  for i, entry in ipairs(redis.call('LRANGE', held, 0, -1)) do
    entries[i] = cmsgpack.unpack(entry)
    if not given[entries[i][1]] then
      return {now, -1}
    end
  end
  local seq = nil
  for _, e in ipairs(entries) do
    -- e: stream, maxlen, reason, count, deadline, channel, payload
    seq = select(2, publish(state, floor, e[1], e[2], tag, e[6], e[3], e[4], e[7], e[5], now, by))
  end
  redis.call('DEL', held)
  redis.call('HDEL', state, 'hm')
  redis.call('HDEL', config, 'paused')
  redis.call('SREM', paused, tag)
  if #entries > 0 and redis.call('HEXISTS', state, 'o') == 0 then
    rest(state, floor, seq, idle)
  end
  return {now, #entries}
end
return redis.error_reply('unknown admin mode: ' .. tostring(mode))
