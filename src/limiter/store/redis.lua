-- quotagate's shared bucket in Redis: one atomic script for every operation.
--
-- KEYS[1]  the bucket's state hash: v (format), next (units logged), cap (ring entries),
--          from (oldest sequence number the ring still holds), last (latest instant used),
--          pause (paused until), win (largest window seen), queue ("id,cost,expiry;" ...),
--          held (the holds in flight: "id,cost,since,expiry;" ...)
-- KEYS[2]  the ring: cap entries of 8 bytes (a little-endian double, an instant in
--          microseconds); the unit with sequence number s lives at entry s % cap.
-- ARGV     op (try|peek|queue|try_hold|queue_hold|release|leave|pause|usage), cost,
--          id (decimal, "0" for none), lease_us (a waiter's), extra_us (the pause of
--          pause, the hold's lease of try_hold and queue_hold, how long ago a released
--          hold ended for release), then (calls, window_us) pairs.
--
-- Every instant is in microseconds of the server's TIME, clamped so that a bucket's clock
-- never goes back. Integers stay below 2^53, so Lua's doubles hold them exactly.
-- Units held in flight count as the newest units, logged now; a hold is logged at its end
-- (release) or at its lease's end, never before the newest unit logged (the ring stays in
-- order). Format 1 (no holds) is read as format 2 without holds.
-- Replies: poll {1} admitted or {0, wait_us}; usage {paused_us, queued, in_flight,
-- used...}; else {1}.

local S, R = KEYS[1], KEYS[2]
local FORMAT = 2
local W = 8
local INITIAL_RING = 64
local MARGIN_US = 1000000

local function corrupt(what)
  error({err = 'QGCORRUPT bucket ' .. S .. ': ' .. what})
end

local function num(v, what)
  local n = tonumber(v)
  if n == nil or n < 0 or n ~= math.floor(n) then
    corrupt('bad ' .. what)
  end
  return n
end

local function int(n)
  return string.format('%.0f', n)
end

