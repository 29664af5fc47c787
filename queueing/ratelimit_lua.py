"""Lua scripts of the vendor rate limiter; every key a script touches comes in KEYS.

Keys of a vendor ``v`` (the hash tag puts them in one cluster slot):

- ``{vendor:v}:slots``  sorted set, request_id -> start time in ms: the starts of the last window
                        and the slots reserved for waiting jobs (its backlog).
- ``{vendor:v}:pause``  ms timestamp before which nothing may start (a 429, an exhausted quota,
                        an open circuit breaker).
- ``{vendor:v}:quota``  hash {remaining, reset}: what the vendor's own headers allow until reset.

The invariant: any limit + 1 consecutive entries of ``slots`` span at least period + margin / 2,
so no window of the period ever holds more than ``limit`` starts, even when a start is up to
margin / 2 early or late, or the vendor sees it up to margin / 2 later than another.  A job gets
its slot when it is submitted, appended (submission order) at period + margin from the entry
``limit`` places back, and behind other reservations at least (period + margin) / limit after
the last one.  A vendor's ``burst`` (at most ``limit``) caps the slots given at once the same
way: a slot is also burst / limit of period + margin after the entry ``burst`` places back, so
after a burst the slots keep an even pace.  The limit is the guarantee; the burst only spreads
the calls.  When a job comes back for its slot it starts whenever its neighbours allow, a little
early or late; one that comes too late for that is appended again.  The jobs waiting for a
vendor are those holding a slot in the future: the backlog needs no counter that could drift.
Times come from the Redis server, so worker clocks need not agree.
"""

# The Redis server's clock in ms, shared by every script (the circuit breaker's too).
NOW_MS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# Shared by the scripts below: the clock, pausing, and the expected start of a job.
PRELUDE = NOW_MS + """

local function score(reply)
  if reply[2] then return tonumber(reply[2]) end
  return nil
end

-- Pause until until_ms, and move the reserved slots so that the earliest is no sooner
-- (one uniform shift keeps their order and their spacing).
local function pause_until(slots, pause, now, until_ms)
  if until_ms <= now then return end
  local current = tonumber(redis.call('GET', pause) or 0)
  if until_ms > current then
    redis.call('SET', pause, until_ms, 'PX', until_ms - now)
  end
  local first = score(redis.call('ZRANGEBYSCORE', slots, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1))
  if not first or first >= until_ms then return end
  local later = redis.call('ZRANGEBYSCORE', slots, '(' .. now, '+inf', 'WITHSCORES')
  for i = 1, #later, 2 do
    redis.call('ZADD', slots, tonumber(later[i + 1]) + until_ms - first, later[i])
  end
end

-- The earliest time a reservation appended now could start.  Behind other reservations it
-- also keeps an even pace (a window's share apart), so that waiting jobs come due one by one
-- rather than a window's worth at once, which would make the last of them start late.  At most
-- `burst` start at once: burst + 1 consecutive entries span at least burst shares.
local function next_free(slots, pause, now, limit, spacing, burst)
  local share = spacing / limit
  local at = math.max(now, tonumber(redis.call('GET', pause) or 0))
  local last = score(redis.call('ZRANGE', slots, -1, -1, 'WITHSCORES'))
  if last and last > now then at = math.max(at, last + share) end
  local nth = score(redis.call('ZRANGE', slots, -limit, -limit, 'WITHSCORES'))
  if nth and nth + spacing > at then at = nth + spacing end
  if burst < limit then
    local bth = score(redis.call('ZRANGE', slots, -burst, -burst, 'WITHSCORES'))
    if bth and bth + burst * share > at then at = bth + burst * share end
  end
  return at
end

"""

