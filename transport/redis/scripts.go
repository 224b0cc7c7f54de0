package redis

import (
	"strconv"

	goredis "github.com/redis/go-redis/v9"

	"github.com/docketq/docket/transport"
)

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
//	{P}:ev          pub/sub: "r <queue>" new work, "d <id>" finished or deleted, "c <id>" cancel
//	{P}:w:<queue>   string: set while a worker waits for new work on the queue (60 s expiry)
//	{P}:s:<name>    hash: a schedule: spec next_at updated last_slot last_fired
//	                last_task, paused (ms since; absent when not paused),
//	                tmpl (JSON of the transport.Message each slot enqueues);
//	{P}:sr:<name>   zset: its fired slots
//	{P}:schedules   set: schedule names
//
// The operations API (admin.go) adds:
//
//	{P}:queues         set: the queues that have tasks (added at enqueue,
//	                   removed when a prune or delete empties {P}:a:<queue>)
//	{P}:a:<queue>      zset, every score 0: the ids of all the queue's tasks
//	{P}:x:<queue>:<ix> zset, every score 0: the ids of the queue's tasks in
//	                   index set ix: "1" scheduled and never attempted, "r"
//	                   scheduled to retry (attempted), "8" waiting (a
//	                   workflow step), "4".."7" finished, by
//	                   state. Ready and running tasks are in none (their
//	                   'ix' is "0"): the claim and the finish of a task,
//	                   the hot path, then cost no index move but the final
//	                   ZADD. The task's 'ix' field names its set; every
//	                   script that changes a state moves it (index). Counts
//	                   are ZCARDs: ready ones of {P}:r:<queue>, running ones
//	                   what {P}:a:<queue> holds beyond all the others.
//	                   Search walks these sets in id order (ZRANGEBYLEX).
//	{P}:m:<minute ms>  hash: outcomes that minute, fields "<queue>:s"
//	                   (succeeded) and "<queue>:f" (failed or retried);
//	                   expires after 2 h
//	{P}:paused         hash: paused queue → paused since (ms)
//	{P}:workers        hash: worker id → JSON record (wire.EncodeWorker);
//	{P}:wexp           zset: worker id, score expiry ms; expired ones are
//	                   dropped by heartbeats, prunes and reads
//	{P}:layout         string: "2" once the tasks stored before these indexes
//	                   existed have been indexed (upgrade, at New)
//
// Task hash fields: name queue state prio run_at exp att max tmo ttl owner
// cancel uk ukh pay meta res err created started finished tok, and ix (its
// index set), prog (the handler's progress, JSON) and atts (the attempts
// that ended without success: a JSON array of {n, owner, started,
// finished, state, err}, the first and the latest, MaxAttemptRecords in
// all). owner stays after an attempt ends: every fence checks state = 3
// (running) first.

