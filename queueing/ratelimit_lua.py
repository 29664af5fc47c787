"""Lua scripts of the vendor rate limiter; every key a script touches comes in KEYS.

Keys of a vendor ``v``, all with the hash tag ``{vendor:v}`` (one cluster slot), in KEYS order:

1. ``state``     hash {offset, last, jitter, jitter_at, late, vtime, pause, remaining, reset,
                 held}: how far pauses have pushed the waiting jobs back, the latest planned
                 start, the worst start-to-call delay seen lately and when, how late jobs come
                 for their start on average, the vendor's virtual time (below), the ms timestamp
                 before which nothing may start (a 429, an exhausted quota, an open circuit
                 breaker), how many starts the vendor's own quota headers allow until ``reset``,
                 and how long a started job holds its max_in_flight lease on average.  One hash,
                 read once by every script.
2. ``waiting``   sorted set, request_id -> planned start: the jobs waiting for their time (the
                 backlog), and for a while those whose time came but were not let start yet;
                 ``request_id@withdrawn`` marks a job that will not start (cancelled) until
                 its message comes, scored in the past so that it counts in no backlog.
3. ``inflight``  sorted set, request_id -> lease expiry: with max_in_flight, the calls in progress
                 and the dispatched jobs that will start next (each holds its lease from dispatch).
4. ``started:P`` one *window* per limit of period P ms: the starts of the last period.
5. ``planned:P`` one window per limit: the planned starts of the period before the latest.
6. ``planned:burst``  the window that keeps bursts to ``burst`` at once.
7. ``fair``      sorted set, request_id -> start tag: the jobs waiting for their turn (below).
8. ``fair:jobs``    hash, request_id -> "client weight ms": its client, the client's weight and
                    when it joined the line (the gate counts max_wait_s from then).
9. ``fair:clients`` hash, client -> how many of its jobs wait for their turn.
10. ``fair:finish``  hash, client -> the finish tag of its latest job.
11. ``breaker``   the vendor's circuit breaker (queueing/breaker.py), which a start must also pass.

A window is a list whose first element is how many starts it holds, then one entry
``"bucket count latest"`` per bucket of starts (a thousandth of the period), oldest first.  A
bucket leaves the window once its latest start is a whole span ago, so the count is exact or a
little high, never low; a window never holds more than about a thousand entries, whatever the
limit, and a call touches only its ends.  The span of a limit is its period plus the margin:
starts a span apart reach the vendor a period apart even if the first one's call left up to a
margin later than the second's, and the margin is the worst start-to-call delay the workers
reported lately (``jitter``, halving every 30 s), at least the configured floor.  Planned starts
are further apart by twice how late jobs come for their start on average (``late``): one that
comes that late seldom finds its window full.  One that finds it full all the same is planned
again for when it frees, so that its wait does not count as coming late.

Clients share a vendor's starts by start-time fair queuing.  A new job waits in line (``fair``)
with the start tag max(the vendor's virtual time ``vtime``, its client's finish tag); its
client's finish tag becomes that plus 1 / the client's weight.  Jobs are *dispatched* lowest tag
first, and the vendor's virtual time becomes the tag of the job dispatched last: a client that
arrives later starts level with the others instead of behind their backlog, and clients with
jobs in line get starts in proportion to their weights.  A job is dispatched once it would start
within the dispatch horizon, or when no dispatched job is left whose ACQUIRE would pass the turn
on.  Whichever script finds room dispatches: admission for a job first in line, a worker's
ACQUIRE after each start, RELEASE, FORGET and WITHDRAW as a lease or a dispatched job leaves, and
the clock's DISPATCH every second, for a turn nobody passed on.

Dispatch plans the job's start: the earliest time every planned window has room, behind the
latest planned start by the slowest limit's share of its span (waiting jobs come due one by
one), and then at most ``burst`` at once.  The job's message waits in the broker's delay set
until then.  A worker starts a job only when its time has come, the vendor is
not paused, a lease is free (max_in_flight), every started window has room and the circuit
breaker lets a call through (one script a start, the breaker's check included): the started
windows are the guarantee, the planned ones only keep jobs from waking up to be refused.  Planned
times are kept ``offset`` ms early: a pause pushes every waiting job back at once by raising the
offset.  Times come from the Redis server, so worker clocks need not agree.
"""

