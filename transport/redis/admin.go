package redis

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"
	goredis "github.com/redis/go-redis/v9"

	"github.com/docketq/docket/internal/wire"
	"github.com/docketq/docket/transport"
)

// The operations API (transport.Admin, transport.ScheduleAdmin). The key
// layout it adds is described in scripts.go.
//
// Counts come from sorted sets rather than counters: each is the ZCARD of
// a set the scripts keep anyway (the queue's ready set, its set of all
// tasks, the index sets Search walks), so a count cannot drift from what
// Search lists, and a task stored before the indexes is counted once a
// script indexes it. Ready and running tasks have no index set of their
// own: claiming and finishing a task, the hot path, then add one ZADD per
// task (into the set of its final state) and no index move. A Search for
// them walks the queue's set of all tasks, the state checked on each task
// (the ready ones are most of them while there is a backlog), or, for
// running tasks alone, the lease set, which holds no more tasks than the
// workers run.

var (
	_ transport.Admin         = (*Transport)(nil)
	_ transport.ScheduleAdmin = (*Transport)(nil)
)

// Index set names (see scripts.go): "1" scheduled and never attempted, "r"
// retrying, "4".."7" finished, "8" waiting workflow steps. "2" and "3"
// (ready, running) name no set:
// filters only.
const (
	ixRetrying = "r"
	ixReady    = "2"
	ixRunning  = "3"
)

// ixSets are the index sets a queue has.
var ixSets = []string{"1", ixRetrying, "4", "5", "6", "7", "8"}

// ixOf names the index set (or, ready and running, the filter) of a task
// in state st after att claims.
func ixOf(st transport.State, att int) string {
	if st == transport.StateScheduled && att > 0 {
		return ixRetrying
	}
	return strconv.Itoa(int(st))
}

// bandWidth is the width of one priority band of a ready set's scores:
// score = (9-priority)·bandWidth + due ms.
const bandWidth = int64(1) << 43

// Stats implements transport.Stater: ZCARDs of the index sets per queue,
// the head of each priority band of the ready set, and the minute hashes
// of the last hour, in one round trip.
func (t *Transport) Stats(ctx context.Context, p transport.StatsParams) (transport.Stats, error) {
	var out transport.Stats
	queues, err := t.rdb.SMembers(ctx, t.key("queues")).Result()
	if err != nil {
		return out, fmt.Errorf("docket: redis stats: %w", t.wrap(err))
	}
	slices.Sort(queues)
	pipe := t.rdb.Pipeline()
	// Per queue: the index sets, then the ready set and the set of all.
	counts := make([][]*goredis.IntCmd, len(queues))
	heads := make([][]*goredis.ZSliceCmd, len(queues))
	for i, q := range queues {
		for _, ix := range ixSets {
			counts[i] = append(counts[i], pipe.ZCard(ctx, t.key("x", q, ix)))
		}
		counts[i] = append(counts[i], pipe.ZCard(ctx, t.key("r", q)), pipe.ZCard(ctx, t.key("a", q)))
		for band := range int64(10) {
			heads[i] = append(heads[i], pipe.ZRangeByScoreWithScores(ctx, t.key("r", q), &goredis.ZRangeBy{
				Min: strconv.FormatInt(band*bandWidth, 10), Max: "(" + strconv.FormatInt((band+1)*bandWidth, 10), Count: 1,
			}))
		}
	}
	now := wire.Millis(p.Now)
	minute := now - now%60_000
	var minutes []int64
	var hist []*goredis.MapStringStringCmd
	for i := int64(59); i >= 0; i-- {
		m := minute - i*60_000
		minutes = append(minutes, m)
		hist = append(hist, pipe.HGetAll(ctx, t.key("m", strconv.FormatInt(m, 10))))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return out, fmt.Errorf("docket: redis stats: %w", t.wrap(err))
	}
	for i, q := range queues {
		qs := transport.QueueStats{Queue: q, Counts: map[transport.State]int64{}}
		var indexed int64
		for j, ix := range ixSets {
			n := counts[i][j].Val()
			indexed += n
			if ix == ixRetrying {
				qs.Retrying = n
			} else {
				st, _ := strconv.Atoi(ix)
				qs.Counts[transport.State(st)] = n
			}
		}
		ready, total := counts[i][len(ixSets)].Val(), counts[i][len(ixSets)+1].Val()
		qs.Counts[transport.StateReady] = ready
		// Running: the tasks in no other set. Never negative, even while
		// tasks of an earlier version are not all indexed yet.
		qs.Counts[transport.StateRunning] = max(0, total-indexed-ready)
		total = max(total, indexed+ready)
		var oldest int64 = -1
		for band, c := range heads[i] {
			if z := c.Val(); len(z) > 0 {
				if due := int64(z[0].Score) - int64(band)*bandWidth; oldest < 0 || due < oldest {
					oldest = due
				}
			}
		}
		if oldest >= 0 {
			qs.OldestReady = wire.FromMillis(oldest)
		}
		if total > 0 || oldest >= 0 {
			out.Queues = append(out.Queues, qs)
		}
	}
	for i, c := range hist {
		byQueue := map[string]*transport.MinuteStats{}
		for field, v := range c.Val() {
			cut := strings.LastIndexByte(field, ':')
			n, err := strconv.ParseInt(v, 10, 64)
			if cut < 0 || err != nil {
				continue
			}
			q := field[:cut]
			ms := byQueue[q]
			if ms == nil {
				ms = &transport.MinuteStats{Minute: wire.FromMillis(minutes[i]), Queue: q}
				byQueue[q] = ms
			}
			switch field[cut+1:] {
			case "s":
				ms.Succeeded += n
			case "f":
				ms.Failed += n
			}
		}
		var row []transport.MinuteStats
		for _, ms := range byQueue {
			row = append(row, *ms)
		}
		slices.SortFunc(row, func(a, b transport.MinuteStats) int { return cmp.Compare(a.Queue, b.Queue) })
		out.History = append(out.History, row...)
	}
	if out.History == nil {
		out.History = []transport.MinuteStats{} // kept, and empty: not "no history"
	}
	return out, nil
}

