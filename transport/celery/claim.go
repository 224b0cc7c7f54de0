package celery

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"strconv"
	"time"

	wire "github.com/docketq/docket/internal/celery"
	"github.com/docketq/docket/transport"
	goredis "github.com/redis/go-redis/v9"
)

// kombu's bookkeeping of fetched messages: unacked maps a delivery tag to
// [envelope, exchange, routing key], unacked_index to the time it was
// fetched (or, here, last known held).
const (
	unackedKey = "unacked"
	indexKey   = "unacked_index"
)

// DeadList is the list a queue's refused messages are moved to: each item
// is a JSON object with the reason, the time and the message as it was.
func DeadList(queue string) string { return "docket.dead." + queue }

// fetchScript pops up to ARGV[1] messages from KEYS[3...] in order and
// records each in kombu's unacked hash and index, in the same step (kombu
// does it in two, and loses a message fetched by a worker that dies in
// between). ARGV[2] is the time; ARGV[2+i] is the routing key of list
// KEYS[2+i]. A message without a delivery tag goes to its queue's dead
// list. It returns {tag, envelope, routing key} triples; a dead message's
// tag is "".
var fetchScript = goredis.NewScript(`
local limit = tonumber(ARGV[1])
local out = {}
local got = 0
for i = 3, #KEYS do
  local q = ARGV[i]
  while got < limit do
    local raw = redis.call('RPOP', KEYS[i])
    if not raw then break end
    local ok, env = pcall(cjson.decode, raw)
    local tag = nil
    if ok and type(env) == 'table' and type(env.properties) == 'table' then tag = env.properties.delivery_tag end
    if type(tag) ~= 'string' or tag == '' then
      redis.call('LPUSH', 'docket.dead.' .. q, cjson.encode({reason = 'not a kombu envelope with a delivery tag', at = ARGV[2], message = raw}))
      table.insert(out, '')
    else
      redis.call('HSET', KEYS[1], tag, '[' .. raw .. ',"",' .. cjson.encode(q) .. ']')
      redis.call('ZADD', KEYS[2], ARGV[2], tag)
      table.insert(out, tag)
      got = got + 1
    end
    table.insert(out, raw)
    table.insert(out, q)
  end
end
return out
`)

// touchScript sets the index time of each tag ARGV[2i] to ARGV[1] if it
// is still unacknowledged under the time this process last wrote for it,
// ARGV[2i+1], and returns 1 for those, 0 for the others (restored, and
// perhaps fetched again, by someone else).
var touchScript = goredis.NewScript(`
local out = {}
for i = 2, #ARGV, 2 do
  local s = redis.call('ZSCORE', KEYS[2], ARGV[i])
  if s and tonumber(s) == tonumber(ARGV[i+1]) and redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], ARGV[1], ARGV[i])
    table.insert(out, 1)
  else
    table.insert(out, 0)
  end
end
return out
`)

// ackScript acknowledges tag ARGV[1] if it is still unacknowledged under
// one of the times this process wrote for it (ARGV[2], ARGV[3]), and in
// the same step writes the result record ARGV[4] (value ARGV[5], kept
// ARGV[6] seconds; set, then published, as Celery's backend does), the
// dead-list entry ARGV[8] on ARGV[7], and the messages of ARGV[9...],
// each as four values: L (the tail) or R (the head), list, envelope,
// queue. It returns 0, writing nothing, if the message is no longer this
// process's.
var ackScript = goredis.NewScript(`
local s = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not s or (tonumber(s) ~= tonumber(ARGV[2]) and tonumber(s) ~= tonumber(ARGV[3])) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[4] ~= '' then
  redis.call('SET', ARGV[4], ARGV[5], 'EX', ARGV[6])
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
if ARGV[7] ~= '' then redis.call('LPUSH', ARGV[7], ARGV[8]) end
for i = 9, #ARGV, 4 do
  if ARGV[i] == 'R' then redis.call('RPUSH', ARGV[i+1], ARGV[i+2]) else redis.call('LPUSH', ARGV[i+1], ARGV[i+2]) end
  redis.call('SADD', '_kombu.binding.' .. ARGV[i+3], ARGV[i+3] .. '\6\22\6\22' .. ARGV[i+3])
end
return 1
`)

// restoreScript puts a message back at the head of list ARGV[4] (ARGV[5])
// and forgets tag ARGV[1], if its unacked entry is still ARGV[2] and was
// last held before ARGV[3]; as kombu's restore does under WATCH.
var restoreScript = goredis.NewScript(`
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
local s = redis.call('ZSCORE', KEYS[2], ARGV[1])
if s and tonumber(s) >= tonumber(ARGV[3]) then return 0 end
redis.call('RPUSH', ARGV[4], ARGV[5])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
`)