// The scripts' shared Lua: lib is prepended to every script, and each of
// the others to the scripts that use it (Redis runs a script's whole text
// on every call, so a helper a script does not need still costs).
var lib = `
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

-- ixof names the index set of a task in state st after att claims: '0'
-- (none) for a ready or running task, 'r' for a scheduled task that was
-- attempted (it waits to retry), else the state's number.
local function ixof(st, att)
	st = tonumber(st)
	if st == 2 or st == 3 then return '0' end
	if st == 1 and tonumber(att) > 0 then return 'r' end
	return tostring(st)
end

-- index moves task id of queue from index set old (its 'ix' field; false
-- for a task stored before the indexes existed, which joins the queue's
-- set of all tasks now) to ix, where '0' is no set. The caller records ix
-- in the 'ix' field.
local function index(id, queue, old, ix)
	if old == ix then return end
	if not old then
		redis.call('ZADD', k('a', queue), 0, id)
		redis.call('SADD', k('queues'), queue)
	elseif old ~= '0' then
		redis.call('ZREM', k('x', queue .. ':' .. old), id)
	end
	if ix ~= '0' then redis.call('ZADD', k('x', queue .. ':' .. ix), 0, id) end
end

-- append adds the field/value pairs of extra (a flat list, or nil) to
-- fields.
local function append(fields, extra)
	if extra then
		for _, v in ipairs(extra) do fields[#fields + 1] = v end
	end
	return fields
end

-- unqueue removes a task from the one set its state (st, a string) puts
-- it in: sched, its queue's ready set or lease.
local function unqueue(id, queue, st)
	if st == '3' then
		redis.call('ZREM', k('lease'), id)
	elseif st == '2' then
		redis.call('ZREM', k('r', queue), id)
	elseif st == '1' then
		redis.call('ZREM', k('sched'), id)
	end
end

-- flow_end advances the workflow of a step that just ended (below);
-- flow_ends counts the times it ended other steps during this script run.
local flow_end
local flow_ends = 0

-- terminal moves a task to a final state: out of its queue, into done,
-- unique key released, waiters told, its workflow advanced. Its owner
-- stays. extra: more field/value pairs for its hash; pre: its fields
-- queue ttl ukh ix state, when the caller has read them.
local function terminal(id, state, now, err, res, extra, pre)
	local tk = k('t', id)
	local f = pre or redis.call('HMGET', tk, 'queue', 'ttl', 'ukh', 'ix', 'state')
	unqueue(id, f[1], f[5])
	redis.call('ZADD', k('done'), now + tonumber(f[2]), id)
	if f[3] and f[3] ~= '' and redis.call('GET', k('u', f[3])) == id then
		redis.call('DEL', k('u', f[3]))
	end
	local ix = tostring(state)
	index(id, f[1], f[4], ix)
	local fields = {'state', state, 'ix', ix, 'finished', now, 'run_at', now + tonumber(f[2])}
	if err then append(fields, {'err', err}) end
	if res then append(fields, {'res', res}) end
	redis.call('HSET', tk, unpack(append(fields, extra)))
	publish('d ' .. id)
	flow_end(id, state, now)
end

-- make_ready puts a task in its queue's ready set, due at due; old is its
-- index set before; extra: more field/value pairs for its hash.
local function make_ready(id, queue, prio, due, old, extra)
	redis.call('ZADD', k('r', queue), score(prio, due), id)
	local fields = {'state', 2, 'run_at', due}
	if old ~= '0' then
		index(id, queue, old, '0')
		append(fields, {'ix', '0'})
	end
	redis.call('HSET', k('t', id), unpack(append(fields, extra)))
end

-- Workflows (transport.FlowStep). A step's hash holds fl (its workflow:
-- the id of the last step), fn (the step that takes its result), fs (its
-- slot there), fw (the predecessors it waits for; -1 once it ended with
-- its workflow or branch, so that its end advances nothing), fm (how it
-- takes its predecessors' results: 1 array, 2 outcomes, 4 pass-through),
-- fc and fb (the collecting step its result leads to, and the slot).
-- {P}:f:<workflow> is the set of its steps, {P}:fp:<step> the zset of a
-- step's predecessors by slot, {P}:fb:<catch>:<slot> the set of a
-- collecting step's branch. terminal calls flow_end for every task that
-- ends, whatever ended it, so that no script can forget to advance a
-- workflow: the same design as SQLite's triggers.
local function has(mode, bit) return math.floor(tonumber(mode) or 0) / bit % 2 >= 1 end
local function state_name(st)
	return ({['4'] = 'succeeded', ['5'] = 'failed', ['6'] = 'cancelled', ['7'] = 'expired'})[tostring(st)] or 'not ended'
end
local function unfinished(st) return st == '1' or st == '2' or st == '8' end

-- flow_join gives step id, whose predecessors have all ended, its
-- arguments, and makes it ready, or completes a pass-through step.
local function flow_join(id, now)
	local tk = k('t', id)
	local f = redis.call('HMGET', tk, 'fm', 'queue', 'prio', 'ix')
	local preds = redis.call('ZRANGE', k('fp', id), 0, -1)
	local args
	if not has(f[1], 1) then
		args = redis.call('HGET', k('t', preds[1]), 'res') or 'null'
	else
		local parts = {}
		for i, p in ipairs(preds) do
			local g = redis.call('HMGET', k('t', p), 'state', 'res', 'err')
			local r = g[2]
			if not r or r == '' then r = 'null' end
			if not has(f[1], 2) then
				parts[i] = r
			elseif g[1] == '4' then
				parts[i] = '{"result":' .. r .. '}'
			else
				local e = g[3]
				if not e or e == '' then e = 'ended ' .. state_name(g[1]) end
				parts[i] = '{"error":' .. cjson.encode(e) .. '}'
			end
		end
		args = '[' .. table.concat(parts, ',') .. ']'
	end
	redis.call('HSET', tk, 'pay', args)
	if has(f[1], 4) then
		terminal(id, 4, now, '', args)
	else
		make_ready(id, f[2], f[3], now, f[4])
		if has(f[1], 8) then
			-- Carried by a broker: in the outbox until published.
			redis.call('ZADD', k('ob'), now, id)
		end
		wake(f[2])
	end
end

-- stop asks a running step to stop (its worker hears the cancel).
local function stop(id)
	redis.call('HSET', k('t', id), 'cancel', 1)
	publish('c ' .. id)
end

flow_end = function(id, state, now)
	local tk = k('t', id)
	local fl = redis.call('HGET', tk, 'fl') -- one field: most tasks are no step
	if not fl or fl == '' then return end
	if fl == id then
		-- The workflow's end keeps all its steps as long as its last one.
		local until_ = now + (tonumber(redis.call('HGET', tk, 'ttl')) or 0)
		for _, m in ipairs(redis.call('SMEMBERS', k('f', fl))) do
			if m ~= id and redis.call('ZSCORE', k('done'), m) then redis.call('ZADD', k('done'), until_, m) end
		end
	end
	local f = redis.call('HMGET', tk, 'fl', 'fn', 'fw', 'fc', 'fb', 'name', 'err')
	if tonumber(f[3]) < 0 then return end
	local fn, fc, fb = f[2] or '', f[4] or '', f[5] or ''
	-- A success, or any end when the next step collects, counts down.
	if fn ~= '' then
		local g = redis.call('HMGET', k('t', fn), 'state', 'fm')
		if g[1] == '8' and (state == 4 or has(g[2], 2)) then
			if redis.call('HINCRBY', k('t', fn), 'fw', -1) == 0 then flow_join(fn, now) end
			return
		end
	end
	if state == 4 then return end
	local step = 'step ' .. id .. ' (' .. (f[6] or '') .. ') '
	local ended = 'ended ' .. state_name(state)
	local cause = ended
	if f[7] and f[7] ~= '' then cause = ended .. ': ' .. f[7] end
	if fc ~= '' then
		-- Inside a collecting step's branch: its other steps end quietly,
		-- then its last step ends failed and reports to the collecting one.
		if fn == fc then return end
		local e = 'docket: ' .. step .. 'of its branch ' .. cause
		local head = nil
		for _, m in ipairs(redis.call('SMEMBERS', k('fb', fc .. ':' .. fb))) do
			local g = redis.call('HMGET', k('t', m), 'state', 'fn')
			if g[1] == '3' then
				-- Asked to stop; only the branch's last step still reports.
				if g[2] ~= fc then redis.call('HSET', k('t', m), 'fw', -1) end
				stop(m)
			elseif unfinished(g[1]) then
				if g[2] == fc then
					head = m
				else
					redis.call('HSET', k('t', m), 'fw', -1)
					flow_ends = flow_ends + 1
					terminal(m, 5, now, e)
				end
			end
		end
		if head then
			flow_ends = flow_ends + 1
			terminal(head, 5, now, e)
		end
		return
	end
	-- Elsewhere the workflow fails: its last step with the cause, then
	-- the rest is cancelled.
	flow_ends = flow_ends + 1
	if fl ~= id and unfinished(redis.call('HGET', k('t', fl), 'state')) then
		terminal(fl, 5, now, 'docket: workflow ' .. step .. cause)
	end
	for _, m in ipairs(redis.call('SMEMBERS', k('f', fl))) do
		local st = redis.call('HGET', k('t', m), 'state')
		if st == '3' then
			redis.call('HSET', k('t', m), 'fw', -1)
			stop(m)
		elseif unfinished(st) then
			redis.call('HSET', k('t', m), 'fw', -1)
			terminal(m, 6, now, 'docket: cancelled: workflow ' .. step .. ended)
		end
	end
end
`

