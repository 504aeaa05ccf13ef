-- quotagate's shared bucket in Redis: one atomic script for every operation.
--
-- KEYS[1]  the bucket's state hash: v (format), n (ten little-endian doubles: next (units
--          ever logged: the sequence number of the next unit), cap (ring entries), from (the
--          number of the oldest run the ring holds), runs (runs ever written: the number of
--          the next run), base (the sequence number of the oldest unit the ring holds), last
--          (latest instant used), pause (paused until), win and calls (the largest window
--          and calls seen), exp (the instant, on the clock before clamping, up to which both
--          keys live)), queue ("id,cost,expiry;" ...), held (the holds in flight:
--          "id,cost,since,expiry;" ...)
-- KEYS[2]  the ring of runs: cap entries of 16 bytes, two little-endian doubles: the
--          instant (microseconds) of a run of units logged at one instant, and the sequence
--          number just past its last unit; run r lives at entry r % cap.
-- ARGV     op (try|peek|queue|try_hold|queue_hold|release|leave|pause|usage), cost,
--          id (decimal, "0" for none), lease_us (a waiter's), extra_us (the pause of
--          pause, the hold's lease of try_hold and queue_hold, how long ago a released
--          hold ended for release), then (calls, window_us) pairs, then optionally one
--          more argument: now_us, the instant to use instead of the server's TIME. Only
--          tests pass it (to run the script beside the Rust model on the same clock); it is
--          clamped like TIME, so a bucket's clock never goes back.
--
-- Every instant is in microseconds of the server's TIME, clamped so that a bucket's clock
-- never goes back. Integers stay below 2^53, so Lua's doubles hold them exactly.
-- Units held in flight count as the newest units, logged now; a hold is logged at its end
-- (release) or at its lease's end, never before the newest unit logged (the log stays in
-- order). A call of any cost adds or extends one run, so neither memory nor work grows
-- with the cost: the k-th newest unit is found by a search on the runs' sequence numbers
-- (O(log runs) GETRANGEs, one when every run holds one unit). Runs that no window counts
-- any more are dropped: the ring keeps the newest max(calls, 64) units that lie inside the
-- largest window seen, and always the newest 64 (so that a longer new rate still counts
-- them). Runs are dropped when the ring is full; it doubles when that leaves it more than
-- half full (up to max(calls, 64) entries) and halves when it leaves it a quarter full.
-- Formats 1 (no holds) and 2 kept one entry per unit: they are rewritten as runs on first
-- touch. Formats 1 to 3 kept each number in a field of its own (format 3 had no exp):
-- they are read from there and written as format 4.
--
-- Every Redis command a script calls costs about as much as a whole INCR, so a call does
-- only what it changes: the numbers are read and written as one field, packed (parsing
-- and printing ten decimal numbers cost more than the rest of a call's Lua); the
-- newest run is read only when a unit may join it (at an instant not after the bucket's
-- last); the queue and holds are parsed and rebuilt only when there are some; and the
-- keys' time to live is set only when exp falls short of what the bucket needs, then a
-- quarter more than that (at most a minute more), so that a busy bucket sets it about
-- once a minute and an idle one still vanishes. exp follows the clock before clamping,
-- which is the one Redis expires keys by. The ring's length is checked where the ring is
-- read whole; an entry read short is corrupt as well.
--
-- Replies: poll {1} admitted or {0, wait_us}; usage {paused_us, queued, in_flight,
-- used...}; else {1}.

local S, R = KEYS[1], KEYS[2]
local FORMAT = 4
local W = 16
local INITIAL_RING = 64
local KEEP_UNITS = 64
local MARGIN_US = 1000000
local SLACK_US = 60000000
-- The hash's field n: next, cap, from, runs, base, last, pause, win, calls and exp, as
-- little-endian doubles (one read and one write of ten numbers, no text to parse).
local NUMBERS = '<dddddddddd'
local NUMBERS_SIZE = 80
local LUA_MAX = 2 ^ 53

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
local maxwin, maxcalls = 0, 0
for i = 6, #ARGV - 1, 2 do
  local w = {calls = num(ARGV[i], 'calls'), win = num(ARGV[i + 1], 'window')}
  wins[#wins + 1] = w
  if w.win > maxwin then maxwin = w.win end
  if w.calls > maxcalls then maxcalls = w.calls end
end
local given_now = nil
if (#ARGV - 5) % 2 == 1 then given_now = num(ARGV[#ARGV], 'now') end

-- The state.
local h = redis.call('HMGET', S, 'v', 'n', 'queue', 'held')
local nxt, cap, from, last, paused, win, qtext, htext = 0, 0, 0, 0, 0, 0, '', ''
local runs, base, calls, exp = 0, 0, 0, 0
local dirty = false
-- Whether the hash holds format 4 (else it is written whole, once, by save).
local current = false
if h[1] then
  local v = tonumber(h[1])
  if v ~= FORMAT and v ~= 3 and v ~= 2 and v ~= 1 then
    corrupt('format ' .. tostring(h[1]) .. ' is not ' .. FORMAT)
  end
  qtext = h[3] or ''
  htext = h[4] or ''
  if v == FORMAT then
    if type(h[2]) ~= 'string' or #h[2] ~= NUMBERS_SIZE then corrupt('bad numbers') end
    nxt, cap, from, runs, base, last, paused, win, calls, exp = struct.unpack(NUMBERS, h[2])
    for _, x in ipairs({nxt, cap, from, runs, base, last, paused, win, calls, exp}) do
      if not (x >= 0 and x % 1 == 0 and x <= LUA_MAX) then corrupt('bad numbers') end
    end
    current = true
  else
    -- Formats 1 to 3 keep each number in a field of its own.
    local f = redis.call('HMGET', S, 'next', 'cap', 'from', 'last', 'pause', 'win', 'runs',
      'base', 'calls')
    nxt = num(f[1], 'next')
    cap = num(f[2], 'cap')
    from = num(f[3], 'from')
    last = num(f[4], 'last')
    paused = num(f[5], 'pause')
    win = num(f[6], 'win')
    if v == 3 then
      runs = num(f[7], 'runs')
      base = num(f[8], 'base')
      calls = num(f[9], 'calls')
    end
  end
  if v >= 3 then
    if runs < from or runs - from > cap or base > nxt then corrupt('bad runs') end
  else
    -- A ring of one 8-byte instant per unit: its units become runs, oldest first.
    if redis.call('STRLEN', R) ~= cap * 8 then
      corrupt('the ring does not hold ' .. cap .. ' entries')
    end
    -- Written in chunks, so that the script never holds a table entry per unit.
    local old = ''
    if cap > 0 then old = redis.call('GET', R) end
    redis.call('DEL', R)
    local lo = math.max(from, nxt - cap)
    local count, chunk, prev = 0, {}, nil
    local function add(stop)
      chunk[#chunk + 1] = struct.pack('<dd', (struct.unpack('<d', prev)), stop)
      count = count + 1
      if #chunk == 4096 or stop == nxt then
        redis.call('APPEND', R, table.concat(chunk))
        chunk = {}
      end
    end
    for s = lo, nxt - 1 do
      local i = (s % cap) * 8
      local t = string.sub(old, i + 1, i + 8)
      if t ~= prev then
        if prev then add(s) end
        prev = t
      end
    end
    if prev then add(nxt) end
    cap = INITIAL_RING
    while cap < count do cap = cap * 2 end
    redis.call('APPEND', R, string.rep('\0', (cap - count) * W))
    from, runs, base = 0, count, lo
    dirty = true
  end
end
if maxwin > win then win = maxwin end
if maxcalls > calls then calls = maxcalls end

local now = given_now
if now == nil then
  local tm = redis.call('TIME')
  now = tonumber(tm[1]) * 1000000 + tonumber(tm[2])
end
-- The clock before clamping, which the keys' expiry follows.
local raw = now
-- Every run written before this call is at or before last0.
local last0 = last
if now < last then now = last end

local queue = {}
if qtext ~= '' then
  for qid, qcost, qexp in string.gmatch(qtext, '(%d+),(%d+),(%d+);') do
    queue[#queue + 1] = {id = qid, cost = tonumber(qcost), exp = tonumber(qexp)}
  end
end

local holds = {}
if htext ~= '' then
  for hid, hcost, hsince, hexp in string.gmatch(htext, '(%d+),(%d+),(%d+),(%d+);') do
    holds[#holds + 1] = {id = hid, cost = tonumber(hcost), since = tonumber(hsince),
      exp = tonumber(hexp)}
  end
end

local in_flight = 0
for _, e in ipairs(holds) do in_flight = in_flight + e.cost end

-- Waiters whose lease's end is past are dropped first.
if #queue > 0 then
  local live = {}
  for _, e in ipairs(queue) do
    if e.exp >= now then live[#live + 1] = e end
  end
  if #live ~= #queue then
    queue = live
    dirty = true
  end
end

local EMPTY = {}

-- The ring of runs. Entries read by this run of the script are kept in `seen`.
local seen = {}

local function entry(r)
  local e = seen[r]
  if e then return e end
  local i = (r % cap) * W
  local s = redis.call('GETRANGE', R, i, i + W - 1)
  if #s ~= W then corrupt('a short ring entry') end
  local t, stop = struct.unpack('<dd', s)
  e = {t, stop}
  seen[r] = e
  return e
end

local function put(r, t, stop)
  redis.call('SETRANGE', R, (r % cap) * W, struct.pack('<dd', t, stop))
  seen[r] = {t, stop}
end

-- The units the windows may count: the newest max(calls, 64) of those the ring holds,
-- once c more units (0 if nil) are logged.
local function held_from(c)
  return math.max(base, nxt + (c or 0) - math.max(calls, KEEP_UNITS))
end

-- The sequence number of run r's first held unit.
local function start_of(r)
  if r == from then return held_from() end
  return math.max(entry(r - 1)[2], held_from())
end

-- The oldest run at or after lo (from <= lo < runs) for which keep(r) holds, or runs when
-- none does; keep must hold for every run after one for which it holds. Looks at lo, then
-- lo + 1, lo + 3, lo + 7, ... and searches the last gap by halves.
local function first_run(lo, keep)
  local step = 1
  local hi = lo
  while hi < runs and not keep(hi) do
    lo = hi + 1
    hi = hi + step
    step = step * 2
  end
  if hi > runs then hi = runs end
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if keep(mid) then hi = mid else lo = mid + 1 end
  end
  return lo
end

-- The instant of the unit with sequence number s, or nil when the ring holds none.
local function unit(s)
  if s < held_from() or s >= nxt then return nil end
  -- Every run after the one holding s holds at least one unit: it is at runs - (nxt - s)
  -- or later.
  local r = first_run(math.max(from, runs - (nxt - s)), function(r) return entry(r)[2] > s end)
  return entry(r)[1]
end

-- The k-th newest unit (k >= 1) of the log followed by the simulated admissions `sim`
-- ({instant, units} oldest first), or nil when there is none.
local function kth_newest(k, sim)
  for j = #sim, 1, -1 do
    local e = sim[j]
    if k <= e[2] then return e[1] end
    k = k - e[2]
  end
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
  local sim = EMPTY
  if in_flight > 0 or n > 0 then sim = {} end
  if in_flight > 0 then sim[1] = {now, in_flight} end
  local t = math.max(now, paused)
  for i = 1, n do
    local qc = queue[i].cost
    t = earliest(t, qc, sim)
    sim[#sim + 1] = {t, qc}
  end
  return earliest(t, c, sim)
end

-- Rewrites the ring with newcap entries, the runs it holds at the same numbers.
local function relayout(newcap)
  local old = ''
  if cap > 0 then old = redis.call('GET', R) or '' end
  if #old ~= cap * W then corrupt('the ring does not hold ' .. cap .. ' entries') end
  local parts = {}
  local r = from
  while r < runs do
    local oi = r % cap
    local n = math.min(runs - r, cap - oi)
    parts[#parts + 1] = string.sub(old, oi * W + 1, (oi + n) * W)
    r = r + n
  end
  -- Run r goes to entry r % newcap: from from % newcap on, the end wrapping to the start.
  local held = table.concat(parts)
  local first = from % newcap * W
  local size = newcap * W
  if first + #held <= size then
    redis.call('SET', R, string.rep('\0', first) .. held ..
      string.rep('\0', size - first - #held))
  else
    local cut = size - first
    redis.call('SET', R, string.sub(held, cut + 1) .. string.rep('\0', size - #held) ..
      string.sub(held, 1, cut))
  end
  cap = newcap
  seen = {}
  -- SET dropped the ring's time to live: save sets both again.
  exp = 0
end

-- Drops the oldest runs that no window will count once c more units are logged, and
-- halves a ring a quarter full.
local function trim(c)
  if runs == from then return end
  local keep = function(r)
    local e = entry(r)
    return e[2] > held_from(c) and (e[1] + win > now or e[2] > nxt + c - KEEP_UNITS)
  end
  local r = first_run(from, keep)
  if r > from then
    base = entry(r - 1)[2]
    from = r
    dirty = true
  end
  if cap > INITIAL_RING and (runs - from) * 4 < cap then
    local newcap = cap
    while newcap > INITIAL_RING and (runs - from) * 4 < newcap do newcap = newcap / 2 end
    relayout(newcap)
  end
end

-- Logs c units at instant t, or at the newest logged unit's instant if that is later.
local function log_at(t, c)
  if c == 0 then return end
  dirty = true
  -- A run written before this call is at or before last0, so only a unit at or before it
  -- (or one after a run this call wrote) may join the newest run.
  if runs > from and (t <= last0 or seen[runs - 1]) then
    local newest = entry(runs - 1)
    if newest[1] >= t then
      put(runs - 1, newest[1], nxt + c)
      nxt = nxt + c
      return
    end
  end
  -- A full ring drops what no window counts, and doubles when that leaves it more than
  -- half full, so that trimming comes once per cap / 2 runs at most; but never past the
  -- units the windows may count (one run each at worst), where a trim always frees one.
  if cap == 0 then relayout(INITIAL_RING) end
  if runs - from >= cap then
    trim(c)
    local full = (runs - from) * 2 > cap and cap < math.max(calls, KEEP_UNITS)
    if full or runs - from >= cap then relayout(cap * 2) end
  end
  if runs == from then base = nxt end
  nxt = nxt + c
  put(runs, t, nxt)
  runs = runs + 1
end

local function log(c)
  log_at(now, c)
end

-- Holds whose lease ran out are logged at the lease's end, oldest first.
if #holds > 0 then
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
    dirty = true
  end
end

-- Ends hold hid: its units are logged ago_us before now, no earlier than its admission.
local function release(hid, ago_us)
  for i, e in ipairs(holds) do
    if e.id == hid then
      table.remove(holds, i)
      in_flight = in_flight - e.cost
      log_at(math.max(now - ago_us, e.since), e.cost)
      dirty = true
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

-- The queue and the holds as the hash keeps them.
local function queue_text()
  local parts = {}
  for i, e in ipairs(queue) do
    parts[i] = e.id .. ',' .. int(e.cost) .. ',' .. int(e.exp) .. ';'
  end
  return table.concat(parts)
end

local function held_text()
  local parts = {}
  for i, e in ipairs(holds) do
    parts[i] = e.id .. ',' .. int(e.cost) .. ',' .. int(e.since) .. ',' .. int(e.exp) .. ';'
  end
  return table.concat(parts)
end

local function save()
  if not dirty then return end
  local keep = win
  for _, e in ipairs(queue) do
    if e.exp - now > keep then keep = e.exp - now end
  end
  if paused - now > keep then keep = paused - now end
  for _, e in ipairs(holds) do
    if e.exp - now + win > keep then keep = e.exp - now + win end
  end
  -- How long the keys must live from now, in microseconds; when exp falls short, they
  -- get that and a quarter more (at most SLACK_US more).
  local need = keep + lease + MARGIN_US
  local ttl = nil
  if raw + need > exp then
    local more = math.min(math.floor(need / 4), SLACK_US)
    ttl = math.ceil((need + more) / 1000)
    exp = raw + ttl * 1000
  end
  local set = {'HSET', S, 'n', struct.pack(NUMBERS, nxt, cap, from, runs, base, now, paused,
    win, calls, exp)}
  -- Texts are rebuilt only when there is something to write or to clear.
  local q = qtext
  if #queue > 0 or qtext ~= '' then q = queue_text() end
  local hl = htext
  if #holds > 0 or htext ~= '' then hl = held_text() end
  local function add(name, value)
    set[#set + 1] = name
    set[#set + 1] = value
  end
  if not current then
    add('v', FORMAT)
    -- The fields of the older formats' numbers.
    if h[1] then
      redis.call('HDEL', S, 'next', 'cap', 'from', 'last', 'pause', 'win', 'runs', 'base',
        'calls')
    end
  end
  if q ~= qtext or not current then add('queue', q) end
  if hl ~= htext or not current then add('held', hl) end
  redis.call(unpack(set))
  if ttl then
    redis.call('PEXPIRE', S, ttl)
    if cap > 0 then redis.call('PEXPIRE', R, ttl) end
  end
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
    -- Instants only grow along the log: the oldest run inside the window starts the count.
    local used = 0
    if runs > from then
      local r = first_run(from, function(r) return entry(r)[1] + w.win > now end)
      if r < runs then used = nxt - start_of(r) end
    end
    reply[#reply + 1] = used
  end
else
  error({err = 'ERR quotagate: unknown operation ' .. tostring(op)})
end

save()
return reply