// Search bounds (the page and examination bounds are p.Bounds()).
const (
	searchChunk = 1000 // tasks read per round trip when filters remain
	// searchMaxSets bounds the index sets merged per walk: beyond it (many
	// queues and states) the queues' sets of all tasks are walked instead,
	// the states checked on each task.
	searchMaxSets = 64
	// searchMaxLeases bounds the lease set a search for running tasks
	// reads whole; beyond it, the queues' sets of all tasks are walked.
	searchMaxLeases = 100_000
)

// searchFields are the task fields Search returns (all but the attempt
// records and bookkeeping).
var searchFields = []string{"name", "queue", "state", "prio", "run_at", "exp", "att", "max", "tmo", "ttl", "owner",
	"cancel", "uk", "pay", "meta", "res", "err", "created", "started", "finished", "prog"}

// walk is one Search's plan: the index sets to merge and the filters the
// sets do not apply.
type walk struct {
	keys   []string // index sets, all score 0, merged in id order
	queues []string // the queue of each key
	// leases: the walk is over running, the ids of the lease set (sorted)
	// instead of keys.
	leases  bool
	running []string
	states  map[string]bool // the state filter, by index set name (ixOf)
	p       transport.SearchParams
	// filtered: some examined tasks may not match (filters beyond the
	// sets); otherwise a chunk of the limit's size is enough.
	filtered bool
}