// libMsg: messages as enqueue arguments (enqueue, schedule fire and
// trigger).
var libMsg = `
-- Messages travel as 22 ARGV fields each, starting at base:
-- id name queue prio eta exp max tmo ttl uk ukh pay meta created retexisting
-- fl fn fs fw fm fc fb (a workflow step's links; fl empty for a plain task)
local MF = 22
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

-- insert stores message i and returns its queue, which the caller adds to
-- k('queues') (once per queue and call) and wakes.
local function insert(base, now, token)
	local id, name, queue, prio = ARGV[base], ARGV[base+1], ARGV[base+2], ARGV[base+3]
	local eta, exp, ttl = tonumber(ARGV[base+4]), tonumber(ARGV[base+5]), tonumber(ARGV[base+8])
	local uk, ukh = ARGV[base+9], ARGV[base+10]
	local tk = k('t', id)
	local fl, fw = ARGV[base+15], tonumber(ARGV[base+18])
	local expired = exp > 0 and exp <= now
	local state, runat = 2, now
	if fl ~= '' and fw > 0 then
		state, expired = 8, false
	elseif not expired and eta > now then
		state, runat = 1, eta
	end
	local ix = ixof(state, 0)
	redis.call('HSET', tk, 'name', name, 'queue', queue, 'prio', prio, 'exp', exp, 'att', 0,
		'max', ARGV[base+6], 'tmo', ARGV[base+7], 'ttl', ttl, 'owner', '', 'cancel', 0,
		'uk', uk, 'ukh', ukh, 'pay', ARGV[base+11], 'meta', ARGV[base+12], 'created', ARGV[base+13],
		'started', 0, 'finished', 0, 'tok', token, 'state', state, 'run_at', runat, 'ix', ix)
	if fl ~= '' then
		local fn, fs, fc, fb = ARGV[base+16], ARGV[base+17], ARGV[base+20], ARGV[base+21]
		redis.call('HSET', tk, 'fl', fl, 'fn', fn, 'fs', fs, 'fw', fw, 'fm', ARGV[base+19], 'fc', fc, 'fb', fb)
		redis.call('SADD', k('f', fl), id)
		if fn ~= '' then redis.call('ZADD', k('fp', fn), tonumber(fs), id) end
		if fc ~= '' then redis.call('SADD', k('fb', fc .. ':' .. fb), id) end
	end
	redis.call('ZADD', k('a', queue), 0, id)
	if ix ~= '0' then redis.call('ZADD', k('x', queue .. ':' .. ix), 0, id) end
	if uk ~= '' then redis.call('SET', k('u', ukh), id) end
	if expired then
		terminal(id, 7, now, 'expired before enqueue', nil)
	elseif state == 8 then
		-- a workflow step: it waits for its predecessors
	elseif state == 1 then
		redis.call('ZADD', k('sched'), eta, id)
	else
		redis.call('ZADD', k('r', queue), score(prio, now), id)
	end
	return queue
end
`

// libAttempts: attempt records and outcome counts (the scripts that end
// attempts: claim, finish, claim by id).
var libAttempts = `
local MAXREC = ` + strconv.Itoa(transport.MaxAttemptRecords) + `
-- record returns the task's 'atts' field with one more attempt that
-- ended without success, keeping the first record and the latest ones,
-- for the caller to write with the rest of the change.
local function record(id, n, owner, started, now, state, err)
	local list = {}
	local raw = redis.call('HGET', k('t', id), 'atts')
	if raw then
		local ok, v = pcall(cjson.decode, raw)
		if ok and type(v) == 'table' then list = v end
	end
	list[#list + 1] = {n = tonumber(n) or 0, owner = owner or '', started = tonumber(started) or 0,
		finished = now, state = state, err = err or ''}
	while #list > MAXREC do table.remove(list, 2) end
	return cjson.encode(list)
end

-- tally counts outcomes per queue and kind ('s' succeeded, 'f' failed or
-- retried) during one script run; flush adds them to the minute's hash.
local tally = {}
local function count(queue, kind)
	local f = queue .. ':' .. kind
	tally[f] = (tally[f] or 0) + 1
end
local function flush(now)
	local key = nil
	for f, n in pairs(tally) do
		key = key or k('m', string.format('%.0f', now - now % 60000))
		redis.call('HINCRBY', key, f, n)
	end
	if key then redis.call('EXPIRE', key, 7200) end
end
`