// unixTime is kombu's form of a time in the index: seconds as a float.
func unixTime(t time.Time) string {
	return strconv.FormatFloat(float64(t.UnixMicro())/1e6, 'f', 6, 64)
}

// Claim delivers the messages this process holds that are due, then
// fetches new ones from p.Queues in order (each queue's lists in kombu's
// order: priority 0 first). A fetched message whose ETA is ahead, or whose
// task name is excluded for now, is held unacknowledged until it can run,
// as Celery's worker holds it. Expired messages are recorded REVOKED, and
// messages docket cannot run are recorded FAILURE and moved to the dead
// list.
func (t *Transport) Claim(ctx context.Context, p transport.ClaimParams) (transport.ClaimResult, error) {
	var res transport.ClaimResult
	t.upkeep(ctx, p.Now)
	t.mu.Lock()
	held := t.held
	t.held = nil
	t.mu.Unlock()
	var keep []*fetched
	for _, f := range held {
		if len(res.Deliveries) < p.Limit && t.due(f, p) {
			t.deliver(ctx, f, p, &res, &keep)
		} else {
			keep = append(keep, f)
		}
	}
	if want := p.Limit - len(res.Deliveries); want > 0 && len(p.Queues) > 0 {
		keys := []string{unackedKey, indexKey}
		args := []any{want, unixTime(p.Now)}
		for _, q := range p.Queues {
			for _, step := range []int{0, 3, 6, 9} {
				keys = append(keys, wire.PriorityList(q, step))
				args = append(args, q)
			}
		}
		v, err := fetchScript.Run(ctx, t.broker, keys, args...).Slice()
		if err != nil {
			t.mu.Lock()
			t.held = append(t.held, keep...)
			t.mu.Unlock()
			return res, t.wrap(err)
		}
		for i := 0; i+2 < len(v); i += 3 {
			tag, _ := v[i].(string)
			raw, _ := v[i+1].(string)
			queue, _ := v[i+2].(string)
			if tag == "" {
				t.opts.Logger.WarnContext(ctx, "docket: celery: a message that is not a kombu envelope was moved to the dead list", "queue", queue, "dead_list", DeadList(queue))
				continue
			}
			f := &fetched{tag: tag, raw: raw, queue: queue, score: unixTime(p.Now)}
			task, _, err := wire.DecodeEnvelope([]byte(raw))
			if err != nil {
				t.refuse(ctx, f, p.Now, err.Error(), nil)
				continue
			}
			f.task = task
			if len(res.Deliveries) < p.Limit && t.due(f, p) {
				t.deliver(ctx, f, p, &res, &keep)
			} else {
				keep = append(keep, f)
			}
		}
	}
	t.mu.Lock()
	t.held = append(t.held, keep...)
	for _, f := range t.held {
		if f.task.ETA.After(p.Now) && (res.NextAt.IsZero() || f.task.ETA.Before(res.NextAt)) {
			res.NextAt = f.task.ETA
		}
	}
	t.mu.Unlock()
	if t.opts.TrackStarted {
		pipe := t.backend.TxPipeline()
		host, _ := os.Hostname()
		for _, d := range res.Deliveries {
			if !d.IgnoreResult {
				t.record(ctx, pipe, wire.StartedBy(d.ID, os.Getpid(), host))
			}
		}
		if _, err := pipe.Exec(ctx); err != nil && err != goredis.Nil {
			t.opts.Logger.WarnContext(ctx, "docket: celery: STARTED records not written", "err", err)
		}
	}
	return res, nil
}

