-- Append messages to their channels' open batches, in order: for each, slide the channel's deadline, and
-- publish the batch at once when it reaches its cap (or when batching is off for the channel).
-- KEYS: deadlines, stream, node, seq floor, then per message: msgs, state, ids, config, held (of its channel)
-- ARGV: maxlen, by, number of the first operation, node key ttl ms, idle ttl ms (of a channel's state), most
--       message ids a channel remembers, then per message: frame, channel id, tag, settings
--       "<window ms>:<max_wait ms, 0: none>:<cap>:<1|0 batching>:<dedupe_ttl ms, 0: off>:<max_queued>:<overflow
--       r (reject) | o (drop_oldest) | n (drop_newest)>", message id (empty: none), [then the time now in ms (a
--       test's fake clock; see common.lua)]
-- Returns "<now>,<r1>,<r2>,..." (server ms), one r per message: a deadline (> 0): the batch stays open until
-- then (the caller arms a timer for it); -1: the message was published (cap reached, batching off, or no
-- window; or held: the channel is paused, see common.lua); -2: this operation was applied before (a replayed
-- pipeline), nothing done; -3: a duplicate, dropped; -4: refused, the channel holds max_queued messages
-- (overflow reject); -5: dropped for the same reason (overflow drop_newest).
--
-- Operations of one node are numbered 1, 2, 3, ... and sent in order; the node's key holds the last number
-- applied. A pipeline sent again after a lost connection (the client cannot know whether it ran) is then
-- applied once: the operations already applied are skipped.
--
-- The rules are those of ChannelCore.enqueue followed by ChannelCore.tick at the same moment (a deadline
-- already reached closes the batch at once): an open batch whose deadline has passed closes first (by time),
-- then the message is dropped as a duplicate, or joins the open batch or opens one.
--
-- Caps: the messages waiting on a channel are those of its open batch, an overdue one included (ChannelCore
-- counts it until it closes, which comes after the check), and of its held batches while it is paused (the
-- state's "hm"); a published batch belongs to the stream's consumers. A message that finds max_queued of them
-- is refused (counted in the state's "rf"), or the oldest waiting message is dropped (drop_oldest: the first
-- of the oldest held batch, else of the open batch, which keeps its deadline) or the new one (drop_newest),
-- counted in "do".
--
-- Duplicates: the ids key of a channel (sorted set: message id -> when accepted, ms) holds the ids it accepted
-- less than dedupe_ttl ago. A message whose non-empty id is there is dropped and counted in the state's "d";
-- otherwise, once the message is accepted (not refused or dropped by the cap), its id is added (the duplicate
-- check comes first, as in ChannelCore.enqueue), the oldest beyond the bound are forgotten (among ids accepted in the same ms, in
-- the set's member order), and the key expires dedupe_ttl after its newest id.
local deadlines, stream, node, floor = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local maxlen, by, first_op, ttl, idle = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local max_ids = tonumber(ARGV[6])
local count = (#KEYS - 4) / 5
local now = now_ms(6 + 5 * count + 1)
local out = {int(now)}
local last_op = tonumber(redis.call('GET', node) or '0')

-- Count ``field`` of the channel's state; a state hash with no open batch must keep expiring.
local function count_in(state, field)
  redis.call('HINCRBY', state, field, 1)
  if redis.call('HEXISTS', state, 'o') == 0 then
    redis.call('PEXPIRE', state, idle)
  end
end

-- True when ``id`` was accepted on the channel less than ``dedupe`` ms ago (then it is counted as a
-- duplicate). Nothing is checked for an empty id or dedupe 0.
local function duplicate(ids, state, id, dedupe)
  if id == '' or dedupe == 0 then
    return false
  end
  redis.call('ZREMRANGEBYSCORE', ids, '-inf', int(now - dedupe))
  if redis.call('ZSCORE', ids, id) then
    count_in(state, 'd')
    return true
  end
  return false
end

-- Remember ``id`` as accepted now (a message refused or dropped by max_queued is not: a retry of it is
-- accepted); the oldest beyond the bound are forgotten.
local function remember(ids, id, dedupe)
  if id == '' or dedupe == 0 then
    return
  end
  redis.call('ZADD', ids, int(now), id)
  local n = redis.call('ZCARD', ids)
  if n > max_ids then
    redis.call('ZREMRANGEBYRANK', ids, 0, n - max_ids - 1)
  end
  redis.call('PEXPIRE', ids, int(dedupe))
end

local function append(msgs, state, ids, hold, frame, channel, tag, settings, id)
  local w, mw, cap, batching, dedupe, max_queued, overflow =
    string.match(settings, '^(%d+):(%d+):(%d+):([01]):(%d+):(%d+):([ron])$')
  -- A batch past its deadline (its node's timer has not fired yet, or the node is gone) does not take this
  -- message: it closes now (after the cap is checked), and the message opens the next batch.
  local due = redis.call('ZSCORE', deadlines, tag)
  local overdue = due and tonumber(due) <= now
  local v = redis.call('HMGET', state, 'o', 'hm')  -- "o" stays valid below while the open batch is not closed
  local refused = nil
  if duplicate(ids, state, id, tonumber(dedupe)) then
    refused = -3
  else
    local held_n = tonumber(v[2] or '0')
    local open_n = redis.call('LLEN', msgs)
    if open_n + held_n >= tonumber(max_queued) then
      if overflow == 'r' then
        count_in(state, 'rf')
        refused = -4
      else
        count_in(state, 'do')
        if overflow == 'n' then
          refused = -5
        elseif held_n > 0 then  -- the oldest waiting message is the first of the oldest held batch
          drop_held_first(state, hold[2])
        else
          redis.call('LPOP', msgs)
          if open_n == 1 then  -- the open batch is gone: the message opens the next one
            redis.call('HDEL', state, 'o', 'l')
            redis.call('ZREM', deadlines, tag)
            overdue = false
          end
        end
      end
    end
  end
  local closed, closed_seq = false, nil
  if overdue then
    due = tonumber(due)
    closed_seq = select(2, flush(hold, msgs, state, floor, deadlines, stream, maxlen, tag, nil, due, now, by, nil,
                                 due))
    closed = true
  end
  if refused then
    if closed then
      rest(state, floor, closed_seq, idle)  -- nothing is left open
    end
    return refused
  end
  remember(ids, id, tonumber(dedupe))
  if batching ~= '1' then
    -- Batching is off: what is open goes first, then the message alone.
    flush(hold, msgs, state, floor, deadlines, stream, maxlen, tag, 'settings', 0, now, by, nil)
    redis.call('HSET', state, 'ch', channel)
    local _, seq = deliver(hold, state, floor, stream, maxlen, tag, channel, 'unbatched', 1,
                           batch_frame({frame}, now, now), 0, now, by)
    rest(state, floor, seq, idle)
    return -1
  end
  local n = redis.call('RPUSH', msgs, frame)
  local o = nil
  if n > 1 then
    o = parse_open(v[1])  -- the batch was open before this message, unchanged since it was read
  end
  local opened = false
  if o then
    if o.mw > 0 then
      redis.call('HSET', state, 'l', int(now))
    end
  else
    o = {first = now, w = tonumber(w), mw = tonumber(mw), cap = tonumber(cap)}
    redis.call('HSET', state, 'o', int(now) .. ':' .. w .. ':' .. mw .. ':' .. cap, 'ch', channel, 'st',
               int(maxlen) .. ':' .. stream)
    opened = true
  end
  if n >= o.cap then
    local _, seq = flush(hold, msgs, state, floor, deadlines, stream, maxlen, tag, 'full', 0, now, by, now)
    rest(state, floor, seq, idle)
    return -1
  end
  local deadline, reason = due_at(o, now)
  if deadline <= now then
    local _, seq = flush(hold, msgs, state, floor, deadlines, stream, maxlen, tag, reason, deadline, now, by, now)
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
    local a = 6 + (i - 1) * 5
    local k = 4 + (i - 1) * 5
    out[i + 1] = int(append(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], {KEYS[k + 4], KEYS[k + 5]}, ARGV[a + 1],
                            ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]))
    last_op = op
  end
end
if count > 0 then
  redis.call('SET', node, int(last_op), 'PX', ttl)
end
return table.concat(out, ',')