// libDelete: removing tasks from the indexes (prune, act, heal).
var libDelete = `
-- flow_running reports whether id is a step of a workflow that has not
-- ended: its row holds arguments of later steps, so it stays.
local function flow_running(id)
	local fl = redis.call('HGET', k('t', id), 'fl')
	if not fl or fl == '' then return false end
	local st = redis.call('HGET', k('t', fl), 'state')
	return st ~= false and tonumber(st) ~= nil and (tonumber(st) < 4 or tonumber(st) > 7)
end
-- unflow removes a step about to be deleted from its workflow's sets.
local function unflow(id)
	local f = redis.call('HMGET', k('t', id), 'fl', 'fn', 'fc', 'fb')
	if not f[1] or f[1] == '' then return end
	redis.call('SREM', k('f', f[1]), id)
	if f[2] and f[2] ~= '' then redis.call('ZREM', k('fp', f[2]), id) end
	if f[3] and f[3] ~= '' then redis.call('SREM', k('fb', f[3] .. ':' .. f[4]), id) end
	redis.call('DEL', k('fp', id))
end
-- unindex removes a task about to be deleted from its queue's indexes.
local function unindex(id, queue, old)
	if old and old ~= '0' then redis.call('ZREM', k('x', queue .. ':' .. old), id) end
	redis.call('ZREM', k('a', queue), id)
end

-- forget drops the queues (a set of names) that have no task left from
-- the set of queues.
local function forget(queues)
	for q in pairs(queues) do
		if redis.call('EXISTS', k('a', q)) == 0 then redis.call('SREM', k('queues'), q) end
	end
end
`

// enqueueScript: ARGV = P ncalls, then per call: token now n and n
// messages. Each call is all or nothing on its own: its reply is either
// one 'dup' row or a row per message. Calls are checked and inserted in
// order, so a later call sees an earlier one's tasks.
var enqueueScript = goredis.NewScript(lib + libMsg + `
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
for q in pairs(queues) do
	redis.call('SADD', k('queues'), q)
	wake(q)
end
return replies
`)

