package redis

import goredis "github.com/redis/go-redis/v9"

// cancelledAtRelease is the error recorded for a task whose worker gave it
// back (at shutdown) while a cancel was pending. The text is that of the
// SQLite store.
const cancelledAtRelease = "cancelled; its worker released it before it finished"

// All state lives under one hash tag, {prefix}, so every key of a docket
// deployment maps to one Redis Cluster slot and each script stays atomic.
//
//	{P}:t:<id>      hash: one task (fields below)
//	{P}:r:<queue>   zset: ready tasks; score (9-priority)·2^43 + due ms, ties by id
//	{P}:sched       zset: scheduled tasks (ETA, retry), score run_at ms
//	{P}:lease       zset: running tasks, score lease deadline ms
//	{P}:done        zset: finished tasks, score prune time ms
//	{P}:u:<sha1>    string: the unfinished task holding a unique key
//	{P}:ev          pub/sub: "r <queue>" new work, "d <id>" finished, "c <id>" cancel
//	{P}:w:<queue>   string: set while a worker waits for new work on the queue (60 s expiry)
//	{P}:s:<name>    hash: a schedule's cursor;  {P}:sr:<name> zset: its fired slots
//	{P}:schedules   set: schedule names
//
// Task hash fields: name queue state prio run_at exp att max tmo ttl owner
// cancel uk ukh pay meta res err created started finished tok.

// lib is prepended to every script.
const lib = `
local P = ARGV[1]
local function k(a, b)
	if b then return P .. ':' .. a .. ':' .. b end
	return P .. ':' .. a
end
local function score(prio, runat) return (9 - tonumber(prio)) * 8796093022208 + tonumber(runat) end
local function publish(msg) redis.call('PUBLISH', k('ev'), msg) end
-- wake announces new work on a queue, but only if a worker waits for it:
-- a claim that came back short marks its queues (k('w', queue)), and the
-- first new task there clears the mark and publishes. A busy worker claims
-- again by itself when slots free up, so while every worker is busy an
-- enqueue publishes nothing and no subscriber (every producer and worker
-- process) receives a message it does not need.
local function wake(queue)
	if redis.call('DEL', k('w', queue)) == 1 then publish('r ' .. queue) end
end

-- terminal moves a task to a final state: out of every index, into done,
-- unique key released, waiters told.
local function terminal(id, state, now, err, res)
	local tk = k('t', id)
	local f = redis.call('HMGET', tk, 'queue', 'ttl', 'ukh')
	redis.call('ZREM', k('lease'), id)
	redis.call('ZREM', k('sched'), id)
	redis.call('ZREM', k('r', f[1]), id)
	redis.call('ZADD', k('done'), now + tonumber(f[2]), id)
	if f[3] and f[3] ~= '' and redis.call('GET', k('u', f[3])) == id then
		redis.call('DEL', k('u', f[3]))
	end
	redis.call('HSET', tk, 'state', state, 'owner', '', 'finished', now, 'run_at', now + tonumber(f[2]))
	if err then redis.call('HSET', tk, 'err', err) end
	if res then redis.call('HSET', tk, 'res', res) end
	publish('d ' .. id)
end

local function make_ready(id, queue, prio, due)
	redis.call('ZADD', k('r', queue), score(prio, due), id)
	redis.call('HSET', k('t', id), 'state', 2, 'run_at', due)
end

-- Messages travel as 15 ARGV fields each, starting at base:
-- id name queue prio eta exp max tmo ttl uk ukh pay meta created retexisting
local MF = 15
-- check returns nil if message i can be inserted, else a reply row.
local function check(base, token)
	local id, uk, ukh, retex = ARGV[base], ARGV[base+9], ARGV[base+10], ARGV[base+14]
	local tk = k('t', id)
	if redis.call('EXISTS', tk) == 1 then
		if redis.call('HGET', tk, 'tok') == token then return {'ok', id} end -- a retried call
		if retex == '1' then return {'existing', id} end
		return {'dup', id, '', id}
	end
	if uk ~= '' then
		local holder = redis.call('GET', k('u', ukh))
		if holder then
			if retex == '1' then return {'existing', holder} end
			return {'dup', id, uk, holder}
		end
	end
	return nil
end

local function insert(base, now, token)
	local id, name, queue, prio = ARGV[base], ARGV[base+1], ARGV[base+2], ARGV[base+3]
	local eta, exp, ttl = tonumber(ARGV[base+4]), tonumber(ARGV[base+5]), tonumber(ARGV[base+8])
	local uk, ukh = ARGV[base+9], ARGV[base+10]
	local tk = k('t', id)
	local expired = exp > 0 and exp <= now
	local state, runat = 2, now
	if not expired and eta > now then state, runat = 1, eta end
	redis.call('HSET', tk, 'name', name, 'queue', queue, 'prio', prio, 'exp', exp, 'att', 0,
		'max', ARGV[base+6], 'tmo', ARGV[base+7], 'ttl', ttl, 'owner', '', 'cancel', 0,
		'uk', uk, 'ukh', ukh, 'pay', ARGV[base+11], 'meta', ARGV[base+12], 'created', ARGV[base+13],
		'started', 0, 'finished', 0, 'tok', token, 'state', state, 'run_at', runat)
	if uk ~= '' then redis.call('SET', k('u', ukh), id) end
	if expired then
		terminal(id, 7, now, 'expired before enqueue', nil)
	elseif state == 1 then
		redis.call('ZADD', k('sched'), eta, id)
	else
		redis.call('ZADD', k('r', queue), score(prio, now), id)
	end
	return queue
end
`