// Search implements transport.Admin. It merges the sorted sets that the
// filter selects in id order with ZRANGEBYLEX from the cursor (each
// queue's index sets of the states asked for, or its set of all tasks for
// ready tasks or any state; for running tasks alone, the lease set, read
// whole), reads each examined task's filter fields in one pipeline, and
// the returned tasks' fields in another. At most p.Examine tasks are read
// per call.
func (t *Transport) Search(ctx context.Context, p transport.SearchParams) (transport.SearchResult, error) {
	var res transport.SearchResult
	limit, examine := p.Bounds()
	w := walk{p: p, states: map[string]bool{}}
	for _, s := range p.States {
		if !s.Valid() {
			return res, fmt.Errorf("docket: search: state %d: %w", s, transport.ErrInvalid)
		}
		w.states[ixOf(s, 0)] = true
	}
	if p.Retrying {
		w.states[ixRetrying] = true
	}
	queues := []string{p.Queue}
	if p.Queue == "" {
		var err error
		if queues, err = t.rdb.SMembers(ctx, t.key("queues")).Result(); err != nil {
			return res, fmt.Errorf("docket: redis search: %w", t.wrap(err))
		}
	}
	// The walk: the index sets of the states asked for; the lease set for
	// running tasks alone; else (ready tasks, which have no index set, no
	// state, or too many sets) the queues' sets of all tasks.
	if len(w.states) == 1 && w.states[ixRunning] {
		ids, err := t.rdb.ZRange(ctx, t.key("lease"), 0, searchMaxLeases).Result()
		if err != nil {
			return res, fmt.Errorf("docket: redis search: %w", t.wrap(err))
		}
		if len(ids) <= searchMaxLeases {
			slices.Sort(ids)
			w.leases, w.running, w.queues, w.filtered = true, ids, []string{""}, true
		}
	}
	switch {
	case w.leases:
	case len(w.states) == 0 || w.states[ixReady] || w.states[ixRunning] || len(queues)*len(w.states) > searchMaxSets:
		for _, q := range queues {
			w.keys, w.queues = append(w.keys, t.key("a", q)), append(w.queues, q)
		}
		w.filtered = len(w.states) > 0
	default:
		for _, q := range queues {
			for _, ix := range ixSets {
				if w.states[ix] {
					w.keys, w.queues = append(w.keys, t.key("x", q, ix)), append(w.queues, q)
				}
			}
		}
	}
	w.filtered = w.filtered || p.Name != "" || p.Text != "" || !p.Since.IsZero() || !p.Until.IsZero()
	if len(w.keys) == 0 && !w.leases {
		return res, nil
	}
	cursor := p.Cursor
	for examined := 0; examined < examine; {
		need := limit - len(res.Tasks)
		chunk := min(examine-examined, searchChunk)
		if !w.filtered {
			chunk = min(chunk, need)
		}
		ids, srcs, more, err := t.nextIDs(ctx, &w, cursor, chunk)
		if err != nil {
			return res, err
		}
		if len(ids) == 0 {
			res.Next = "" // the walk reached the end
			return res, nil
		}
		tasks, used, err := t.examine(ctx, &w, ids, srcs, need)
		if err != nil {
			return res, err
		}
		res.Tasks = append(res.Tasks, tasks...)
		examined += used
		cursor = ids[used-1]
		if used == len(ids) && !more {
			res.Next = "" // the walk reached the end
			return res, nil
		}
		res.Next = cursor
		if len(res.Tasks) >= limit {
			return res, nil
		}
	}
	return res, nil
}

// lexBounds returns the ZRANGEBYLEX bounds (min, max) of ids after cursor
// in the walk's order, within the id prefix's range.
func (w *walk) lexBounds(cursor string) (string, string) {
	prefix := w.p.IDPrefix
	end := prefixEnd(prefix) // ids with the prefix are in [prefix, end)
	lo, hi := "-", "+"
	if prefix != "" {
		lo = "[" + prefix
	}
	if end != "" {
		hi = "(" + end
	}
	if cursor != "" {
		if w.p.Order == transport.NewestFirst {
			if end == "" || cursor < end {
				hi = "(" + cursor
			}
		} else if cursor >= prefix {
			lo = "(" + cursor
		}
	}
	return lo, hi
}

// lexAbove reports whether id is within the ZRANGEBYLEX lower bound lo.
func lexAbove(id, lo string) bool {
	switch {
	case lo == "-":
		return true
	case lo[0] == '(':
		return id > lo[1:]
	}
	return id >= lo[1:]
}

// lexBelow reports whether id is within the ZRANGEBYLEX upper bound hi.
func lexBelow(id, hi string) bool {
	switch {
	case hi == "+":
		return true
	case hi[0] == '(':
		return id < hi[1:]
	}
	return id <= hi[1:]
}

// prefixEnd returns the least string greater than every string that
// starts with prefix, or "" when there is none (or prefix is empty).
func prefixEnd(prefix string) string {
	b := []byte(prefix)
	for len(b) > 0 && b[len(b)-1] == 0xff {
		b = b[:len(b)-1]
	}
	if len(b) == 0 {
		return ""
	}
	b[len(b)-1]++
	return string(b)
}