// claimScript: ARGV = P now owner lease_until limit nq q... nx x...
// Promotes due scheduled tasks, rescues lapsed leases, then claims.
var claimScript = goredis.NewScript(lib + libAttempts + `
local now, owner, deadline, limit = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local nq = tonumber(ARGV[6])
local excl = {}
for i = 1, tonumber(ARGV[7 + nq]) do excl[ARGV[7 + nq + i]] = true end
local ended = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', k('sched'), '-inf', now, 'LIMIT', 0, 1000)) do
	local f = redis.call('HMGET', k('t', id), 'queue', 'prio', 'run_at', 'ix')
	redis.call('ZREM', k('sched'), id)
	make_ready(id, f[1], f[2], tonumber(f[3]), f[4])
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', k('lease'), '-inf', now, 'LIMIT', 0, 1000)) do
	local f = redis.call('HMGET', k('t', id), 'att', 'max', 'cancel', 'queue', 'prio', 'ix', 'owner', 'started', 'name')
	if f[3] == '1' then
		local e = 'cancelled; the worker was lost in attempt ' .. f[1]
		terminal(id, 6, now, e, nil, {'atts', record(id, f[1], f[7], f[8], now, 6, e)})
		table.insert(ended, {id, 6, f[9], f[4], f[1]})
	elseif tonumber(f[1]) >= tonumber(f[2]) then
		local e = 'worker lost: lease expired in attempt ' .. f[1]
		count(f[4], 'f')
		terminal(id, 5, now, e, nil, {'atts', record(id, f[1], f[7], f[8], now, 5, e)})
		table.insert(ended, {id, 5, f[9], f[4], f[1]})
	else
		local e = 'worker lost: lease expired in attempt ' .. f[1]
		redis.call('ZREM', k('lease'), id)
		make_ready(id, f[4], f[5], now, f[6], {'err', e, 'atts', record(id, f[1], f[7], f[8], now, 2, e)})
	end
end
flush(now)
-- The delivery's fields (deliveryFrom), and ix: read in one HMGET when
-- no task name is excluded (the common case); with exclusions, the name
-- first, so that a skipped task costs little.
local DF = {'name', 'queue', 'prio', 'exp', 'att', 'max', 'tmo', 'ttl', 'uk', 'pay', 'meta', 'created', 'err', 'ix', 'fl'}
local nx = tonumber(ARGV[7 + nq])
local got = {}
for qi = 1, nq do
	local q = ARGV[6 + qi]
	local from = 0
	while #got < limit do
		local ids = redis.call('ZRANGE', k('r', q), from, from + limit - #got - 1)
		if #ids == 0 then break end
		from = from + #ids
		local ends0 = flow_ends
		for _, id in ipairs(ids) do
			if #got >= limit then break end
			local tk = k('t', id)
			local f = nil
			if flow_ends > 0 and not redis.call('ZSCORE', k('r', q), id) then
				-- A workflow step that an earlier end in this claim ended
				-- (its workflow failed): it is no longer ready.
				from = from - 1
			elseif nx == 0 or not excl[redis.call('HGET', tk, 'name')] then
				f = redis.call('HMGET', tk, unpack(DF))
			end
			if f then
				local exp = tonumber(f[4])
				if exp > 0 and exp <= now then
					terminal(id, 7, now, 'expired before start', nil)
					table.insert(ended, {id, 7, f[1], f[2], f[5]})
					from = from - 1
				else
					redis.call('ZREM', k('r', q), id)
					from = from - 1
					redis.call('ZADD', k('lease'), deadline, id)
					f[5] = tonumber(f[5]) + 1
					if f[14] == '0' then
						redis.call('HSET', tk, 'state', 3, 'att', f[5], 'owner', owner, 'run_at', deadline, 'started', now, 'prog', '')
					else
						index(id, q, f[14], '0')
						redis.call('HSET', tk, 'state', 3, 'ix', '0', 'att', f[5], 'owner', owner, 'run_at', deadline, 'started', now, 'prog', '')
					end
					f[14] = id
					table.insert(got, f)
				end
			end
		end
		-- Ends this batch caused may have removed ready tasks anywhere in
		-- the set: count positions again from its start.
		if flow_ends ~= ends0 then from = 0 end
	end
end
-- A task leased above may have been asked to stop since, by a workflow
-- that an end further on in this claim failed: it ends cancelled here
-- instead of reaching a worker.
if flow_ends > 0 then
	local kept = {}
	for _, f in ipairs(got) do
		if redis.call('HGET', k('t', f[14]), 'cancel') == '1' then
			local id = f[14]
			redis.call('HSET', k('t', id), 'att', tonumber(f[5]) - 1)
			terminal(id, 6, now, 'cancelled before start', nil)
			table.insert(ended, {id, 6, f[1], f[2], tonumber(f[5]) - 1})
		else
			table.insert(kept, f)
		end
	end
	got = kept
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
var finishScript = goredis.NewScript(lib + libAttempts + `
local now, n = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
local requeued = {}
local steps = {} -- the successes of workflow steps: {i, id, workflow}
-- The handoff (transport.FinishParams.Handoff): owner, lease deadline,
-- limit, then the queues and the excluded names, each counted.
local hb = 4 + n * 7
local howner, hdeadline, hlimit = ARGV[hb], tonumber(ARGV[hb + 1]), tonumber(ARGV[hb + 2]) or 0
local hq, hx = {}, {}
if hlimit > 0 then
	local nq = tonumber(ARGV[hb + 3])
	for j = 1, nq do hq[ARGV[hb + 3 + j]] = true end
	local nx = tonumber(ARGV[hb + 4 + nq])
	for j = 1, nx do hx[ARGV[hb + 4 + nq + j]] = true end
end
-- handoff leases to the handoff's owner the step that the success of id
-- made ready: its successor, or, past a group's gathering step that the
-- success completed, the gathering step's successor (a chord's body). It
-- returns the step's id and its delivery row, or nil.
local function handoff(id)
	local nx = redis.call('HGET', k('t', id), 'fn')
	if not nx or nx == '' then return nil end
	local g = redis.call('HMGET', k('t', nx), 'fm', 'state', 'fn')
	if has(g[1], 4) and g[2] == '4' then
		nx = g[3]
		if not nx or nx == '' then return nil end
	end
	local tk = k('t', nx)
	local f = redis.call('HMGET', tk, 'state', 'queue', 'name', 'cancel', 'exp', 'att', 'ix')
	local exp = tonumber(f[5]) or 0
	if f[1] ~= '2' or f[4] == '1' or not hq[f[2]] or hx[f[3]] or (exp > 0 and exp <= now) then return nil end
	unqueue(nx, f[2], f[1])
	redis.call('ZADD', k('lease'), hdeadline, nx)
	index(nx, f[2], f[7], '0')
	redis.call('HSET', tk, 'state', 3, 'ix', '0', 'att', tonumber(f[6]) + 1, 'owner', howner, 'run_at', hdeadline, 'started', now, 'prog', '')
	return nx, redis.call('HMGET', tk, 'name', 'queue', 'prio', 'exp', 'att', 'max', 'tmo', 'ttl', 'uk', 'pay', 'meta', 'created', 'err', 'id', 'fl')
end
for i = 0, n - 1 do
	local b = 4 + i * 7
	local id, att, owner, state, runat = ARGV[b], ARGV[b+1], ARGV[b+2], tonumber(ARGV[b+3]), tonumber(ARGV[b+4])
	local res, err = ARGV[b+5], ARGV[b+6]
	local tk = k('t', id)
	local f = redis.call('HMGET', tk, 'state', 'att', 'owner', 'queue', 'prio', 'cancel', 'ix', 'started', 'ttl', 'ukh')
	local pre = {f[4], f[9], f[10], f[7], f[1]}
	if f[1] == '3' and f[2] == att and f[3] == owner then
		out[i + 1] = 1
		if err == '' then err = nil end
		if state == 4 then count(f[4], 's') elseif state == 5 or state == 1 then count(f[4], 'f') end
		if state >= 4 then
			if res == '' then res = nil end
			if state == 4 then
				terminal(id, state, now, err or '', res, nil, pre)
				local fl = redis.call('HGET', tk, 'fl')
				if fl and fl ~= '' then table.insert(steps, {i, id, fl}) end
			else
				terminal(id, state, now, err, res, {'atts', record(id, att, owner, f[8], now, state, err)}, pre)
			end
		elseif f[6] == '1' then
			-- A cancel is pending: the task ends here, it is not put back.
			out[i + 1] = 2
			local e = '` + cancelledAtRelease + `'
			local extra = {}
			if state == 2 then
				extra = {'att', tonumber(att) - 1}
			elseif err then
				e = 'cancelled; attempt ' .. att .. ' failed: ' .. err
			else
				e = 'cancelled; attempt ' .. att .. ' failed'
			end
			terminal(id, 6, now, e, nil, append(extra, {'atts', record(id, att, owner, f[8], now, 6, e)}), pre)
		else
			redis.call('ZREM', k('lease'), id)
			local extra = {}
			if err then extra = {'err', err} end
			if state == 2 then
				append(extra, {'att', tonumber(att) - 1, 'atts', record(id, att, owner, f[8], now, 2, err)})
				make_ready(id, f[4], f[5], now, f[7], extra)
			elseif runat <= now then
				append(extra, {'atts', record(id, att, owner, f[8], now, 1, err)})
				make_ready(id, f[4], f[5], runat, f[7], extra)
			else
				append(extra, {'atts', record(id, att, owner, f[8], now, 1, err)})
				index(id, f[4], f[7], 'r')
				redis.call('HSET', tk, unpack(append({'state', 1, 'ix', 'r', 'run_at', runat}, extra)))
				redis.call('ZADD', k('sched'), runat, id)
			end
			requeued[f[4]] = true
		end
	else
		out[i + 1] = 0
	end