#: Start a job now or keep (or give) it a slot; return 0 (start now) or the ms until its slot.
#: KEYS: slots, pause, quota.  ARGV: limit, period ms, margin ms, burst, request_id.
ACQUIRE = PRELUDE + """
local slots, pause, quota = KEYS[1], KEYS[2], KEYS[3]
local limit, period, margin, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local member = ARGV[5]
local now = now_ms()
local spacing = period + margin
local tolerated = period + margin / 2

-- Does a start at `now` keep every limit + 1 consecutive entries `tolerated` apart?
local function fits()
  local before = redis.call('ZRANGEBYSCORE', slots, '(' .. (now - tolerated), now, 'WITHSCORES')
  local after = redis.call('ZRANGEBYSCORE', slots, '(' .. now, '(' .. (now + tolerated), 'WITHSCORES')
  local times = {}
  for i = 2, #before, 2 do times[#times + 1] = tonumber(before[i]) end
  local mine = #times + 1
  times[mine] = now
  for i = 2, #after, 2 do times[#times + 1] = tonumber(after[i]) end
  for first = math.max(1, mine - limit), mine do
    local last = first + limit
    if last <= #times and times[last] - times[first] < tolerated then return false end
  end
  return true
end

redis.call('ZREMRANGEBYSCORE', slots, '-inf', '(' .. (now - spacing))
-- A start is kept as member@started, and an earlier start of the same job (before a retry or a
-- redelivery) as member@<its time>: acquiring again must never erase a call already made.
local started = member .. '@started'
local previous = redis.call('ZSCORE', slots, started)
if previous then
  redis.call('ZADD', slots, previous, member .. '@' .. previous)
  redis.call('ZREM', slots, started)
end
local own = tonumber(redis.call('ZSCORE', slots, member))
if own then redis.call('ZREM', slots, member) end
local paused = tonumber(redis.call('GET', pause) or 0) > now
if own and not paused and fits() then
  redis.call('ZADD', slots, now, started)  -- early or late, but within what its neighbours allow
elseif own and own > now then
  redis.call('ZADD', slots, own, member)  -- too early: it keeps its slot
  return own - now
else
  local at = next_free(slots, pause, now, limit, spacing, burst)
  if at > now then
    redis.call('ZADD', slots, at, member)
    return at - now
  end
  redis.call('ZADD', slots, now, started)
end

local quota_left = redis.call('HMGET', quota, 'remaining', 'reset')
if quota_left[1] then
  if redis.call('HINCRBY', quota, 'remaining', -1) <= 0 then
    pause_until(slots, pause, now, tonumber(quota_left[2]))
  end
end
return 0
"""

#: Follow the vendor: allow at most `remaining` more starts until `reset_in` ms from now
#: (remaining 0 pauses the vendor).  Two reports of about the same window keep the stricter.
#: KEYS: slots, pause, quota.  ARGV: remaining, reset in ms, same-window tolerance ms.
RESTRICT = PRELUDE + """
local slots, pause, quota = KEYS[1], KEYS[2], KEYS[3]
local remaining, reset_in, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local reset = now + reset_in
if reset_in <= 0 then return 0 end
if remaining <= 0 then
  pause_until(slots, pause, now, reset)
  return 1
end
local known = redis.call('HMGET', quota, 'remaining', 'reset')
if known[1] and math.abs(tonumber(known[2]) - reset) <= tolerance then
  remaining = math.min(remaining, tonumber(known[1]))
  reset = math.max(reset, tonumber(known[2]))
end
redis.call('HSET', quota, 'remaining', remaining, 'reset', reset)
redis.call('PEXPIRE', quota, reset - now)
return 1
"""

#: Reserve a slot for a new job, unless max_backlog jobs already hold one in the future or the
#: job would wait longer than max_wait (the vendor is paused).
#: Return {1, now ms, slot ms}, or {0 (backlog full) or -1 (wait too long), now ms, when to try again ms}.
#: KEYS: slots, pause.  ARGV: limit, period ms, margin ms, burst, max backlog, max wait ms, request_id.
ADMIT = PRELUDE + """
local slots, pause = KEYS[1], KEYS[2]
local limit, period, margin, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local max_backlog, max_wait = tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
local spacing = period + margin
if redis.call('ZCOUNT', slots, '(' .. now, '+inf') >= max_backlog then
  -- a place frees up when the next waiting job starts
  local first = score(redis.call('ZRANGEBYSCORE', slots, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1))
  return {0, now, first or now}
end
local at = next_free(slots, pause, now, limit, spacing, burst)
if at - now > max_wait then return {-1, now, at - max_wait} end
redis.call('ZADD', slots, at, ARGV[7])
return {1, now, at}
"""

#: Return {now ms, expected start ms} of a job: its slot, now if it is due or running, or the
#: next free slot if it holds none (it was queued again and no worker has seen it yet).
#: KEYS: slots, pause.  ARGV: limit, period ms, margin ms, burst, request_id.
OUTLOOK = PRELUDE + """
local limit, period, margin, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local own = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[5]) or redis.call('ZSCORE', KEYS[1], ARGV[5] .. '@started'))
if own then return {now, math.max(own, now)} end
return {now, next_free(KEYS[1], KEYS[2], now, limit, period + margin, burst)}
"""

#: Report a vendor's use of its limit, read-only: {starts in the last period, jobs holding a
#: future slot (the backlog), ms the vendor stays paused, ms until a new job's slot}.
#: KEYS: slots, pause.  ARGV: limit, period ms, margin ms, burst.
USAGE = PRELUDE + """
local limit, period, margin, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local started = redis.call('ZCOUNT', KEYS[1], '(' .. (now - period), now)
local backlog = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
local paused = math.max(tonumber(redis.call('GET', KEYS[2]) or 0) - now, 0)
return {started, backlog, paused, next_free(KEYS[1], KEYS[2], now, limit, period + margin, burst) - now}
"""
