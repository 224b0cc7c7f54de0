package celery

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	wire "github.com/docketq/docket/internal/celery"
	goredis "github.com/redis/go-redis/v9"
)

// kombu's bookkeeping of fetched messages: unacked maps a delivery tag to
// [envelope, exchange, routing key], unacked_index to the time it was
// fetched (or, here, last known held).
const (
	unackedKey = "unacked"
	indexKey   = "unacked_index"
)

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

// touchScript sets the index time of each tag ARGV[3i-1] to ARGV[1] if it
// is still unacknowledged under one of the times this process wrote for
// it, ARGV[3i] and ARGV[3i+1], and returns 1 for those, 0 for the others
// (restored, and perhaps fetched again, by someone else).
var touchScript = goredis.NewScript(`
local out = {}
for i = 2, #ARGV, 3 do
  local s = redis.call('ZSCORE', KEYS[2], ARGV[i])
  if s and (tonumber(s) == tonumber(ARGV[i+1]) or tonumber(s) == tonumber(ARGV[i+2])) and redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
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
// ARGV[6] seconds; set, then published, as Celery's backend does, unless
// the record there is a SUCCESS, which Celery never overwrites), the
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
  local cur = redis.call('GET', ARGV[4])
  if not (cur and string.find(cur, '"status":%s*"SUCCESS"')) then
    redis.call('SET', ARGV[4], ARGV[5], 'EX', ARGV[6])
    redis.call('PUBLISH', ARGV[4], ARGV[5])
  end
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

// redisBroker is kombu's Redis transport: a list per queue and priority,
// and the unacked hash and index of fetched messages.
type redisBroker struct {
	client  goredis.UniversalClient
	owned   bool
	vt      time.Duration // the visibility timeout
	expires time.Duration // how long a result record is kept
	log     *slog.Logger

	// fences is held for writing by a touch and for reading by a settle:
	// a settle never reads a message's times while a touch moves them.
	fences sync.RWMutex
}

func (b *redisBroker) ping(ctx context.Context) error { return b.client.Ping(ctx).Err() }

func (b *redisBroker) close() error {
	if b.owned {
		return b.client.Close()
	}
	return nil
}

func (b *redisBroker) held(int) {}

// poll: kombu's lists push nothing; a worker that found nothing looks
// again this soon.
func (b *redisBroker) poll() time.Duration { return 100 * time.Millisecond }

// send pushes each task on its queue's list for its priority (LPUSH, as
// kombu publishes), in one transaction.
func (b *redisBroker) send(ctx context.Context, tasks []next) error {
	pipe := b.client.TxPipeline()
	for _, n := range tasks {
		list, env, err := envelope(n.task, n.queue)
		if err != nil {
			return err
		}
		pipe.SAdd(ctx, "_kombu.binding."+n.queue, n.queue+sep+sep+n.queue)
		pipe.LPush(ctx, list, env)
	}
	_, err := pipe.Exec(ctx)
	return err
}

// fetch pops up to limit messages from queues in order, each queue's
// lists in kombu's order (priority 0 first), into kombu's unacked hash.
func (b *redisBroker) fetch(ctx context.Context, now time.Time, queues []string, limit, _ int) ([]*fetched, error) {
	keys := []string{unackedKey, indexKey}
	args := []any{limit, unixTime(now)}
	for _, q := range queues {
		for _, step := range []int{0, 3, 6, 9} {
			keys = append(keys, wire.PriorityList(q, step))
			args = append(args, q)
		}
	}
	v, err := fetchScript.Run(ctx, b.client, keys, args...).Slice()
	if err != nil {
		return nil, err
	}
	var out []*fetched
	for i := 0; i+2 < len(v); i += 3 {
		tag, _ := v[i].(string)
		raw, _ := v[i+1].(string)
		queue, _ := v[i+2].(string)
		if tag == "" {
			b.log.WarnContext(ctx, "docket: celery: a message that is not a kombu envelope was moved to the dead list", "queue", queue, "dead_list", DeadList(queue))
			continue
		}
		f := &fetched{tag: tag, raw: raw, queue: queue, score: unixTime(now)}
		f.task, _, f.err = wire.DecodeEnvelope([]byte(raw))
		out = append(out, f)
	}
	return out, nil
}

// upkeep restores the messages others fetched and lost: those not held
// for longer than the visibility timeout.
func (b *redisBroker) upkeep(ctx context.Context, now time.Time) {
	if n, err := b.restore(ctx, now.Add(-b.vt)); err != nil {
		b.log.WarnContext(ctx, "docket: celery: lapsed messages not restored", "err", err)
	} else if n > 0 {
		b.log.InfoContext(ctx, "docket: celery: messages unacknowledged past the visibility timeout were restored", "count", n)
	}
}

// restore puts back at the head of their lists the messages last held
// before cutoff, up to a thousand at a time.
func (b *redisBroker) restore(ctx context.Context, cutoff time.Time) (int, error) {
	tags, err := b.client.ZRangeByScore(ctx, indexKey, &goredis.ZRangeBy{Min: "-inf", Max: "(" + unixTime(cutoff), Count: 1000}).Result()
	if err != nil || len(tags) == 0 {
		return 0, err
	}
	vals, err := b.client.HMGet(ctx, unackedKey, tags...).Result()
	if err != nil {
		return 0, err
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
				b.client.ZRem(ctx, indexKey, tags[i])
			}
			continue
		}
		ok, err := restoreScript.Run(ctx, b.client, []string{unackedKey, indexKey}, tags[i], entry, unixTime(cutoff), queue, string(parts[0])).Int()
		if err != nil {
			return n, err
		}
		n += ok
	}
	return n, nil
}

// touch sets the index time of fs to now and reports which are still this
// process's. A touch whose answer is lost may have moved the times or
// not: both are kept as fences until a later touch succeeds.
func (b *redisBroker) touch(ctx context.Context, now time.Time, fs []*fetched) ([]bool, error) {
	b.fences.Lock()
	defer b.fences.Unlock()
	score := unixTime(now)
	args := make([]any, 0, 3*len(fs)+1)
	args = append(args, score)
	for _, f := range fs {
		alt := f.alt
		if alt == "" {
			alt = f.score
		}
		args = append(args, f.tag, f.score, alt)
	}
	v, err := touchScript.Run(ctx, b.client, []string{unackedKey, indexKey}, args...).Int64Slice()
	if err != nil {
		for _, f := range fs {
			f.alt = score
		}
		return nil, err
	}
	out := make([]bool, len(fs))
	for i, f := range fs {
		if i < len(v) && v[i] == 1 {
			f.score, f.alt = score, ""
			out[i] = true
		}
	}
	return out, nil
}

// settle runs ackScript for f: the acknowledgement, fenced on the times
// this process wrote for f, with the record, the dead-list entry and the
// messages sent on (or f itself, given back to the head of its list).
func (b *redisBroker) settle(ctx context.Context, f *fetched, s settlement) (lost bool, err error) {
	b.fences.RLock()
	defer b.fences.RUnlock()
	fence1, fence2 := f.score, f.score
	if f.alt != "" {
		fence2 = f.alt
	}
	args := []any{f.tag, fence1, fence2, "", "", 0, "", ""}
	if s.record != nil {
		raw, err := json.Marshal(s.record)
		if err != nil {
			return false, fmt.Errorf("task %s: result record: %w", f.task.ID, err)
		}
		args[3], args[4], args[5] = wire.MetaKey(s.record.TaskID), raw, int(b.expires/time.Second)
	}
	if s.dead != "" {
		args[6], args[7] = DeadList(f.queue), deadEntry(f, s.dead)
	}
	if s.giveBack {
		args = append(args, "R", f.queue, f.raw, f.queue)
	}
	for _, n := range s.next {
		list, env, err := envelope(n.task, n.queue)
		if err != nil {
			b.log.WarnContext(ctx, "docket: celery: a follow-up task was not sent", "task_id", f.task.ID, "next", n.task.Name, "err", err)
			continue
		}
		args = append(args, "L", list, env, n.queue)
	}
	n, err := ackScript.Run(ctx, b.client, []string{unackedKey, indexKey}, args...).Int()
	return n == 0, err
}