end
-- Once every outcome is written, so that a failure later in the batch
-- has cancelled what its workflow had not started: hand over the steps
-- the successes made ready, and say which ended their workflow.
for _, e in ipairs(steps) do
	local i, id, fl = e[1], e[2], e[3]
	local nx, row = nil, nil
	if fl ~= id and hlimit > 0 then nx, row = handoff(id) end
	if nx then
		hlimit = hlimit - 1
		table.insert(row, 1, nx)
		table.insert(row, 1, 1)
		out[i + 1] = row -- the step handed over
	else
		local st = tonumber(redis.call('HGET', k('t', fl), 'state') or 0)
		if st >= 4 and st <= 7 then out[i + 1] = 3 end -- its workflow has ended
	end
end
for q in pairs(requeued) do wake(q) end
flush(now)
return out
`)

// cancelScript: ARGV = P now id -> the state after, or -1 if no such task.
var cancelScript = goredis.NewScript(lib + `
local now, id = tonumber(ARGV[2]), ARGV[3]
local tk = k('t', id)
local st = redis.call('HGET', tk, 'state')
if not st then return -1 end
st = tonumber(st)
if st == 1 or st == 2 or st == 8 then
	terminal(id, 6, now, 'cancelled before start', nil)
	return 6
elseif st == 3 then
	redis.call('HSET', tk, 'cancel', 1)
	publish('c ' .. id)