# The Redis server's clock in ms, shared by every script (the circuit breaker's too).
NOW_MS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# Shared by the scripts below.  ARGV: number of limits n, then count and period ms of each,
# burst, margin floor ms, dispatch horizon ms, max in flight (0: no cap), lease ms; the script's
# own arguments follow (from ARGV[arg]).
PRELUDE = NOW_MS + """
local BUCKETS, HALF_LIFE_MS, IN_FLIGHT_RETRY_MS, STALE_MS, LATE_CAP_MS, LATE_WEIGHT = 1000, 30000, 100, 600000, 250, 0.2
local HELD_WEIGHT = 0.2
-- Dispatch plans at most DISPATCH_MOST starts a call.
local DISPATCH_MOST = 100
local state, waiting, inflight = KEYS[1], KEYS[2], KEYS[3]
local n = tonumber(ARGV[1])
local limits = {}
for i = 1, n do
  limits[i] = {count = tonumber(ARGV[2 * i]), period = tonumber(ARGV[2 * i + 1]),
               started = KEYS[3 + i], planned = KEYS[3 + n + i]}
end
local burst, floor, burst_key = tonumber(ARGV[2 * n + 2]), tonumber(ARGV[2 * n + 3]), KEYS[4 + 2 * n]
local horizon, max_in_flight, lease = tonumber(ARGV[2 * n + 4]), tonumber(ARGV[2 * n + 5]), tonumber(ARGV[2 * n + 6])
local fair, fair_jobs, fair_clients, fair_finish = KEYS[5 + 2 * n], KEYS[6 + 2 * n], KEYS[7 + 2 * n], KEYS[8 + 2 * n]
local breaker = KEYS[9 + 2 * n]
local arg = 2 * n + 7
local now = now_ms()
local s = redis.call('HMGET', state, 'offset', 'last', 'jitter', 'jitter_at', 'late', 'vtime', 'pause', 'remaining', 'reset', 'held')
local offset, last = tonumber(s[1] or 0), tonumber(s[2] or 0)
local jitter, jitter_at = tonumber(s[3] or 0), tonumber(s[4] or now)
local late, vtime, paused = tonumber(s[5] or 0), tonumber(s[6] or 0), tonumber(s[7] or 0)
-- The vendor's quota, if its headers announced one whose window has not reset yet.
local quota_left, quota_reset = tonumber(s[8]), tonumber(s[9] or 0)
if quota_reset <= now then quota_left = nil end
local held = tonumber(s[10] or 0)

-- A peak seen at `at`, halving every HALF_LIFE_MS since.
local function decayed(peak, at)
  return peak * 0.5 ^ ((now - at) / HALF_LIFE_MS)
end

-- The margin of the started windows: the start-to-call delays workers report.
local function margin_now()
  return math.max(floor, math.ceil(decayed(jitter, jitter_at)))
end

-- The planned windows' margin adds twice how late jobs come for their start on average: waiting
-- jobs are planned that much further apart, so that one coming late seldom finds the started
-- window full.
local function plan_margin()
  return margin_now() + math.ceil(2 * late)
end

local function entry(text)
  local bucket, count, latest = string.match(text, '(%S+) (%S+) (%S+)')
  return tonumber(bucket), tonumber(count), tonumber(latest)
end

-- Drop the buckets whose starts are all at or before `cutoff`; return the starts left.
local function prune(key, cutoff)
  local head = redis.call('LRANGE', key, 0, 1)  -- the count and the oldest bucket
  local count, oldest, dropped = tonumber(head[1] or 0), head[2], false
  while count > 0 and oldest do
    local _, c, latest = entry(oldest)
    if latest > cutoff then break end
    redis.call('LREM', key, 1, oldest)
    count, dropped = count - c, true
    oldest = redis.call('LINDEX', key, 1)
  end
  if not oldest then count = 0 end
  if dropped then redis.call('LSET', key, 0, count) end
  return count
end

-- Call `visit(count, latest)` for each bucket after `cutoff`, oldest first, until it returns true.
local function each_bucket_after(key, cutoff, visit)
  local from = 1
  while true do
    local entries = redis.call('LRANGE', key, from, from + 31)
    if #entries == 0 then return end
    for _, text in ipairs(entries) do
      local _, c, latest = entry(text)
      if latest > cutoff and visit(c, latest) then return end
    end
    from = from + 32
  end
end

-- The starts after `cutoff` in a window holding `count` in all (read only: a plan may look ahead
-- and not be taken).
local function count_after(key, cutoff, count)
  local before = 0
  each_bucket_after(key, -math.huge, function(c, latest)
    if latest > cutoff then return true end
    before = before + c
  end)
  return count - before
end

-- The time from which a window of `span` holding `count` >= `limit` starts after `cutoff` has
-- room for one more.
local function free_at(key, span, limit, count, cutoff)
  local excess, free = count - limit + 1, 0
  each_bucket_after(key, cutoff, function(c, latest)
    excess = excess - c
    if excess <= 0 then free = latest + span return true end
  end)
  return free
end

-- Count one more start at `at` in a window holding `count`, in buckets `width` wide; keep it
-- `ttl` ms after the bucket's first start (its last comes at most a bucket's width later).
local function add_start(key, at, width, count, ttl)
  local bucket, latest = math.floor(at / width), math.ceil(at)
  if count == 0 then
    redis.call('DEL', key)
    redis.call('RPUSH', key, 1, bucket .. ' 1 ' .. latest)
  else
    local b, c, l = entry(redis.call('LINDEX', key, -1))
    redis.call('LSET', key, 0, count + 1)
    if b == bucket then
      redis.call('LSET', key, -1, bucket .. ' ' .. (c + 1) .. ' ' .. math.max(l, latest))
      return
    end
    redis.call('RPUSH', key, bucket .. ' 1 ' .. latest)
  end
  redis.call('PEXPIRE', key, math.ceil(ttl))
end

-- The planned windows, and the share: how far apart waiting jobs come due (the slowest limit's pace).
local function planned_windows(margin)
  local share, pace, windows = 0, limits[1].count, {}
  for i, limit in ipairs(limits) do
    local span = limit.period + margin
    if span / limit.count > share then share, pace = span / limit.count, limit.count end
    windows[i] = {key = limit.planned, span = span, count = limit.count, width = limit.period / BUCKETS}
  end
  if burst < pace then
    windows[#windows + 1] = {key = burst_key, span = burst * share, count = burst, width = burst * share / BUCKETS}
  end
  return windows, share
end

-- The earliest planned start (kept offset ms early) for a job that joins the line now.
local function plan(margin)
  local windows, share = planned_windows(margin)
  local now_v = now - offset
  local at = math.max(now_v, paused - offset)
  if last > now_v then at = math.max(at, last + share) end
  -- Buckets a span before now matter to no plan any more; `counts` are the starts left in each window.
  local counts, moved = {}, true
  for i, w in ipairs(windows) do counts[i] = prune(w.key, now_v - w.span) end
  while moved do
    moved = false
    for i, w in ipairs(windows) do
      local inside = count_after(w.key, at - w.span, counts[i])
      if inside >= w.count then
        local free = free_at(w.key, w.span, w.count, inside, at - w.span)
        if free > at then at, moved = free, true end
      end
    end
  end
  return at, windows, counts
end

-- Take the planned start `at` for `member`; `...`: more fields of the state to write with it.
local function commit(member, at, windows, counts, ...)
  for i, w in ipairs(windows) do
    add_start(w.key, at, w.width, counts[i], at - (now - offset) + w.span + w.width)
  end
  last = at
  redis.call('HSET', state, 'last', at, ...)
  redis.call('ZADD', waiting, at, member)
end

-- Give `member` its turn: the vendor's virtual time moves on to its tag, it takes its planned
-- start `at` and, with max_in_flight, a lease from now on, so that it waits in line rather than
-- in the delay set while calls are in progress.
local function take_turn(member, tag, at, windows, counts)
  vtime = tag
  commit(member, at, windows, counts, 'vtime', tag)
  if max_in_flight > 0 then redis.call('ZADD', inflight, at + offset + lease, member) end
end

-- Whether no lease is free: every one is held by a call in progress or a dispatched job.
local function leases_taken()
  if max_in_flight == 0 then return false end
  redis.call('ZREMRANGEBYSCORE', inflight, '-inf', now)  -- leases of calls that ended without a word
  return redis.call('ZCARD', inflight) >= max_in_flight
end

-- The planned start of a job dispatched now, if a lease is free and it would start within the
-- horizon or no dispatched job is left whose message will pass the turn on (through its ACQUIRE
-- or the release of its lease); else nil.
local function dispatchable(margin)
  local now_v = now - offset
  if last > now_v + horizon or leases_taken() then return nil end
  local at, windows, counts = plan(margin)
  if at > now_v + horizon and redis.call('ZCARD', waiting) > 0 then return nil end
  return at, windows, counts
end

-- Take a job out of the line; return its client, the client's weight and when it joined the
-- line, or nil if it was not in line.
local function leave_line(member)
  if redis.call('ZREM', fair, member) == 0 then return nil end
  local client, weight, joined = string.match(redis.call('HGET', fair_jobs, member) or '', '(%S+) (%S+) (%S+)')
  redis.call('HDEL', fair_jobs, member)
  if client and redis.call('HINCRBY', fair_clients, client, -1) <= 0 then redis.call('HDEL', fair_clients, client) end
  return client, tonumber(weight), tonumber(joined)
end

-- Dispatch the jobs in line, lowest tag first, while they find a planned start; return
-- {request_id, ms until its start, when it joined the line, ...}.
local function dispatch()
  local out, margin = {}, plan_margin()
  for _ = 1, DISPATCH_MOST do
    local head = redis.call('ZRANGE', fair, 0, 0, 'WITHSCORES')
    if not head[1] then break end
    local at, windows, counts = dispatchable(margin)
    if not at then break end
    local _, _, joined = leave_line(head[1])
    take_turn(head[1], tonumber(head[2]), at, windows, counts)
    out[#out + 1], out[#out + 2], out[#out + 3] = head[1], math.max(math.ceil(at + offset - now), 0), joined or now
  end
  return out
end

-- How far apart jobs in line are expected to start: the slowest limit's share of its span or,
-- with max_in_flight, how long a job holds its lease shared among the leases, whichever is longer.
local function pace()
  local _, share = planned_windows(plan_margin())
  if max_in_flight > 0 then share = math.max(share, held / max_in_flight) end
  return share
end

-- When a job with `ahead` jobs before it in line (itself included) is expected to start.
local function expected_start(ahead)
  return math.ceil(math.max(now, paused, last + offset) + ahead * pace())
end

-- When a job that holds no planned start would start if it joined the line now (read only).
local function estimate_new()
  local at = math.max(now, paused)
  if last + offset > now then at = math.max(at, last + offset + pace()) end
  if leases_taken() then at = math.max(at, now + pace()) end  -- one must come back first
  return math.ceil(at)
end

-- Pause until until_ms, and push the waiting jobs back so that the first is due no sooner
-- (one shift for all keeps their order and their spacing).
local function pause_until(until_ms)
  if until_ms <= now then return end
  if until_ms > paused then
    paused = until_ms
    redis.call('HSET', state, 'pause', until_ms)
  end
  local first = redis.call('ZRANGEBYSCORE', waiting, '(' .. (now - offset), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if first[2] and tonumber(first[2]) + offset < until_ms then
    offset = until_ms - tonumber(first[2])
    redis.call('HSET', state, 'offset', offset)
  end
end

"""

