"""Lua scripts of the Redis Streams broker; every key a script touches arrives in KEYS."""

from __future__ import annotations

#: Move the due members of a delay set into the work stream; return {moved, next eta or nil}.
#: KEYS: stream, delay set.  ARGV: now in ms, batch size.
#: A member is "<random token>|<encoded message>"; the token keeps equal payloads distinct.
MOVE_DUE = """
local due = redis.call('ZRANGE', KEYS[2], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local sep = string.find(member, '|', 1, true)
  redis.call('XADD', KEYS[1], '*', 'message', string.sub(member, sep + 1))
  redis.call('ZREM', KEYS[2], member)
end
local head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {#due, head[2] or false}
"""

#: Acknowledge and delete entries in one step, so that none is left acked but still counted.
#: KEYS: stream.  ARGV: group, entry ids...
ACK = """
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
return redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
"""

#: Claim entries idle longer than the visibility timeout; dead-letter those delivered too often.
#: KEYS: stream, dead-letter stream.
#: ARGV: group, consumer, min idle ms, cursor, count, max deliveries, dead maxlen, queue, now ms.
#: Returns {next cursor, live entries, dead entries as {id, message or false, reason}}.
RECOVER = """
local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local live, dead = {}, {}
for _, entry in ipairs(reply[2]) do
  local id, fields = entry[1], entry[2]
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  local deliveries = pending[1] and pending[1][4] or 0
  if deliveries > tonumber(ARGV[6]) then
    local reason = 'delivered ' .. (deliveries - 1) .. ' times without ack (worker crashed or hung)'
    local message = false
    for i = 1, #fields, 2 do
      if fields[i] == 'message' then message = fields[i + 1] end
    end
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'message', message or '', 'reason', reason,
      'queue', ARGV[8], 'entry_id', id, 'dead_at_ms', ARGV[9])
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
    table.insert(dead, {id, message, reason})
  else
    table.insert(live, entry)
  end
end
return {reply[1], live, dead}
"""

#: Reset the idle time of the entries this consumer still owns; return those another consumer owns.
#: KEYS: stream.  ARGV: group, consumer, entry ids...
#: An entry no longer pending was just acked by one of our worker threads: nothing to do.
REFRESH = """
local lost = {}
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  elseif pending[1] then
    table.insert(lost, ARGV[i])
  end
end
return lost
"""

#: Put entries this consumer owns back at the end of the stream as fresh entries; return how many.
#: KEYS: stream.  ARGV: group, consumer, entry ids...
REQUEUE = """
local moved = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    local entry = redis.call('XRANGE', KEYS[1], id, id)
    if entry[1] then
      redis.call('XADD', KEYS[1], '*', unpack(entry[1][2]))
    end
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
    moved = moved + 1
  end
end
return moved
"""

#: Settle a pending entry into the dead-letter stream; return 1, or 0 if it was no longer pending.
#: KEYS: stream, dead-letter stream.  ARGV: group, entry id, dead maxlen, message, reason, queue, now ms.
DEAD_LETTER = """
local settled = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if settled == 1 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'message', ARGV[4], 'reason', ARGV[5],
    'queue', ARGV[6], 'entry_id', ARGV[2], 'dead_at_ms', ARGV[7])
end
return settled
"""

#: Delete consumers with no pending entries, idle longer than ARGV[2] ms (or only the one named ARGV[3]).
#: KEYS: stream.  ARGV: group, min idle ms, consumer name or "".  Returns how many were deleted.
#: Checking and deleting in one script matters: a consumer that read an entry in between would
#: otherwise lose that entry from the pending list for good.
PRUNE_CONSUMERS = """
local removed = 0
for _, row in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #row, 2 do info[row[i]] = row[i + 1] end
  local wanted = ARGV[3] == '' or info['name'] == ARGV[3]
  if wanted and info['pending'] == 0 and info['idle'] >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
"""