// nextIDs reads the next n ids after cursor from the walk's index sets, in
// one MULTI (a consistent view), merged in the walk's order: ids, the key
// each came from, and whether more ids follow them.
func (t *Transport) nextIDs(ctx context.Context, w *walk, cursor string, n int) ([]string, []int, bool, error) {
	lo, hi := w.lexBounds(cursor)
	if w.leases {
		var ids []string
		for i := range w.running {
			id := w.running[i]
			if w.p.Order == transport.NewestFirst {
				id = w.running[len(w.running)-1-i]
			}
			if lexAbove(id, lo) && lexBelow(id, hi) {
				if ids = append(ids, id); len(ids) > n {
					break
				}
			}
		}
		more := len(ids) > n
		ids = ids[:min(n, len(ids))]
		return ids, make([]int, len(ids)), more, nil
	}
	pipe := t.rdb.TxPipeline()
	cmds := make([]*goredis.StringSliceCmd, len(w.keys))
	for i, key := range w.keys {
		by := &goredis.ZRangeBy{Min: lo, Max: hi, Count: int64(n + 1)}
		if w.p.Order == transport.NewestFirst {
			cmds[i] = pipe.ZRevRangeByLex(ctx, key, by)
		} else {
			cmds[i] = pipe.ZRangeByLex(ctx, key, by)
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return nil, nil, false, fmt.Errorf("docket: redis search: %w", t.wrap(err))
	}
	type entry struct {
		id  string
		src int
	}
	var all []entry
	for i, c := range cmds {
		for _, id := range c.Val() {
			all = append(all, entry{id, i})
		}
	}
	slices.SortFunc(all, func(a, b entry) int {
		if w.p.Order == transport.NewestFirst {
			return cmp.Compare(b.id, a.id)
		}
		return cmp.Compare(a.id, b.id)
	})
	all = slices.CompactFunc(all, func(a, b entry) bool { return a.id == b.id })
	// Each set gave its n+1 first ids, so the n first of the merge are
	// the walk's next n, and more follow exactly when the merge has more.
	more := len(all) > n
	all = all[:min(n, len(all))]
	ids, srcs := make([]string, len(all)), make([]int, len(all))
	for i, e := range all {
		ids[i], srcs[i] = e.id, e.src
	}
	return ids, srcs, more, nil
}

// examine reads the tasks ids (in walk order) and returns those that
// match, at most need of them, with how many ids it used: all of them, or
// up to the need-th match.
func (t *Transport) examine(ctx context.Context, w *walk, ids []string, srcs []int, need int) ([]transport.Info, int, error) {
	fields := []string{"state", "att", "name", "created", "queue"}
	if w.p.Text != "" {
		fields = append(fields, "pay", "err", "meta")
	}
	vals, err := t.hmget(ctx, ids, fields)
	if err != nil {
		return nil, 0, err
	}
	var match []string
	var gone []int
	used := len(ids)
	for i, v := range vals {
		if v[0] == nil {
			gone = append(gone, i) // deleted meanwhile, or by an older version
			continue
		}
		h := map[string]string{}
		for j, f := range fields {
			if s, ok := v[j].(string); ok {
				h[f] = s
			}
		}
		if w.matches(ids[i], h) {
			match = append(match, ids[i])
			if len(match) == need {
				used = i + 1
				break
			}
		}
	}
	if len(gone) > 0 {
		t.heal(ctx, w, ids, srcs, gone)
	}
	if len(match) == 0 {
		return nil, used, nil
	}
	full, err := t.hmget(ctx, match, searchFields)
	if err != nil {
		return nil, 0, err
	}
	var out []transport.Info
	for i, v := range full {
		h := map[string]string{}
		for j, f := range searchFields {
			if s, ok := v[j].(string); ok {
				h[f] = s
			}
		}
		if h["state"] == "" || !w.matches(match[i], h) {
			continue // changed since the first read
		}
		in, err := infoFrom(match[i], h)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, in)
	}
	return out, used, nil
}