// due reports whether f may run now for p: its ETA has come, its name is
// not excluded, and no attempt of the same id runs here.
func (t *Transport) due(f *fetched, p transport.ClaimParams) bool {
	if f.task.ETA.After(p.Now) || slices.Contains(p.Exclude, f.task.Name) {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.running[f.task.ID] == nil
}

// deliver turns f into a delivery of res, or ends it: expired, a chord,
// or arguments docket cannot take.
func (t *Transport) deliver(ctx context.Context, f *fetched, p transport.ClaimParams, res *transport.ClaimResult, keep *[]*fetched) {
	task := f.task
	ended := func(s transport.State) {
		res.Ended = append(res.Ended, transport.Status{ID: task.ID, State: s, Name: task.Name, Queue: f.queue, Attempt: task.Retries + 1})
	}
	if !task.Expires.IsZero() && !p.Now.Before(task.Expires) {
		lost, err := t.settle(ctx, f, p.Now, outcome{record: resultOf(task, wire.Revoked(task.ID, "expired", p.Now))})
		switch {
		case err != nil:
			*keep = append(*keep, f)
		case !lost:
			ended(transport.StateExpired)
		}
		return
	}
	if task.Embed.Chord != nil {
		t.refuse(ctx, f, p.Now, "a chord: docket runs Celery's links and chains, not chords (their counters live in Celery's result backend)", &wire.Exception{Type: "NotImplementedError", Module: "builtins",
			Message: []string{"docket: chords are not supported by docket workers; run the chord's members on Celery workers"}})
		ended(transport.StateFailed)
		return
	}
	payload, err := wire.Payload(task.Args, task.Kwargs)
	if err != nil {
		t.refuse(ctx, f, p.Now, err.Error(), &wire.Exception{Type: "TypeError", Module: "builtins", Message: []string{err.Error()}})
		ended(transport.StateFailed)
		return
	}
	timeout := task.SoftLimit
	if timeout == 0 || (task.HardLimit > 0 && task.HardLimit < timeout) {
		timeout = task.HardLimit
	}
	d := transport.Delivery{
		Message: transport.Message{
			ID: task.ID, Name: task.Name, Queue: f.queue, Payload: payload, Headers: headers(task),
			Priority: task.Priority, ETA: task.ETA, Expires: task.Expires, MaxAttempts: t.opts.MaxRetries + 1,
			Timeout: timeout, ResultTTL: t.opts.ResultExpires, IgnoreResult: task.IgnoreResult,
		},
		Attempt: task.Retries + 1, Owner: p.Owner, LeaseUntil: p.LeaseUntil,
	}
	f.lease = d.Lease()
	t.mu.Lock()
	t.running[task.ID] = f
	t.mu.Unlock()
	res.Deliveries = append(res.Deliveries, d)
}

// headers returns the headers of task docket does not read itself, as
// strings (others as JSON), so that middleware sees what the producer
// added (a trace context, say).
func headers(task wire.Task) map[string]string {
	if len(task.Other) == 0 {
		return nil
	}
	h := make(map[string]string, len(task.Other))
	for k, v := range task.Other {
		if s, ok := v.(string); ok {
			h[k] = s
		} else if b, err := json.Marshal(v); err == nil {
			h[k] = string(b)
		}
	}
	return h
}

// refuse records a message docket cannot run: logged with the reason,
// moved to its queue's dead list, and, when exc is set, recorded FAILURE
// so that a Celery client waiting for it raises.
func (t *Transport) refuse(ctx context.Context, f *fetched, now time.Time, reason string, exc *wire.Exception) {
	t.opts.Logger.WarnContext(ctx, "docket: celery: a message was refused and moved to the dead list", "task_id", f.task.ID, "task", f.task.Name, "queue", f.queue, "reason", reason, "dead_list", DeadList(f.queue))
	o := outcome{dead: reason}
	if exc != nil && f.task.ID != "" {
		o.record = resultOf(f.task, wire.Failed(f.task.ID, *exc, reason, now))
	}
	if _, err := t.settle(ctx, f, now, o); err != nil {
		t.opts.Logger.WarnContext(ctx, "docket: celery: a refused message stays unacknowledged (restored after the visibility timeout)", "task_id", f.task.ID, "err", err)
	}
}

// upkeep refreshes the index times of the messages this process holds
// (so that no restore, Celery's or docket's, gives them away while they
// wait or run), and restores the messages others fetched and lost: those
// not held for longer than the visibility timeout. Each runs at most once
// in a tenth of the visibility timeout, and at least once a minute.
func (t *Transport) upkeep(ctx context.Context, now time.Time) {
	every := min(t.opts.VisibilityTimeout/10, time.Minute)
	t.mu.Lock()
	refresh := now.Sub(t.refreshed) >= every
	restore := now.Sub(t.restored) >= every
	if refresh {
		t.refreshed = now
	}
	if restore {
		t.restored = now
	}
	var fs []*fetched
	if refresh {
		fs = slices.Clone(t.held)
		for _, f := range t.running {
			fs = append(fs, f)
		}
	}
	t.mu.Unlock()
	if len(fs) > 0 {
		held, err := t.touch(ctx, now, fs)
		if err != nil {
			t.opts.Logger.WarnContext(ctx, "docket: celery: the held messages' times not refreshed", "err", err)
		}
		lost := map[*fetched]bool{}
		for i, ok := range held {
			if !ok {
				lost[fs[i]] = true
			}
		}
		if len(lost) > 0 {
			// A held message someone else restored is theirs now; a
			// running one is reported lost by Extend.
			t.mu.Lock()
			t.held = slices.DeleteFunc(t.held, func(f *fetched) bool { return lost[f] })
			t.mu.Unlock()
		}
	}
	if restore {
		if n, err := t.restore(ctx, now.Add(-t.opts.VisibilityTimeout)); err != nil {
			t.opts.Logger.WarnContext(ctx, "docket: celery: lapsed messages not restored", "err", err)
		} else if n > 0 {
			t.opts.Logger.InfoContext(ctx, "docket: celery: messages unacknowledged past the visibility timeout were restored", "count", n)
		}
	}
}

// touch sets the index time of fs to now and reports which are still this
// process's. One touch runs at a time, so that a message has at most one
// time in flight beside the one written (see fences).
func (t *Transport) touch(ctx context.Context, now time.Time, fs []*fetched) ([]bool, error) {
	t.touchMu.Lock()
	defer t.touchMu.Unlock()
	score := unixTime(now)
	args := make([]any, 0, 2*len(fs)+1)
	args = append(args, score)
	t.mu.Lock()
	for _, f := range fs {
		f.pending = score
		args = append(args, f.tag, f.score)
	}
	t.mu.Unlock()
	v, err := touchScript.Run(ctx, t.broker, []string{unackedKey, indexKey}, args...).Int64Slice()
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]bool, len(fs))
	for i, f := range fs {
		if err == nil && i < len(v) && v[i] == 1 {
			f.score = score
			out[i] = true
		}
		f.pending = ""
	}
	if err != nil {
		return nil, t.wrap(err)
	}
	return out, nil
}

