-- Shared by the batching scripts (prepended to each one's source; nothing here comes from input).
--
-- Per channel (keys named by protocol.keys.dist_key, all in the channel's hash slot):
--   msgs  (list)  codec frames of the open batch's messages, oldest first; deleted when the batch closes
--   state (hash)  o: the open batch, "<first ms>:<window ms>:<max_wait ms, 0: none>:<cap>" (its settings are
--                 fixed when it opens); l: time of its last message (ms; kept only when max_wait is set,
--                 otherwise it is the deadline minus the window); ch: the channel id; seq: the number of the
--                 channel's last published batch; b: the floor seq started above when this state was made
--                 (absent: 0), so seq - b batches were published since (ch, seq and b outlive the batch); st:
--                 "<maxlen>:<stream>" of the node that opened the last batch (where an admin flush publishes it);
--                 hm: the messages of the held batches (absent: none; the state does not expire while present);
--                 d, rf, do: counts (see append.lua)
--   held  (list)  batches closed while the channel is paused, in publication order: each a cmsgpack array
--                 [stream, maxlen, reason, count, deadline, channel, MessageBatch frame]
--   config (hash) the channel's settings hash (message_queue:config:<channel>); paused = "1": hold, not publish
-- Shared: the deadline index (sorted set: channel tag -> deadline, ms; it holds exactly the channels with an
-- open batch), the stream, and the seq floor (string: no channel whose state may expire used a higher seq).
-- Pause: while a channel is paused, or still holds batches (its flag was removed by hand), every batch that
-- closes (deadline, cap, max_wait, settings, a flush) is appended to its held list instead of the stream, and
-- enqueue-front (and an event bus's own publish_inbound) put theirs at the head of that list: the order the
-- core's FIFO keeps while its deliveries are paused. Only resume (admin.lua) publishes held batches, oldest
-- first, and clears the flag; clear discards them. Nothing else changes: the channel keeps accepting and
-- batching, and a batch closes at its deadline as usual (so no deadline stays overdue while paused).
-- Every time is Redis server time (TIME) in ms, so the nodes' clocks do not matter. A caller may give the time
-- instead, as one more ARGV after the script's own (each script names its position): a fake clock for tests;
-- nodes never give it.
--
-- Expiry: a state hash has no TTL while its channel holds an open batch (made persistent when one opens);
-- once the batch is published and nothing is left open, rest() gives it the idle TTL, renewed by every later
-- publication. Before that, the floor is raised to the channel's seq, and a state made afresh (a new
-- channel, or one whose state expired) numbers its batches from above the floor: a channel's batch numbers,
-- and so its batch ids "<tag>:<seq>", keep increasing across expiries and are never reused.

-- The time now, in ms: ARGV[i] when the caller gave it, otherwise Redis server time.
local function now_ms(i)
  local given = ARGV[i]
  if given then
    return tonumber(given)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function int(n)
  return string.format('%d', n)
end

local function u32(n)
  return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
                     math.floor(n / 256) % 256, n % 256)
end

-- A codec datetime at ms precision: [seconds, microseconds, UTC offset 0], i.e. an aware UTC datetime.
local function stamp(ms)
  return '\147\206' .. u32(math.floor(ms / 1000)) .. '\206' .. u32((ms % 1000) * 1000) .. '\0'
end

-- A codec MessageBatch frame ["batch", [message frames...], first_at, last_at] around stored message frames.
local function batch_frame(frames, first, last)
  local n = #frames
  local header
  if n < 16 then
    header = string.char(144 + n)
  else
    header = '\220' .. string.char(math.floor(n / 256) % 256, n % 256)
  end
  return '\148\165batch' .. header .. table.concat(frames) .. stamp(first) .. stamp(last)
end

-- Append one finished batch to the stream under the channel's next batch id "<tag>:<seq>"; return the id and
-- the seq. A state without seq starts above the floor.
local function publish(state, floor, stream, maxlen, tag, channel, reason, count, payload, deadline, now, by)
  local seq = redis.call('HINCRBY', state, 'seq', 1)
  if seq == 1 then
    local base = tonumber(redis.call('GET', floor) or '0')
    if base > 0 then
      seq = base + 1
      redis.call('HSET', state, 'seq', int(seq), 'b', int(base))
    end
  end
  local id = tag .. ':' .. int(seq)
  local fields = {'id', id, 'channel', channel, 'seq', int(seq), 'reason', reason, 'count', int(count),
                  'deadline', int(deadline), 'published', int(now), 'by', by, 'batch', payload}
  if maxlen > 0 then
    redis.call('XADD', stream, 'MAXLEN', '~', int(maxlen), '*', unpack(fields))
  else
    redis.call('XADD', stream, '*', unpack(fields))
  end
  return id, seq
end

-- True while the channel's finished batches must be held rather than published (see Pause above).
local function holding(config, held)
  return redis.call('HGET', config, 'paused') == '1' or redis.call('EXISTS', held) == 1
end

-- One held batch, as the held list stores it.
local function held_entry(stream, maxlen, reason, count, deadline, channel, payload)
  return cmsgpack.pack({stream, maxlen, reason, count, deadline, channel, payload})
end

-- Publish one finished batch (as publish()), or append it to the held list while the channel is held;
-- ``hold``: the channel's {config, held} keys. Returns the batch id and seq, or nothing when held.
local function deliver(hold, state, floor, stream, maxlen, tag, channel, reason, count, payload, deadline, now, by)
  if holding(hold[1], hold[2]) then
    redis.call('RPUSH', hold[2], held_entry(stream, maxlen, reason, count, deadline, channel, payload))
    redis.call('HINCRBY', state, 'hm', count)
    return nil, nil
  end
  return publish(state, floor, stream, maxlen, tag, channel, reason, count, payload, deadline, now, by)
end

-- The channel holds no open batch: raise the floor to its seq (nil: read it), then let its state expire after
-- ``ttl`` ms unless something happens on the channel before.
local function rest(state, floor, seq, ttl)
  if seq == nil then
    seq = tonumber(redis.call('HGET', state, 'seq') or '0')
  end
  if seq > tonumber(redis.call('GET', floor) or '0') then
    redis.call('SET', floor, int(seq))
  end
  if redis.call('HEXISTS', state, 'hm') == 1 then
    redis.call('PERSIST', state)  -- it counts the held batches' messages: kept as long as they are
  else
    redis.call('PEXPIRE', state, ttl)
  end
end

-- Drop the first message of the oldest held batch (the head of the held list; the batch goes when it was its
-- only message) and count it out of the state's "hm": what ChannelCore's drop_oldest does to its FIFO's head.
local function drop_held_first(state, held)
  local e = cmsgpack.unpack(redis.call('LINDEX', held, 0))
  -- e: stream, maxlen, reason, count, deadline, channel, MessageBatch frame ["batch", [frames], first, last]
  local payload = e[7]
  local n, start = nil, nil
  local b = string.byte(payload, 8)
  if b >= 144 and b <= 159 then
    n, start = b - 144, 9
  else  -- 0xdc: an array of up to 65535
    n, start = string.byte(payload, 9) * 256 + string.byte(payload, 10), 11
  end
  if n <= 1 then
    redis.call('LPOP', held)
  else
    local after = cmsgpack.unpack_one(payload, start - 1)  -- 0-based offset of the second frame
    local header
    if n - 1 < 16 then
      header = string.char(144 + n - 1)
    else
      header = '\220' .. string.char(math.floor((n - 1) / 256) % 256, (n - 1) % 256)
    end
    e[7] = string.sub(payload, 1, 7) .. header .. string.sub(payload, after + 1)
    e[4] = e[4] - 1
    redis.call('LSET', held, 0, cmsgpack.pack(e))
  end
  if redis.call('HINCRBY', state, 'hm', -1) <= 0 then
    redis.call('HDEL', state, 'hm')
  end
end

-- The open batch "o" of a state hash as numbers: first (ms), window, max_wait (ms), cap; nil if none.
local function parse_open(o)
  if not o then
    return nil
  end
  local first, w, mw, cap = string.match(o, '^(%d+):(%d+):(%d+):(%d+)$')
  return {first = tonumber(first), w = tonumber(w), mw = tonumber(mw), cap = tonumber(cap)}
end

-- When an open batch whose last message came at ``last`` (ms) closes by time, and why: ``window`` ms after its
-- last message, or at its age cap ``max_wait`` when that comes first or at the same moment. The same rule as
-- _OpenBatch.deadline and timed_reason in actors/batching.py (tests/test_rules_differential.py holds the two
-- to it).
local function due_at(o, last)
  local deadline = last + o.w
  if o.mw > 0 and o.first + o.mw <= deadline then
    return o.first + o.mw, 'max_wait'
  end
  return deadline, 'window'
end

-- Close the open batch (if any) and publish it (or hold it: deliver()), in one step: claim and publish cannot
-- be separated. ``hold``: the channel's {config, held} keys. ``reason`` nil: "window", or "max_wait" when the
-- deadline was the batch's age cap. ``last``: the time of its last message when known (nil: stored, or the
-- deadline minus the window). ``score``: its deadline when the caller read it (nil: read here). Returns the
-- batch id and seq, or nil when no batch was open or it was held. The caller then calls rest(): nothing is
-- left open.
local function flush(hold, msgs, state, floor, deadlines, stream, maxlen, tag, reason, deadline, now, by, last,
                     score)
  if score == nil then
    score = redis.call('ZSCORE', deadlines, tag)
    score = score and tonumber(score)
  end
  if score then
    redis.call('ZREM', deadlines, tag)
  end
  local frames = redis.call('LRANGE', msgs, 0, -1)
  if #frames == 0 then
    return nil
  end
  local v = redis.call('HMGET', state, 'o', 'ch', 'l')
  local o = parse_open(v[1]) or {first = now, w = 0, mw = 0, cap = 0}
  if not reason then
    -- the deadline came from due_at: it is the age cap exactly when due_at chose max_wait
    reason = 'window'
    if o.mw > 0 and score == o.first + o.mw then
      reason = 'max_wait'
    end
  end
  if not last then
    if o.mw > 0 and v[3] then
      last = tonumber(v[3])
    elseif score then
      last = score - o.w
    else
      last = now
    end
  end
  if last < o.first then
    last = o.first
  end
  local id, seq = deliver(hold, state, floor, stream, maxlen, tag, v[2] or '', reason, #frames,
                          batch_frame(frames, o.first, last), deadline, now, by)
  redis.call('DEL', msgs)
  redis.call('HDEL', state, 'o', 'l')
  return id, seq
end