#: May the job start now?  Reply {0 (it started), the ms until it should ask again, or -1 (it was
#: withdrawn: its message has nothing left to do); 1 if the circuit breaker holds it, else 0; the
#: breaker's failures counted (0 unless its check ran); then the jobs dispatched meanwhile as
#: request_id, ms until its start, when it joined the line (ms), ...}.  A job without a planned
#: start (a retry, a job queued again) is planned at once: it had its turn.  The breaker's check
#: comes last, so a job it holds takes no start.
#: ARGV (own): start-to-call delay ms a worker saw (-1: none), request_id, then the breaker's
#: failures that open it (0: no breaker), a probe's ms, the ms jobs wait while a probe is out.
ACQUIRE = PRELUDE + """
local observed, member = tonumber(ARGV[arg]), ARGV[arg + 1]
local opens_at, probe_ms, probe_poll_ms = tonumber(ARGV[arg + 2]), tonumber(ARGV[arg + 3]), tonumber(ARGV[arg + 4])
local breaker_wait, failures = 0, 0
if observed > decayed(jitter, jitter_at) then
  jitter, jitter_at = observed, now
  redis.call('HSET', state, 'jitter', jitter, 'jitter_at', now)
end
local margin = margin_now()

local function acquire()
  local own = redis.call('ZSCORE', waiting, member)
  if not own and redis.call('ZREM', waiting, member .. '@withdrawn') == 1 then return -1 end
  if own then
    own = tonumber(own) + offset
    if own > now then return math.ceil(own - now) end  -- early: it keeps its place
    -- Later than this, it waited for something else (a pause, a lease, a full window).
    if now - own <= LATE_CAP_MS then
      late = late + LATE_WEIGHT * (now - own - late)
      redis.call('HSET', state, 'late', late)
    end
  else
    leave_line(member)  -- a message came for a job still in line (queued again by an operator)
    local at, windows, counts = plan(plan_margin())
    commit(member, at, windows, counts)
    if at + offset > now then return math.ceil(at + offset - now) end
  end

  -- Its time has come: the pause, the leases and every limit's window must let it start.
  local wait = paused - now
  -- A dispatched job holds its lease already; one planned at once needs a free one.
  if leases_taken() and not redis.call('ZSCORE', inflight, member) then wait = math.max(wait, IN_FLIGHT_RETRY_MS) end
  local counts, frees_at = {}, now
  for i, limit in ipairs(limits) do
    local span = limit.period + margin
    counts[i] = prune(limit.started, now - span)
    if counts[i] >= limit.count then
      frees_at = math.max(frees_at, free_at(limit.started, span, limit.count, counts[i], now - span))
    end
  end
  -- A full window moves its planned start to when it frees, so that its next ask measures only how late it comes.
  if frees_at > now then redis.call('ZADD', waiting, math.ceil(frees_at) - offset, member) end
  wait = math.max(wait, frees_at - now)
  if wait > 0 then return math.ceil(wait) end

  -- The circuit breaker: closed, or half-open and this call is the one probe.
  if opens_at > 0 then
    local b = redis.call('HMGET', breaker, 'failures', 'open_until', 'probe_until')
    failures = tonumber(b[1] or 0)
    if failures >= opens_at then
      local open_until = tonumber(b[2] or 0)
      if now < open_until then breaker_wait = open_until - now
      elseif now < tonumber(b[3] or 0) then breaker_wait = probe_poll_ms
      else redis.call('HSET', breaker, 'probe_until', now + probe_ms) end
      if breaker_wait > 0 then return breaker_wait end
    end
  end

  redis.call('ZREM', waiting, member)
  for i, limit in ipairs(limits) do
    local width = limit.period / BUCKETS
    add_start(limit.started, now, width, counts[i], limit.period + margin + width)
  end
  if max_in_flight > 0 then redis.call('ZADD', inflight, now + lease, member) end
  if quota_left and redis.call('HINCRBY', state, 'remaining', -1) <= 0 then
    pause_until(quota_reset)
  end
  return 0
end

local wait = acquire()
local reply = dispatch()
table.insert(reply, 1, wait)
table.insert(reply, 2, breaker_wait > 0 and 1 or 0)
table.insert(reply, 3, failures)
return reply
"""

