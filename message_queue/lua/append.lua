-- Append messages to their channels' open batches, in order: for each, slide the channel's deadline, and
-- publish the batch at once when it reaches its cap (or when batching is off for the channel).
-- KEYS: deadlines, stream, node, seq floor, then per message: msgs, state (of its channel)
-- ARGV: maxlen, by, number of the first operation, node key ttl ms, idle ttl ms (of a channel's state),
--       then per message: frame, channel id, tag, settings "<window ms>:<max_wait ms, 0: none>:<cap>:<1|0 batching>",
--       [then the time now in ms (a test's fake clock; see common.lua)]
-- Returns "<now>,<r1>,<r2>,..." (server ms), one r per message: a deadline (> 0): the batch stays open until
-- then (the caller arms a timer for it); -1: the message was published (cap reached, batching off, or no
-- window); -2: this operation was applied before (a replayed pipeline), nothing done.
--
-- Operations of one node are numbered 1, 2, 3, ... and sent in order; the node's key holds the last number
-- applied. A pipeline sent again after a lost connection (the client cannot know whether it ran) is then
-- applied once: the operations already applied are skipped.
--
-- The rules are those of ChannelCore.enqueue followed by ChannelCore.tick at the same moment (a deadline
-- already reached closes the batch at once): an open batch whose deadline has passed closes first (by time),
-- then the message joins the open batch or opens one.
local deadlines, stream, node, floor = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local maxlen, by, first_op, ttl, idle = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local count = (#KEYS - 4) / 2
local now = now_ms(5 + 4 * count + 1)
local out = {int(now)}
local last_op = tonumber(redis.call('GET', node) or '0')

local function append(msgs, state, frame, channel, tag, settings)
  local w, mw, cap, batching = string.match(settings, '^(%d+):(%d+):(%d+):([01])$')
  -- A batch past its deadline (its node's timer has not fired yet, or the node is gone) does not take this
  -- message: it closes now, and the message opens the next batch.
  local due = redis.call('ZSCORE', deadlines, tag)
  if due and tonumber(due) <= now then
    due = tonumber(due)
    flush(msgs, state, floor, deadlines, stream, maxlen, tag, nil, due, now, by, nil, due)
  end
  if batching ~= '1' then
    -- Batching is off: what is open goes first, then the message alone.
    flush(msgs, state, floor, deadlines, stream, maxlen, tag, 'settings', 0, now, by, nil)
    redis.call('HSET', state, 'ch', channel)
    local _, seq = publish(state, floor, stream, maxlen, tag, channel, 'unbatched', 1, batch_frame({frame}, now, now),
                           0, now, by)
    rest(state, floor, seq, idle)
    return -1
  end
  local n = redis.call('RPUSH', msgs, frame)
  local o = nil
  if n > 1 then
    o = parse_open(redis.call('HGET', state, 'o'))
  end
  local opened = false
  if o then
    if o.mw > 0 then
      redis.call('HSET', state, 'l', int(now))
    end
  else
    o = {first = now, w = tonumber(w), mw = tonumber(mw), cap = tonumber(cap)}
    redis.call('HSET', state, 'o', int(now) .. ':' .. w .. ':' .. mw .. ':' .. cap, 'ch', channel)
    opened = true
  end
  if n >= o.cap then
    local _, seq = flush(msgs, state, floor, deadlines, stream, maxlen, tag, 'full', 0, now, by, now)
    rest(state, floor, seq, idle)
    return -1
  end
  local deadline, reason = due_at(o, now)
  if deadline <= now then
    local _, seq = flush(msgs, state, floor, deadlines, stream, maxlen, tag, reason, deadline, now, by, now)
    rest(state, floor, seq, idle)
    return -1
  end
  if opened then
    redis.call('PERSIST', state)  -- no expiry while a batch is open
  end
  redis.call('ZADD', deadlines, int(deadline), tag)
  return deadline
end

for i = 1, count do
  local op = first_op + i - 1
  if op <= last_op then
    out[i + 1] = '-2'
  else
    local a = 5 + (i - 1) * 4
    out[i + 1] = int(append(KEYS[3 + 2 * i], KEYS[4 + 2 * i], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]))
    last_op = op
  end
end
if count > 0 then
  redis.call('SET', node, int(last_op), 'PX', ttl)
end
return table.concat(out, ',')