// matches applies the filters to a task's fields (those examine read).
func (w *walk) matches(id string, h map[string]string) bool {
	p := &w.p
	st, _ := strconv.Atoi(h["state"])
	att, _ := strconv.Atoi(h["att"])
	if len(w.states) > 0 && !w.states[ixOf(transport.State(st), att)] {
		return false
	}
	if p.Name != "" && h["name"] != p.Name || p.Queue != "" && h["queue"] != p.Queue || !strings.HasPrefix(id, p.IDPrefix) {
		return false
	}
	if !p.Since.IsZero() || !p.Until.IsZero() {
		created, _ := strconv.ParseInt(h["created"], 10, 64)
		if !p.Since.IsZero() && created < wire.Millis(p.Since) || !p.Until.IsZero() && created >= wire.Millis(p.Until) {
			return false
		}
	}
	if p.Text != "" && !strings.Contains(h["pay"], p.Text) && !strings.Contains(h["err"], p.Text) && !strings.Contains(h["meta"], p.Text) {
		return false
	}
	return true
}

// hmget reads fields of the tasks ids in one pipeline.
func (t *Transport) hmget(ctx context.Context, ids []string, fields []string) ([][]any, error) {
	pipe := t.rdb.Pipeline()
	cmds := make([]*goredis.SliceCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HMGet(ctx, t.key("t", id), fields...)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return nil, fmt.Errorf("docket: redis search: %w", t.wrap(err))
	}
	out := make([][]any, len(ids))
	for i, c := range cmds {
		out[i] = c.Val()
		if len(out[i]) < len(fields) {
			out[i] = make([]any, len(fields))
		}
	}
	return out, nil
}

// heal removes from the indexes the ids whose task is gone: a process of
// the version before the indexes pruned it. Best effort: a failure only
// leaves them for the next walk.
func (t *Transport) heal(ctx context.Context, w *walk, ids []string, srcs []int, gone []int) {
	args := []any{0}
	for _, i := range gone {
		if q := w.queues[srcs[i]]; q != "" { // not from the lease set
			args = append(args, q, ids[i])
		}
	}
	if args[0] = (len(args) - 1) / 2; args[0] == 0 {
		return
	}
	if _, err := t.run(ctx, healScript, args...); err != nil {
		t.log.Debug("docket: redis search could not drop deleted tasks from its index", "err", err)
	}
}

// Act implements transport.Admin in one script call for all of p.IDs.
func (t *Transport) Act(ctx context.Context, p transport.ActParams) (transport.ActResult, error) {
	var res transport.ActResult
	var name string
	switch p.Action {
	case transport.ActionRetry:
		if p.Attempts < 1 {
			return res, fmt.Errorf("docket: retry: %d attempts: want at least 1: %w", p.Attempts, transport.ErrInvalid)
		}
		name = "retry"
	case transport.ActionCancel:
		name = "cancel"
	case transport.ActionDelete:
		name = "delete"
	case transport.ActionRunNow:
		name = "run"
	default:
		return res, fmt.Errorf("docket: act: unknown action %d: %w", p.Action, transport.ErrInvalid)
	}
	if len(p.IDs) == 0 {
		return res, nil
	}
	args := make([]any, 0, 4+len(p.IDs))
	args = append(args, wire.Millis(p.Now), name, max(p.Attempts, 0), len(p.IDs))
	for _, id := range p.IDs {
		args = append(args, id)
	}
	v, err := t.run(ctx, actScript, args...)
	if err != nil {
		return res, fmt.Errorf("docket: redis %s tasks: %w", p.Action, err)
	}
	r := row(v)
	for _, x := range row(r[0]) {
		if id, ok := x.(string); ok {
			res.Changed = append(res.Changed, id)
		}
	}
	res.Skipped, res.Missing = int(num(r, 1)), int(num(r, 2))
	return res, nil
}

// Paused implements transport.Admin.
func (t *Transport) Paused(ctx context.Context, p transport.PausedParams) ([]transport.QueuePause, error) {
	h, err := t.rdb.HGetAll(ctx, t.key("paused")).Result()
	if err != nil {
		return nil, fmt.Errorf("docket: redis read paused queues: %w", t.wrap(err))
	}
	out := make([]transport.QueuePause, 0, len(h))
	for q, since := range h {
		ms, _ := strconv.ParseInt(since, 10, 64)
		out = append(out, transport.QueuePause{Queue: q, Since: wire.FromMillis(ms)})
	}
	slices.SortFunc(out, func(a, b transport.QueuePause) int { return cmp.Compare(a.Queue, b.Queue) })
	return out, nil
}