#: Dispatch the jobs in line that find a planned start: the clock's call, in case no worker's
#: ACQUIRE is left to do it.  Reply as ACQUIRE's dispatched jobs.
DISPATCH = PRELUDE + """
return dispatch()
"""

#: Take a job that will not start out of the line or the backlog; once dispatched, mark it
#: withdrawn so that its message, when it comes, takes no start, and dispatch the jobs in line
#: that find a start (the lease it held may let one).  Reply as ACQUIRE's dispatched jobs.
#: ARGV (own): request_id.
WITHDRAW = PRELUDE + """
local member = ARGV[arg]
local client, weight = leave_line(member)
if client then  -- no message of it was sent
  -- A client whose line empties this way is not set back for the turns it gave up, and keeps
  -- no place ahead of a turn from now either.
  if redis.call('HEXISTS', fair_clients, client) == 0 then
    local finish = tonumber(redis.call('HGET', fair_finish, client) or 0)
    redis.call('HSET', fair_finish, client, math.min(finish, vtime + 1 / weight))
  end
  return {}
end
redis.call('ZREM', waiting, member)
redis.call('ZREM', inflight, member)
redis.call('ZADD', waiting, now - offset - 1, member .. '@withdrawn')
return dispatch()
"""

#: Take a dispatched job whose message will not start (its worker gave up on it) out of the
#: backlog, with its withdrawn mark if it was cancelled, give back the lease it held, and dispatch
#: the jobs in line that find a start.  Reply as ACQUIRE's dispatched jobs.  ARGV (own): request_id.
FORGET = PRELUDE + """
redis.call('ZREM', waiting, ARGV[arg], ARGV[arg] .. '@withdrawn')
redis.call('ZREM', inflight, ARGV[arg])
return dispatch()
"""