end
return st
`)

// pruneScript: ARGV = P now limit -> number deleted.
var pruneScript = goredis.NewScript(lib + libDelete + `
local ids = redis.call('ZRANGEBYSCORE', k('done'), '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local touched = {}
local n = 0
for _, id in ipairs(ids) do
	if flow_running(id) then
		-- Kept while its workflow runs; looked at again a TTL later.
		redis.call('ZADD', k('done'), tonumber(ARGV[2]) + math.max(tonumber(redis.call('HGET', k('t', id), 'ttl')) or 0, 60000), id)
	else
		local f = redis.call('HMGET', k('t', id), 'queue', 'ix')
		if f[1] then
			unindex(id, f[1], f[2])
			touched[f[1]] = true
		end
		unflow(id)
		redis.call('DEL', k('t', id))
		redis.call('ZREM', k('done'), id)
		n = n + 1
	end
end
forget(touched)
for _, w in ipairs(redis.call('ZRANGEBYSCORE', k('wexp'), '-inf', ARGV[2], 'LIMIT', 0, 1000)) do
	redis.call('HDEL', k('workers'), w)
	redis.call('ZREM', k('wexp'), w)
end
return n
`)

// cancelFlowScript: ARGV = P now flow -> {ended ids, running ids}, or
// -1 when there is no such workflow. Steps that have not started end
// cancelled (fw -1: their ends advance nothing), running ones are asked
// to stop.
var cancelFlowScript = goredis.NewScript(lib + `
local now, fl = tonumber(ARGV[2]), ARGV[3]
local ids = redis.call('SMEMBERS', k('f', fl))
if #ids == 0 then return -1 end
local ended, running = {}, {}
for _, id in ipairs(ids) do
	local st = redis.call('HGET', k('t', id), 'state')
	if st == '3' then
		redis.call('HSET', k('t', id), 'fw', -1)
		stop(id)
		running[#running + 1] = id
	elseif unfinished(st) then
		redis.call('HSET', k('t', id), 'fw', -1)
		terminal(id, 6, now, 'docket: workflow cancelled', nil)
		ended[#ended + 1] = id
	end
end
return {ended, running}
`)

// scheduleInitScript: ARGV = P now name spec next_at template
// has_template -> nothing. The template is replaced on every call; the
// cursor only when the spec changed.
var scheduleInitScript = goredis.NewScript(lib + `
local sk = k('s', ARGV[3])
if redis.call('HGET', sk, 'spec') ~= ARGV[4] then
	redis.call('HSET', sk, 'spec', ARGV[4], 'next_at', ARGV[5], 'updated', ARGV[2])
	redis.call('SADD', k('schedules'), ARGV[3])
end
if ARGV[7] == '1' then
	redis.call('HSET', sk, 'tmpl', ARGV[6])
else
	redis.call('HDEL', sk, 'tmpl')
end
return 1
`)

// scheduleFireScript: ARGV = P now name cursor next_at slot skip_if_running token
// [message fields from 9] -> {advanced, fired, task id, skipped reason}.
var scheduleFireScript = goredis.NewScript(lib + libMsg + `
local now, name, cursor, nextat, slot = tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local skip, token = ARGV[7], ARGV[8]
local sk = k('s', name)
if redis.call('HGET', sk, 'next_at') ~= cursor then return {0, 0, '', ''} end
redis.call('HSET', sk, 'next_at', nextat, 'updated', now)
if slot == '' then return {1, 0, '', ''} end
if redis.call('HEXISTS', sk, 'paused') == 1 then return {1, 0, '', 'paused'} end
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
	local q = insert(9, now, token)
	redis.call('SADD', k('queues'), q)
	wake(q)
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
var claimIDsScript = goredis.NewScript(lib + libAttempts + `
local now, owner, deadline, n = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local out = {}
for i = 0, n - 1 do
	local id = ARGV[6 + i]
	local tk = k('t', id)
	local f = redis.call('HMGET', tk, 'state', 'run_at', 'exp', 'att', 'max', 'cancel', 'queue', 'ix', 'owner', 'started')
	if not f[1] then
		out[i + 1] = {'none'}
	else
		local st, runat, exp, att, max = tonumber(f[1]), tonumber(f[2]), tonumber(f[3]), tonumber(f[4]), tonumber(f[5])
		-- lost: the task runs under a lapsed lease, its worker lost; the
		-- attempt that ends here is recorded (lose returns the field).
		local lost = st == 3
		local function lose(state, e)
			if lost then return {'atts', record(id, att, f[9], f[10], now, state, e)} end
			return nil
		end
		if st >= 4 or (st == 3 and runat > now) or (st == 1 and runat > now) then
			out[i + 1] = {'left', st, runat}
		elseif st == 3 and f[6] == '1' then
			local e = 'cancelled; the worker was lost in attempt ' .. att
			terminal(id, 6, now, e, nil, lose(6, e))
			out[i + 1] = {'end', 6}
		elseif f[6] == '1' then
			terminal(id, 6, now, 'cancelled before start', nil)
			out[i + 1] = {'end', 6}
		elseif exp > 0 and exp <= now then
			terminal(id, 7, now, 'expired before start', nil, lose(7, 'worker lost: lease expired in attempt ' .. att .. '; the task expired'))
			out[i + 1] = {'end', 7}
		elseif att >= max then
			local e = 'worker lost: delivered again after attempt ' .. att
			if lost then count(f[7], 'f') end
			terminal(id, 5, now, e, nil, lose(5, e))
			out[i + 1] = {'end', 5}
		else
			unqueue(id, f[7], f[1])
			redis.call('ZADD', k('lease'), deadline, id)
			index(id, f[7], f[8], '0')
			redis.call('HSET', tk, unpack(append({'state', 3, 'ix', '0', 'att', att + 1, 'owner', owner, 'run_at', deadline, 'started', now, 'cancel', 0, 'prog', ''},
				lose(2, 'worker lost: lease expired in attempt ' .. att))))
			local row = redis.call('HMGET', tk, 'name', 'queue', 'prio', 'exp', 'att', 'max', 'tmo', 'ttl', 'uk', 'pay', 'meta', 'created', 'err', 'id', 'fl')
			table.insert(row, 1, 'lease')
			out[i + 1] = row
		end
	end
end
-- A step leased above may have been asked to stop since, by a workflow
-- that an end further on in this call failed: it ends cancelled instead
-- of reaching a worker (as in the claim script).
if flow_ends > 0 then
	for i = 0, n - 1 do
		local id = ARGV[6 + i]
		if out[i + 1][1] == 'lease' and redis.call('HGET', k('t', id), 'cancel') == '1' then
			redis.call('HINCRBY', k('t', id), 'att', -1)
			terminal(id, 6, now, 'cancelled before start', nil)
			out[i + 1] = {'end', 6}
		end
	end
end
flush(now)
return out
`)

// actScript: ARGV = P now action attempts n id... (action: retry cancel
// delete run) -> {changed ids, skipped, missing}. Each task's state is
// checked as the action applies (transport.Action.Applies).
var actScript = goredis.NewScript(lib + libDelete + `
local now, action, attempts, n = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local changed, skipped, missing = {}, 0, 0
local woken, touched = {}, {}
for i = 1, n do
	local id = ARGV[5 + i]
	local tk = k('t', id)
	local f = redis.call('HMGET', tk, 'state', 'att', 'queue', 'prio', 'ukh', 'ix')
	local st = tonumber(f[1])
	local ok = false
	if not st then
		missing = missing + 1
	elseif action == 'retry' then
		-- Not a workflow step: its workflow has moved on.
		if st >= 5 and st <= 7 and not redis.call('HGET', tk, 'fl') then
			ok = true
			local ukh = f[5]
			if ukh and ukh ~= '' then
				local holder = redis.call('GET', k('u', ukh))
				if holder and holder ~= id then
					ok = false -- another unfinished task holds the key now
				else
					redis.call('SET', k('u', ukh), id)
				end
			end
			if ok then
				redis.call('ZREM', k('done'), id)
				redis.call('HDEL', tk, 'res')
				redis.call('HSET', tk, 'max', tonumber(f[2]) + attempts, 'exp', 0, 'finished', 0, 'cancel', 0)
				make_ready(id, f[3], f[4], now, f[6])
				woken[f[3]] = true
			end
		end
	elseif action == 'cancel' then
		if st <= 2 or st == 8 then
			terminal(id, 6, now, 'cancelled before start', nil)
			ok = true
		elseif st == 3 then
			redis.call('HSET', tk, 'cancel', 1)
			publish('c ' .. id)
			ok = true
		end
	elseif action == 'delete' then
		if st ~= 3 and st ~= 8 and not flow_running(id) then
			redis.call('ZREM', k('r', f[3]), id)
			redis.call('ZREM', k('sched'), id)
			redis.call('ZREM', k('done'), id)
			if f[5] and f[5] ~= '' and redis.call('GET', k('u', f[5])) == id then
				redis.call('DEL', k('u', f[5]))
			end
			unindex(id, f[3], f[6])
			unflow(id)
			touched[f[3]] = true
			redis.call('DEL', tk)
			if st < 4 then publish('d ' .. id) end -- waiters re-read it
			ok = true
		end
	elseif action == 'run' then
		if st == 1 then
			redis.call('ZREM', k('sched'), id)
			make_ready(id, f[3], f[4], now, f[6])
			woken[f[3]] = true
			ok = true
		end
	end
	if ok then
		changed[#changed + 1] = id
	elseif st then
		skipped = skipped + 1
	end
end
for q in pairs(woken) do wake(q) end
forget(touched)
return {changed, skipped, missing}
`)

// setPausedScript: ARGV = P now queue paused(0/1) -> nothing. A pause
// keeps its first time; a resume wakes the queue's workers.
var setPausedScript = goredis.NewScript(lib + `
if ARGV[4] == '1' then
	redis.call('HSETNX', k('paused'), ARGV[3], ARGV[2])
elseif redis.call('HDEL', k('paused'), ARGV[3]) == 1 then
	publish('r ' .. ARGV[3])
end
return 1
`)

// heartbeatScript: ARGV = P now id record expires gone(0/1) -> nothing.
// It also drops the records of workers whose heartbeat expired.
var heartbeatScript = goredis.NewScript(lib + `
local now, id = tonumber(ARGV[2]), ARGV[3]
if ARGV[6] == '1' then
	redis.call('HDEL', k('workers'), id)
	redis.call('ZREM', k('wexp'), id)
else
	redis.call('HSET', k('workers'), id, ARGV[4])
	redis.call('ZADD', k('wexp'), ARGV[5], id)
end
for _, w in ipairs(redis.call('ZRANGEBYSCORE', k('wexp'), '-inf', now, 'LIMIT', 0, 100)) do
	redis.call('HDEL', k('workers'), w)
	redis.call('ZREM', k('wexp'), w)
end
return 1
`)

// progressScript: ARGV = P id att owner value -> 1 written, 0 fenced out.
var progressScript = goredis.NewScript(lib + `
local tk = k('t', ARGV[2])
local f = redis.call('HMGET', tk, 'state', 'att', 'owner')
if f[1] == '3' and f[2] == ARGV[3] and f[3] == ARGV[4] then
	redis.call('HSET', tk, 'prog', ARGV[5])
	return 1
end
return 0
`)

// schedulePauseScript: ARGV = P now name paused(0/1) -> 0 no such
// schedule, 1 done.
var schedulePauseScript = goredis.NewScript(lib + `
local sk = k('s', ARGV[3])
if redis.call('EXISTS', sk) == 0 then return 0 end
if ARGV[4] == '1' then
	redis.call('HSETNX', sk, 'paused', ARGV[2])
else
	redis.call('HDEL', sk, 'paused')
end
return 1
`)

// scheduleTriggerScript: ARGV = P now name token, message fields from 5
// -> {'ok', id} | {'none'} (no such schedule) | a 'dup' row of check.
// The task is enqueued as Enqueue does; the schedule's last task and
// fire time are set, its cursor and last slot left alone.
var scheduleTriggerScript = goredis.NewScript(lib + libMsg + `
local now, token = tonumber(ARGV[2]), ARGV[4]
local sk = k('s', ARGV[3])
if redis.call('EXISTS', sk) == 0 then return {'none'} end
local row = check(5, token)
if row then
	if row[1] == 'dup' then return row end
	return {'ok', row[2]} -- this call, retried
end
local q = insert(5, now, token)
redis.call('SADD', k('queues'), q)
wake(q)
redis.call('HSET', sk, 'last_task', ARGV[5], 'last_fired', now)
return {'ok', ARGV[5]}
`)

// reindexScript: ARGV = P n id... -> nothing. It puts tasks in the index
// sets their state calls for: those stored before the indexes existed, or
// changed since by a process of that version (upgrade).
var reindexScript = goredis.NewScript(lib + `
local n = tonumber(ARGV[2])
for i = 1, n do
	local id = ARGV[2 + i]
	local f = redis.call('HMGET', k('t', id), 'state', 'att', 'queue', 'ix')
	if f[1] and f[3] then
		local ix = ixof(f[1], f[2])
		if f[4] ~= ix then
			index(id, f[3], f[4], ix)
			redis.call('HSET', k('t', id), 'ix', ix)
		end
	end
end
return 1
`)

// healScript: ARGV = P n (queue id)... -> nothing. It removes from the
// queue's indexes the ids whose task no longer exists (pruned by a
// process of the version before the indexes), as Search finds them.
var healScript = goredis.NewScript(lib + libDelete + `
local n = tonumber(ARGV[2])
local touched = {}
for i = 0, n - 1 do
	local q, id = ARGV[3 + i*2], ARGV[4 + i*2]
	if redis.call('EXISTS', k('t', id)) == 0 then
		redis.call('ZREM', k('a', q), id)
		for _, ix in ipairs({'1', 'r', '4', '5', '6', '7', '8'}) do
			redis.call('ZREM', k('x', q .. ':' .. ix), id)
		end
		touched[q] = true
	end
end
forget(touched)
return 1
`)