// enqueueScript: ARGV = P ncalls, then per call: token now n and n
// messages. Each call is all or nothing on its own: its reply is either
// one 'dup' row or a row per message. Calls are checked and inserted in
// order, so a later call sees an earlier one's tasks.
var enqueueScript = goredis.NewScript(lib + `
local ncalls = tonumber(ARGV[2])
local pos = 3
local replies = {}
local queues = {}
for c = 1, ncalls do
	local token, now, n = ARGV[pos], tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2])
	local base = pos + 3
	local out = {}
	local dup = nil
	for i = 0, n - 1 do
		local row = check(base + i * MF, token)
		if row and row[1] == 'dup' then dup = row break end
		out[i + 1] = row or false
	end
	if dup then
		replies[c] = {dup}
	else
		for i = 0, n - 1 do
			if not out[i + 1] then
				queues[insert(base + i * MF, now, token)] = true
				out[i + 1] = {'ok', ARGV[base + i * MF]}
			end
		end
		replies[c] = out
	end
	pos = base + n * MF
end
for q in pairs(queues) do wake(q) end
return replies
`)

// claimScript: ARGV = P now owner lease_until limit nq q... nx x...
// Promotes due scheduled tasks, rescues lapsed leases, then claims.
var claimScript = goredis.NewScript(lib + `
local now, owner, deadline, limit = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local nq = tonumber(ARGV[6])
local excl = {}
for i = 1, tonumber(ARGV[7 + nq]) do excl[ARGV[7 + nq + i]] = true end
local ended = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', k('sched'), '-inf', now, 'LIMIT', 0, 1000)) do
	local f = redis.call('HMGET', k('t', id), 'queue', 'prio', 'run_at')
	redis.call('ZREM', k('sched'), id)
	make_ready(id, f[1], f[2], tonumber(f[3]))
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', k('lease'), '-inf', now, 'LIMIT', 0, 1000)) do
	local f = redis.call('HMGET', k('t', id), 'att', 'max', 'cancel', 'queue', 'prio')
	redis.call('ZREM', k('lease'), id)
	if f[3] == '1' then
		terminal(id, 6, now, 'cancelled; the worker was lost in attempt ' .. f[1], nil)
		table.insert(ended, {id, 6})
	elseif tonumber(f[1]) >= tonumber(f[2]) then
		terminal(id, 5, now, 'worker lost: lease expired in attempt ' .. f[1], nil)
		table.insert(ended, {id, 5})
	else
		redis.call('HSET', k('t', id), 'owner', '', 'err', 'worker lost: lease expired in attempt ' .. f[1])
		make_ready(id, f[4], f[5], now)
	end
end
local got = {}
for qi = 1, nq do
	local q = ARGV[6 + qi]
	local from = 0
	while #got < limit do
		local ids = redis.call('ZRANGE', k('r', q), from, from + limit - #got - 1)
		if #ids == 0 then break end
		from = from + #ids
		for _, id in ipairs(ids) do
			if #got >= limit then break end
			local tk = k('t', id)
			local f = redis.call('HMGET', tk, 'name', 'exp')
			if not excl[f[1]] then
				local exp = tonumber(f[2])
				if exp > 0 and exp <= now then
					terminal(id, 7, now, 'expired before start', nil)
					table.insert(ended, {id, 7})
					from = from - 1
				else
					redis.call('ZREM', k('r', q), id)
					from = from - 1
					redis.call('ZADD', k('lease'), deadline, id)
					redis.call('HINCRBY', tk, 'att', 1)
					redis.call('HSET', tk, 'state', 3, 'owner', owner, 'run_at', deadline, 'started', now)
					table.insert(got, redis.call('HMGET', tk, 'name', 'queue', 'prio', 'exp', 'att', 'max', 'tmo', 'ttl', 'uk', 'pay', 'meta', 'created', 'err') )
					got[#got][14] = id
				end
			end
		end
	end
end
local nextat = ''
if #got < limit then
	-- This worker will wait for new work on these queues: mark them so
	-- that the next task enqueued there wakes it (see wake).
	-- The mark expires, so queues that are no longer used leave no key;
	-- a waiting worker claims at least once a second and sets it again.
	for qi = 1, nq do redis.call('SET', k('w', ARGV[6 + qi]), 1, 'EX', 60) end
	local a = redis.call('ZRANGE', k('sched'), 0, 0, 'WITHSCORES')
	local b = redis.call('ZRANGE', k('lease'), 0, 0, 'WITHSCORES')
	local m = nil
	if a[2] then m = tonumber(a[2]) end
	if b[2] and (m == nil or tonumber(b[2]) < m) then m = tonumber(b[2]) end
	if m then nextat = tostring(m) end
end
return {got, ended, nextat}
`)