#: Give back the lease of a started job whose call ended (or never came), count how long it held
#: it, and dispatch the jobs in line that find a planned start.  Reply as ACQUIRE's dispatched
#: jobs.  ARGV (own): request_id.
RELEASE = PRELUDE + """
local expiry = tonumber(redis.call('ZSCORE', inflight, ARGV[arg]))
if expiry then
  local took = now - (expiry - lease)  -- a start leases from then on
  if took >= 0 then
    held = held == 0 and took or held + HELD_WEIGHT * (took - held)
    redis.call('HSET', state, 'held', held)
  end
  redis.call('ZREM', inflight, ARGV[arg])
end
return dispatch()
"""

#: Follow the vendor: allow at most `remaining` more starts until `reset_in` ms from now
#: (remaining 0 pauses the vendor).  Two reports of about the same window keep the stricter.
#: ARGV (own): remaining, reset in ms, same-window tolerance ms.
RESTRICT = PRELUDE + """
local remaining, reset_in, tolerance = tonumber(ARGV[arg]), tonumber(ARGV[arg + 1]), tonumber(ARGV[arg + 2])
local reset = now + reset_in
if reset_in <= 0 then return 0 end
if remaining <= 0 then
  pause_until(reset)
  return 1
end
if quota_left and math.abs(quota_reset - reset) <= tolerance then
  remaining = math.min(remaining, quota_left)
  reset = math.max(reset, quota_reset)
end
redis.call('HSET', state, 'remaining', remaining, 'reset', reset)
return 1
"""