// SetPaused implements transport.Admin. A resume wakes the queue's
// waiting workers in every process.
func (t *Transport) SetPaused(ctx context.Context, p transport.SetPausedParams) error {
	if p.Queue == "" {
		return fmt.Errorf("docket: pause: empty queue name: %w", transport.ErrInvalid)
	}
	if _, err := t.run(ctx, setPausedScript, wire.Millis(p.Now), p.Queue, flag(p.Paused)); err != nil {
		return fmt.Errorf("docket: redis pause queue %s: %w", p.Queue, err)
	}
	return nil
}

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// Heartbeat implements transport.Admin.
func (t *Transport) Heartbeat(ctx context.Context, p transport.HeartbeatParams) error {
	w := p.Worker
	if w.ID == "" {
		return fmt.Errorf("docket: heartbeat: empty worker id: %w", transport.ErrInvalid)
	}
	raw, err := wire.EncodeWorker(&w)
	if err != nil {
		return fmt.Errorf("docket: heartbeat: %w: %w", transport.ErrInvalid, err)
	}
	if _, err := t.runLease(ctx, heartbeatScript, wire.Millis(p.Now), w.ID, string(raw), wire.Millis(w.Expires), flag(p.Gone)); err != nil {
		return fmt.Errorf("docket: redis heartbeat: %w", err)
	}
	return nil
}

// Workers implements transport.Admin: the workers whose heartbeat expires
// after p.Now.
func (t *Transport) Workers(ctx context.Context, p transport.WorkersParams) ([]transport.WorkerInfo, error) {
	ids, err := t.rdb.ZRangeByScore(ctx, t.key("wexp"), &goredis.ZRangeBy{Min: "(" + strconv.FormatInt(wire.Millis(p.Now), 10), Max: "+inf"}).Result()
	if err != nil {
		return nil, fmt.Errorf("docket: redis read workers: %w", t.wrap(err))
	}
	if len(ids) == 0 {
		return nil, nil
	}
	vals, err := t.rdb.HMGet(ctx, t.key("workers"), ids...).Result()
	if err != nil {
		return nil, fmt.Errorf("docket: redis read workers: %w", t.wrap(err))
	}
	var out []transport.WorkerInfo
	for _, v := range vals {
		s, ok := v.(string)
		if !ok {
			continue // gone meanwhile
		}
		w, err := wire.DecodeWorker([]byte(s))
		if err != nil || !w.Expires.After(p.Now) {
			continue // not docket's, or expired meanwhile
		}
		out = append(out, w)
	}
	return out, nil
}

// SetProgress implements transport.Admin, fenced on the lease as Finish.
func (t *Transport) SetProgress(ctx context.Context, p transport.ProgressParams) (transport.ProgressResult, error) {
	v, err := t.runLease(ctx, progressScript, p.Lease.ID, p.Lease.Attempt, p.Lease.Owner, string(p.Value))
	if err != nil {
		return transport.ProgressResult{}, fmt.Errorf("docket: redis progress of %s: %w", p.Lease.ID, err)
	}
	n, _ := v.(int64)
	return transport.ProgressResult{Lost: n == 0}, nil
}

// SchedulePause implements transport.ScheduleAdmin.
func (t *Transport) SchedulePause(ctx context.Context, p transport.SchedulePauseParams) error {
	v, err := t.run(ctx, schedulePauseScript, wire.Millis(p.Now), p.Name, flag(p.Paused))
	if err != nil {
		return fmt.Errorf("docket: redis pause schedule %s: %w", p.Name, err)
	}
	if n, _ := v.(int64); n == 0 {
		return fmt.Errorf("docket: schedule %s: %w", p.Name, transport.ErrNotFound)
	}
	return nil
}