// extendScript: ARGV = P until n (id att owner)... -> per lease: -1 lost, 0/1 cancel flag.
var extendScript = goredis.NewScript(lib + `
local deadline, n = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i = 0, n - 1 do
	local id, att, owner = ARGV[4 + i*3], ARGV[5 + i*3], ARGV[6 + i*3]
	local f = redis.call('HMGET', k('t', id), 'state', 'att', 'owner', 'cancel')
	if f[1] == '3' and f[2] == att and f[3] == owner then
		redis.call('ZADD', k('lease'), 'XX', deadline, id)
		redis.call('HSET', k('t', id), 'run_at', deadline)
		out[i + 1] = tonumber(f[4])
	else
		out[i + 1] = -1
	end
end
return out
`)

// finishScript: ARGV = P now n (id att owner state runat result error)...
// -> per outcome 1 written, 2 written and the task ended cancelled instead
// of being put back (a retry or release while a cancel was pending), 0
// fenced out.
var finishScript = goredis.NewScript(lib + `
local now, n = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
local requeued = {}
for i = 0, n - 1 do
	local b = 4 + i * 7
	local id, att, owner, state, runat = ARGV[b], ARGV[b+1], ARGV[b+2], tonumber(ARGV[b+3]), tonumber(ARGV[b+4])
	local res, err = ARGV[b+5], ARGV[b+6]
	local tk = k('t', id)
	local f = redis.call('HMGET', tk, 'state', 'att', 'owner', 'queue', 'prio', 'cancel')
	if f[1] == '3' and f[2] == att and f[3] == owner then
		out[i + 1] = 1
		if err == '' then err = nil end
		if state >= 4 then
			if res == '' then res = nil end
			if state == 4 then redis.call('HDEL', tk, 'err') end
			terminal(id, state, now, err, res)
		elseif f[6] == '1' then
			-- A cancel is pending: the task ends here, it is not put back.
			out[i + 1] = 2
			if state == 2 then
				redis.call('HINCRBY', tk, 'att', -1)
				terminal(id, 6, now, '` + cancelledAtRelease + `', nil)
			elseif err then
				terminal(id, 6, now, 'cancelled; attempt ' .. att .. ' failed: ' .. err, nil)
			else
				terminal(id, 6, now, 'cancelled; attempt ' .. att .. ' failed', nil)
			end
		else
			redis.call('ZREM', k('lease'), id)
			redis.call('HSET', tk, 'owner', '')
			if err then redis.call('HSET', tk, 'err', err) end
			if state == 2 then
				redis.call('HINCRBY', tk, 'att', -1)
				make_ready(id, f[4], f[5], now)
			elseif runat <= now then
				make_ready(id, f[4], f[5], runat)
			else
				redis.call('HSET', tk, 'state', 1, 'run_at', runat)
				redis.call('ZADD', k('sched'), runat, id)
			end
			requeued[f[4]] = true
		end
	else
		out[i + 1] = 0
	end
end
for q in pairs(requeued) do wake(q) end
return out
`)

// cancelScript: ARGV = P now id -> the state after, or -1 if no such task.
var cancelScript = goredis.NewScript(lib + `
local now, id = tonumber(ARGV[2]), ARGV[3]
local tk = k('t', id)
local st = redis.call('HGET', tk, 'state')
if not st then return -1 end
st = tonumber(st)
if st == 1 or st == 2 then
	terminal(id, 6, now, 'cancelled before start', nil)
	return 6
elseif st == 3 then
	redis.call('HSET', tk, 'cancel', 1)
	publish('c ' .. id)
end
return st
`)