local op = ARGV[1]
local cost = num(ARGV[2], 'cost')
local id = ARGV[3]
local lease = num(ARGV[4], 'lease')
local extra = num(ARGV[5], 'extra')
local wins = {}
local maxwin = 0
for i = 6, #ARGV - 1, 2 do
  local w = {calls = num(ARGV[i], 'calls'), win = num(ARGV[i + 1], 'window')}
  wins[#wins + 1] = w
  if w.win > maxwin then maxwin = w.win end
end

-- The state.
local h = redis.call('HMGET', S, 'v', 'next', 'cap', 'from', 'last', 'pause', 'win', 'queue',
  'held')
local nxt, cap, from, last, paused, win, qtext, htext = 0, 0, 0, 0, 0, 0, '', ''
if h[1] then
  if tonumber(h[1]) ~= FORMAT and tonumber(h[1]) ~= 1 then
    corrupt('format ' .. tostring(h[1]) .. ' is not ' .. FORMAT)
  end
  nxt = num(h[2], 'next')
  cap = num(h[3], 'cap')
  from = num(h[4], 'from')
  last = num(h[5], 'last')
  paused = num(h[6], 'pause')
  win = num(h[7], 'win')
  qtext = h[8] or ''
  htext = h[9] or ''
  if redis.call('STRLEN', R) ~= cap * W then
    corrupt('the ring does not hold ' .. cap .. ' entries')
  end
end

local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000000 + tonumber(tm[2])
if now < last then now = last end

local queue = {}
for qid, qcost, qexp in string.gmatch(qtext, '(%d+),(%d+),(%d+);') do
  queue[#queue + 1] = {id = qid, cost = tonumber(qcost), exp = tonumber(qexp)}
end

local holds = {}
for hid, hcost, hsince, hexp in string.gmatch(htext, '(%d+),(%d+),(%d+),(%d+);') do
  holds[#holds + 1] = {id = hid, cost = tonumber(hcost), since = tonumber(hsince),
    exp = tonumber(hexp)}
end

local in_flight = 0
for _, e in ipairs(holds) do in_flight = in_flight + e.cost end

local dirty = false

-- Leases that have expired are dropped first.
do
  local live = {}
  for _, e in ipairs(queue) do
    if e.exp > now then live[#live + 1] = e end
  end
  if #live ~= #queue then
    queue = live
    dirty = true
  end
end

-- The ring.
local function held_from()
  return math.max(from, nxt - cap)
end

local function unit(seq)
  local i = (seq % cap) * W
  local s = redis.call('GETRANGE', R, i, i + W - 1)
  if #s ~= W then corrupt('a short ring entry') end
  return (struct.unpack('<d', s))
end

-- The k-th newest unit (k >= 1) of the log followed by the simulated admissions `sim`
-- ({instant, units} oldest first), or nil when there is none.
local function kth_newest(k, sim)
  for j = #sim, 1, -1 do
    local e = sim[j]
    if k <= e[2] then return e[1] end
    k = k - e[2]
  end
  if k > nxt - held_from() then return nil end
  return unit(nxt - k)
end

-- The earliest instant at or after t at which c units fit every window.
local function earliest(t, c, sim)
  local at = t
  for _, w in ipairs(wins) do
    local k = w.calls - c + 1
    if k >= 1 then
      local u = kth_newest(k, sim)
      if u and u + w.win > at then at = u + w.win end
    end
  end
  return at
end

-- The due instant of a call of cost c behind the first n queued calls.
-- Units in flight count as logged now, after every logged unit (a lower bound).
local function due_behind(n, c)
  local sim = {}
  if in_flight > 0 then sim[1] = {now, in_flight} end
  local t = math.max(now, paused)
  for i = 1, n do
    local qc = queue[i].cost
    t = earliest(t, qc, sim)
    sim[#sim + 1] = {t, qc}
  end
  return earliest(t, c, sim)
end

local function relayout(newcap)
  local lo = held_from()
  local old = ''
  if cap > 0 then old = redis.call('GET', R) or '' end
  redis.call('SET', R, string.rep('\0', newcap * W))
  local s = lo
  while s < nxt do
    local oi = s % cap
    local ni = s % newcap
    local n = math.min(nxt - s, cap - oi, newcap - ni)
    redis.call('SETRANGE', R, ni * W, string.sub(old, oi * W + 1, (oi + n) * W))
    s = s + n
  end
  cap = newcap
  from = lo
end

-- Grows the ring (doubling) until logging c more units drops no unit that some window
-- with more calls than the ring holds still counts.
local function make_room(c)
  if cap == 0 then relayout(INITIAL_RING) end
  while true do
    local grow = false
    for _, w in ipairs(wins) do
      if w.calls > cap then
        local k = cap - c + 1
        if k < 1 then
          grow = true
        else
          local u = kth_newest(k, {})
          if u and u + w.win > now then grow = true end
        end
      end
    end
    if not grow then return end
    relayout(cap * 2)
  end
end

-- Logs c units at instant t, or at the newest logged unit's instant if that is later.
local function log_at(t, c)
  if c == 0 then return end
  make_room(c)
  if nxt > held_from() then
    local newest = unit(nxt - 1)
    if newest > t then t = newest end
  end
  local packed = struct.pack('<d', t)
  local s = nxt
  local stop = nxt + c
  while s < stop do
    local i = s % cap
    local n = math.min(stop - s, cap - i)
    redis.call('SETRANGE', R, i * W, string.rep(packed, n))
    s = s + n
  end
  nxt = stop
  dirty = true
end

local function log(c)
  log_at(now, c)
end

-- Holds whose lease ran out are logged at the lease's end, oldest first (by an operation
-- that brings the windows, which decide how far the ring must grow).
if #wins > 0 then
  local live, expired = {}, {}
  for _, e in ipairs(holds) do
    if e.exp > now then live[#live + 1] = e else expired[#expired + 1] = e end
  end
  if #expired > 0 then
    table.sort(expired, function(a, b) return a.exp < b.exp end)
    holds = live
    for _, e in ipairs(expired) do
      in_flight = in_flight - e.cost
      log_at(e.exp, e.cost)
    end
  end
end

-- Ends hold hid: its units are logged ago_us before now, no earlier than its admission.
local function release(hid, ago_us)
  for i, e in ipairs(holds) do
    if e.id == hid then
      table.remove(holds, i)
      in_flight = in_flight - e.cost
      log_at(math.max(now - ago_us, e.since), e.cost)
      return
    end
  end
end

-- Admits c units now: logged, or held under hid with a lease of hold_us.
local function admit(c, hid, hold_us)
  if hid == nil then
    log(c)
    return
  end
  release(hid, 0)
  holds[#holds + 1] = {id = hid, cost = c, since = now, exp = now + hold_us}
  in_flight = in_flight + c
  dirty = true
end

local function save()
  if not dirty then return end
  if maxwin > win then win = maxwin end
  local parts = {}
  local keep = win
  for i, e in ipairs(queue) do
    parts[i] = e.id .. ',' .. int(e.cost) .. ',' .. int(e.exp) .. ';'
    if e.exp - now > keep then keep = e.exp - now end
  end
  if paused - now > keep then keep = paused - now end
  local hparts = {}
  for i, e in ipairs(holds) do
    hparts[i] = e.id .. ',' .. int(e.cost) .. ',' .. int(e.since) .. ',' .. int(e.exp) .. ';'
    if e.exp - now + win > keep then keep = e.exp - now + win end
  end
  redis.call('HSET', S, 'v', FORMAT, 'next', int(nxt), 'cap', int(cap), 'from', int(from),
    'last', int(now), 'pause', int(paused), 'win', int(win), 'queue', table.concat(parts),
    'held', table.concat(hparts))
  local ttl = int(math.ceil((keep + lease + MARGIN_US) / 1000))
  redis.call('PEXPIRE', S, ttl)
  if cap > 0 then redis.call('PEXPIRE', R, ttl) end
end

local reply
local hold_id = nil
if op == 'try_hold' or op == 'queue_hold' then hold_id = id end
if op == 'try' or op == 'peek' or op == 'try_hold' then
  local due = due_behind(#queue, cost)
  if due <= now then
    if op ~= 'peek' then
      admit(cost, hold_id, extra)
      reply = {1}
    else
      reply = {0, 0}
    end
  else
    reply = {0, due - now}
  end
elseif op == 'queue' or op == 'queue_hold' then
  local at = nil
  for i, e in ipairs(queue) do
    if e.id == id then at = i break end
  end
  if at == nil then
    queue[#queue + 1] = {id = id, cost = cost, exp = 0}
    at = #queue
  end
  queue[at].cost = cost
  local due = due_behind(at - 1, cost)
  if due <= now then
    table.remove(queue, at)
    admit(cost, hold_id, extra)
    reply = {1}
  else
    queue[at].exp = due + lease
    reply = {0, due - now}
  end
  dirty = true
elseif op == 'leave' then
  for i, e in ipairs(queue) do
    if e.id == id then
      table.remove(queue, i)
      dirty = true
      break
    end
  end
  reply = {1}
elseif op == 'release' then
  release(id, extra)
  reply = {1}
elseif op == 'pause' then
  if now + extra > paused then
    paused = now + extra
    dirty = true
  end
  reply = {1}
elseif op == 'usage' then
  reply = {math.max(paused - now, 0), #queue, in_flight}
  for _, w in ipairs(wins) do
    -- Instants only grow along the log: find the oldest held unit inside the window.
    local lo, hi = held_from(), nxt
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if unit(mid) + w.win > now then hi = mid else lo = mid + 1 end
    end
    reply[#reply + 1] = nxt - lo
  end
else
  error({err = 'ERR quotagate: unknown operation ' .. tostring(op)})
end

save()
return reply