// ScheduleTrigger implements transport.ScheduleAdmin: the stored template,
// with id p.ID and created now, enqueued as Enqueue does, in the script
// that records it as the schedule's last task.
func (t *Transport) ScheduleTrigger(ctx context.Context, p transport.ScheduleTriggerParams) (string, error) {
	if p.ID == "" {
		return "", fmt.Errorf("docket: trigger schedule %s: empty task id: %w", p.Name, transport.ErrInvalid)
	}
	v, err := t.rdb.HMGet(ctx, t.key("s", p.Name), "spec", "tmpl").Result()
	if err != nil {
		return "", fmt.Errorf("docket: redis read schedule %s: %w", p.Name, t.wrap(err))
	}
	if v[0] == nil {
		return "", fmt.Errorf("docket: schedule %s: %w", p.Name, transport.ErrNotFound)
	}
	raw, _ := v[1].(string)
	if raw == "" {
		return "", fmt.Errorf("docket: trigger schedule %s: no task template stored (no scheduler of this version has started it): %w", p.Name, transport.ErrInvalid)
	}
	var m transport.Message
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		return "", fmt.Errorf("docket: trigger schedule %s: stored template: %w: %w", p.Name, transport.ErrIncompatible, err)
	}
	m.ID, m.Created, m.ETA, m.ReturnExisting = p.ID, p.Now, time.Time{}, false
	args, err := messageArgs([]any{wire.Millis(p.Now), p.Name, ulid.Make().String()}, &m)
	if err != nil {
		return "", err
	}
	r, err := t.run(ctx, scheduleTriggerScript, args...)
	if err != nil {
		return "", fmt.Errorf("docket: redis trigger schedule %s: %w", p.Name, err)
	}
	switch f := row(r); str(f, 0) {
	case "ok":
		return str(f, 1), nil
	case "dup":
		return "", &transport.DuplicateError{ID: str(f, 1), UniqueKey: str(f, 2), ExistingID: str(f, 3)}
	default:
		return "", fmt.Errorf("docket: schedule %s: %w", p.Name, transport.ErrNotFound)
	}
}

// layoutVersion marks a prefix whose tasks are all indexed ({P}:layout).
const layoutVersion = "2"

// upgrade indexes the tasks stored by a version of docket that kept no
// index sets, once per prefix: it scans the task keys (SCAN, a pass over
// the node's keyspace) and indexes them 500 per script call, then records
// the layout. Tasks that processes of the previous version change later
// are indexed again when a process of this version changes them.
func (t *Transport) upgrade(ctx context.Context) error {
	v, err := t.rdb.Get(ctx, t.key("layout")).Result()
	if err == nil && v == layoutVersion {
		return nil
	}
	if err != nil && !errors.Is(err, goredis.Nil) {
		return t.wrap(err)
	}
	node, err := t.keyNode(ctx)
	if err != nil {
		return t.wrap(err)
	}
	prefix := t.key("t", "")
	batch := []any{0}
	send := func() error {
		if len(batch) == 1 {
			return nil
		}
		batch[0] = len(batch) - 1
		_, err := t.run(ctx, reindexScript, batch...)
		batch = batch[:1]
		return err
	}
	iter := node.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		batch = append(batch, strings.TrimPrefix(iter.Val(), prefix))
		if len(batch) > 500 {
			if err := send(); err != nil {
				return err
			}
		}
	}
	if err := iter.Err(); err != nil {
		return t.wrap(err)
	}
	if err := send(); err != nil {
		return err
	}
	return t.wrap(t.rdb.Set(ctx, t.key("layout"), layoutVersion, 0).Err())
}

// attemptRecord is one element of a task's 'atts' field (scripts.go).
type attemptRecord struct {
	N        int    `json:"n"`
	Owner    string `json:"owner"`
	Started  int64  `json:"started"`
	Finished int64  `json:"finished"`
	State    int    `json:"state"`
	Err      string `json:"err"`
}

// decodeAttempts reads a task's attempt records; a field it cannot read
// (not written by docket) gives none.
func decodeAttempts(raw string) []transport.Attempt {
	if raw == "" {
		return nil
	}
	var recs []attemptRecord
	if json.Unmarshal([]byte(raw), &recs) != nil {
		return nil
	}
	out := make([]transport.Attempt, len(recs))
	for i, r := range recs {
		out[i] = transport.Attempt{N: r.N, Owner: r.Owner, Started: wire.FromMillis(r.Started), Finished: wire.FromMillis(r.Finished),
			State: transport.State(r.State), Error: r.Err}
	}
	return out
}