#: Put new jobs in line, in order, and dispatch each at once if it is first and finds a planned
#: start; unless max_backlog jobs already wait, its client's cap of jobs in line is reached, or it
#: would wait longer than max_wait (the vendor is paused).  One call admits a batch: the prelude's
#: work is done once, and each job sees the line as the jobs before it left it.
#: Return {now ms, then for each job: 1 (dispatched) or 2 (in line), expected start ms; or 0
#: (backlog full), -1 (wait too long) or -2 (client's cap), when to try again ms}.
#: ARGV (own): max backlog, max wait ms, then for each job: request_id, client, its weight, its cap (0: none).
ADMIT = PRELUDE + """
local max_backlog, max_wait = tonumber(ARGV[arg]), tonumber(ARGV[arg + 1])
local now_v = now - offset
redis.call('ZREMRANGEBYSCORE', waiting, '-inf', '(' .. (now_v - STALE_MS))  -- jobs that never came

local function admit(member, client, weight, cap)
  local in_line = redis.call('ZCARD', fair)
  if redis.call('ZCOUNT', waiting, '(' .. now_v, '+inf') + in_line >= max_backlog then
    -- a place frees up when the next planned job starts, or else when the first in line does
    local first = redis.call('ZRANGEBYSCORE', waiting, '(' .. now_v, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    return 0, first[2] and math.ceil(tonumber(first[2]) + offset) or expected_start(1)
  end
  local finish = tonumber(redis.call('HGET', fair_finish, client) or 0)
  if cap > 0 then
    local queued = tonumber(redis.call('HGET', fair_clients, client) or 0)
    if queued >= cap then  -- a place frees up when its first job in line is dispatched
      return -2, expected_start(redis.call('ZCOUNT', fair, '-inf', finish - queued / weight))
    end
  end
  local tag = math.max(vtime, finish)
  local ahead = redis.call('ZCOUNT', fair, '-inf', tag)
  if ahead == 0 then
    local at, windows, counts = dispatchable(plan_margin())
    if at then
      if at - now_v > max_wait then return -1, math.ceil(at + offset - max_wait) end
      redis.call('HSET', fair_finish, client, tag + 1 / weight)
      take_turn(member, tag, at, windows, counts)
      return 1, math.ceil(at + offset)
    end
  end
  local at = expected_start(ahead + 1)
  if at - now > max_wait then return -1, at - max_wait end
  redis.call('ZADD', fair, tag, member)
  redis.call('HSET', fair_jobs, member, client .. ' ' .. weight .. ' ' .. now)
  redis.call('HINCRBY', fair_clients, client, 1)
  redis.call('HSET', fair_finish, client, tag + 1 / weight)
  return 2, at
end

local out = {now}
for i = arg + 2, #ARGV, 4 do
  local outcome, at = admit(ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]))
  out[#out + 1], out[#out + 2] = outcome, at
end
return out
"""