// pruneScript: ARGV = P now limit -> number deleted.
var pruneScript = goredis.NewScript(lib + `
local ids = redis.call('ZRANGEBYSCORE', k('done'), '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
	redis.call('DEL', k('t', id))
	redis.call('ZREM', k('done'), id)
end
return #ids
`)

// scheduleInitScript: ARGV = P now name spec next_at -> nothing.
var scheduleInitScript = goredis.NewScript(lib + `
local sk = k('s', ARGV[3])
if redis.call('HGET', sk, 'spec') ~= ARGV[4] then
	redis.call('HSET', sk, 'spec', ARGV[4], 'next_at', ARGV[5], 'updated', ARGV[2])
	redis.call('SADD', k('schedules'), ARGV[3])
end
return 1
`)

// scheduleFireScript: ARGV = P now name cursor next_at slot skip_if_running token
// [message fields from 9] -> {advanced, fired, task id, skipped reason}.
var scheduleFireScript = goredis.NewScript(lib + `
local now, name, cursor, nextat, slot = tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local skip, token = ARGV[7], ARGV[8]
local sk = k('s', name)
if redis.call('HGET', sk, 'next_at') ~= cursor then return {0, 0, '', ''} end
redis.call('HSET', sk, 'next_at', nextat, 'updated', now)
if slot == '' then return {1, 0, '', ''} end
local last = redis.call('HGET', sk, 'last_task')
if skip == '1' and last and last ~= '' then
	local st = redis.call('HGET', k('t', last), 'state')
	if st and tonumber(st) <= 3 then return {1, 0, '', 'running'} end
end
if redis.call('ZADD', k('sr', name), 'NX', now, slot) == 0 then return {1, 0, '', 'duplicate'} end
redis.call('ZREMRANGEBYSCORE', k('sr', name), '-inf', now - 2592000000)
local row = check(9, token)
if row and row[1] == 'dup' then return redis.error_reply('duplicate task ' .. row[2]) end
local id = ARGV[9]
if not row then
	wake(insert(9, now, token))
else
	id = row[2]
end
redis.call('HSET', sk, 'last_slot', slot, 'last_fired', now, 'last_task', id)
return {1, 1, id, ''}
`)

// claimIDsScript: ARGV = P now owner lease_until n id...
// -> per id: {'lease', fields...} | {'end', state} | {'left', state, run_at} | {'none'}.
// The rules are those of the SQLite store's leaseDecision: a task with a
// cancel recorded is never leased.
var claimIDsScript = goredis.NewScript(lib + `
local now, owner, deadline, n = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local out = {}
for i = 0, n - 1 do
	local id = ARGV[6 + i]
	local tk = k('t', id)
	local f = redis.call('HMGET', tk, 'state', 'run_at', 'exp', 'att', 'max', 'cancel', 'queue')
	if not f[1] then
		out[i + 1] = {'none'}
	else
		local st, runat, exp, att, max = tonumber(f[1]), tonumber(f[2]), tonumber(f[3]), tonumber(f[4]), tonumber(f[5])
		if st >= 4 or (st == 3 and runat > now) or (st == 1 and runat > now) then
			out[i + 1] = {'left', st, runat}
		elseif st == 3 and f[6] == '1' then
			terminal(id, 6, now, 'cancelled; the worker was lost in attempt ' .. att, nil)
			out[i + 1] = {'end', 6}
		elseif f[6] == '1' then
			terminal(id, 6, now, 'cancelled before start', nil)
			out[i + 1] = {'end', 6}
		elseif exp > 0 and exp <= now then
			terminal(id, 7, now, 'expired before start', nil)
			out[i + 1] = {'end', 7}
		elseif att >= max then
			terminal(id, 5, now, 'worker lost: delivered again after attempt ' .. att, nil)
			out[i + 1] = {'end', 5}
		else
			redis.call('ZREM', k('r', f[7]), id)
			redis.call('ZREM', k('sched'), id)
			redis.call('ZADD', k('lease'), deadline, id)
			redis.call('HINCRBY', tk, 'att', 1)
			redis.call('HSET', tk, 'state', 3, 'owner', owner, 'run_at', deadline, 'started', now, 'cancel', 0)
			local row = redis.call('HMGET', tk, 'name', 'queue', 'prio', 'exp', 'att', 'max', 'tmo', 'ttl', 'uk', 'pay', 'meta', 'created', 'err')
			table.insert(row, 1, 'lease')
			out[i + 1] = row
		end
	end
end
return out
`)