// fences returns the index times under which f is still this process's:
// the one it wrote last, and one a touch may be writing now.
func (t *Transport) fences(f *fetched) (string, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if f.pending == "" {
		return f.score, f.score
	}
	return f.score, f.pending
}

// restore puts back at the head of their lists the messages last held
// before cutoff, up to a thousand at a time.
func (t *Transport) restore(ctx context.Context, cutoff time.Time) (int, error) {
	tags, err := t.broker.ZRangeByScore(ctx, indexKey, &goredis.ZRangeBy{Min: "-inf", Max: "(" + unixTime(cutoff), Count: 1000}).Result()
	if err != nil || len(tags) == 0 {
		return 0, t.wrap(err)
	}
	vals, err := t.broker.HMGet(ctx, unackedKey, tags...).Result()
	if err != nil {
		return 0, t.wrap(err)
	}
	n := 0
	for i, v := range vals {
		entry, _ := v.(string)
		var parts []json.RawMessage
		var queue string
		if json.Unmarshal([]byte(entry), &parts) != nil || len(parts) != 3 || json.Unmarshal(parts[2], &queue) != nil || queue == "" {
			// An entry without its message (or of a form we do not know):
			// forget the tag, as kombu does when the hash has nothing.
			if entry == "" {
				t.broker.ZRem(ctx, indexKey, tags[i])
			}
			continue
		}
		ok, err := restoreScript.Run(ctx, t.broker, []string{unackedKey, indexKey}, tags[i], entry, unixTime(cutoff), queue, string(parts[0])).Int()
		if err != nil {
			return n, t.wrap(err)
		}
		n += ok
	}
	return n, nil
}

// giveBack puts f back at the head of its list, if it is still this
// process's.
func (t *Transport) giveBack(ctx context.Context, f *fetched) (lost bool, err error) {
	return t.ack(ctx, f, nil, "", []any{"R", f.queue, f.raw, f.queue})
}

// Extend refreshes the index time of the leases' messages. A lease whose
// message is no longer this process's (restored after the visibility
// timeout, perhaps fetched again) is lost.
func (t *Transport) Extend(ctx context.Context, p transport.ExtendParams) ([]transport.ExtendResult, error) {
	out := make([]transport.ExtendResult, len(p.Leases))
	var fs []*fetched
	var at []int
	t.mu.Lock()
	for i, l := range p.Leases {
		f := t.running[l.ID]
		if f == nil || f.lease != l {
			out[i].Lost = true
			continue
		}
		fs = append(fs, f)
		at = append(at, i)
	}
	t.mu.Unlock()
	if len(fs) == 0 {
		return out, nil
	}
	held, err := t.touch(ctx, p.Now, fs)
	if err != nil {
		return nil, err
	}
	for j, ok := range held {
		out[at[j]].Lost = !ok
	}
	return out, nil
}