#: Return {now ms, expected start ms} of a job: its planned start (now if that has passed), when
#: its turn is expected if it is in line, or where a new job would go if it holds neither (it
#: started, or it was queued again and no worker has seen it yet).  ARGV (own): request_id.
OUTLOOK = PRELUDE + """
local own = redis.call('ZSCORE', waiting, ARGV[arg])
if own then return {now, math.max(math.ceil(tonumber(own) + offset), now)} end
local rank = redis.call('ZRANK', fair, ARGV[arg])
if rank then return {now, expected_start(rank + 1)} end
return {now, estimate_new()}
"""

#: Report a vendor's use of its limit, read-only: {starts in the last period of the limit
#: numbered ARGV[arg], jobs in line or waiting for a later start (the backlog), ms the vendor stays paused,
#: ms until a new job would start}.
USAGE = PRELUDE + """
local limit = limits[tonumber(ARGV[arg])]
local started = 0
for _, text in ipairs(redis.call('LRANGE', limit.started, 1, -1)) do
  local _, c, latest = entry(text)
  if latest > now - limit.period then started = started + c end
end
local backlog = redis.call('ZCOUNT', waiting, '(' .. (now - offset), '+inf') + redis.call('ZCARD', fair)
return {started, backlog, math.max(paused - now, 0), estimate_new() - now}
"""
