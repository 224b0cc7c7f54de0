package redis_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/docketq/docket/transport"
	"github.com/docketq/docket/transport/redis"
)

// Focused tests of the operations API on the Redis transport: each method,
// and the invariant behind Stats and Search: every task is in exactly the
// index sets its state calls for, whatever changed it.

var bg = context.Background()

// env is a transport on a fresh prefix, with a raw client to inspect its
// keys.
type env struct {
	t      *testing.T
	tr     *redis.Transport
	rdb    *goredis.Client
	prefix string
	now    time.Time
}

func newEnv(t *testing.T) *env {
	t.Helper()
	u, err := url.Parse(freshURL(t))
	if err != nil {
		t.Fatal(err)
	}
	opts, err := goredis.ParseURL(serverURL(t))
	if err != nil {
		t.Fatal(err)
	}
	rdb := goredis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	e := &env{t: t, rdb: rdb, prefix: u.Query().Get("prefix"), now: time.Date(2031, 3, 4, 5, 6, 0, 0, time.UTC)}
	e.tr = e.open()
	return e
}

func (e *env) open() *redis.Transport {
	e.t.Helper()
	tr, err := redis.New(bg, e.rdb, redis.Options{Prefix: e.prefix})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { tr.Close() })
	return tr
}

func (e *env) key(parts ...string) string { return "{" + e.prefix + "}:" + strings.Join(parts, ":") }

func tmsg(id string, mods ...func(*transport.Message)) transport.Message {
	m := transport.Message{ID: id, Name: "t.x", Queue: "default", Payload: []byte(`{}`), MaxAttempts: 3, ResultTTL: time.Hour}
	for _, f := range mods {
		f(&m)
	}
	return m
}

func (e *env) enqueue(at time.Time, ms ...transport.Message) {
	e.t.Helper()
	for i := range ms {
		if ms[i].Created.IsZero() {
			ms[i].Created = at
		}
	}
	if _, err := e.tr.Enqueue(bg, transport.EnqueueParams{Now: at, Messages: ms}); err != nil {
		e.t.Fatalf("enqueue: %v", err)
	}
}

func (e *env) claim(at time.Time, owner string, limit int, queues ...string) []transport.Delivery {
	e.t.Helper()
	if len(queues) == 0 {
		queues = []string{"default"}
	}
	r, err := e.tr.Claim(bg, transport.ClaimParams{Now: at, Owner: owner, Queues: queues, Limit: limit, LeaseUntil: at.Add(30 * time.Second)})
	if err != nil {
		e.t.Fatalf("claim: %v", err)
	}
	return r.Deliveries
}

func (e *env) finish(at time.Time, os ...transport.Outcome) []transport.FinishResult {
	e.t.Helper()
	r, err := e.tr.Finish(bg, transport.FinishParams{Now: at, Items: os})
	if err != nil {
		e.t.Fatalf("finish: %v", err)
	}
	return r
}

func (e *env) get(id string) transport.Info {
	e.t.Helper()
	in, err := e.tr.Get(bg, transport.GetParams{Now: e.now, ID: id})
	if err != nil {
		e.t.Fatalf("get %s: %v", id, err)
	}
	return in
}

func (e *env) act(action transport.Action, attempts int, ids ...string) transport.ActResult {
	e.t.Helper()
	r, err := e.tr.Act(bg, transport.ActParams{Now: e.now, Action: action, IDs: ids, Attempts: attempts})
	if err != nil {
		e.t.Fatalf("act %v: %v", action, err)
	}
	return r
}

func (e *env) stats(at time.Time) (map[string]transport.QueueStats, transport.Stats) {
	e.t.Helper()
	st, err := e.tr.Stats(bg, transport.StatsParams{Now: at})
	if err != nil {
		e.t.Fatalf("stats: %v", err)
	}
	out := map[string]transport.QueueStats{}
	for _, q := range st.Queues {
		out[q.Queue] = q
	}
	return out, st
}

// searchAll pages through a search, checking the order and that no id
// comes twice, and returns the ids and the number of calls.
func (e *env) searchAll(p transport.SearchParams) ([]string, int) {
	e.t.Helper()
	var all []string
	for calls := 1; calls < 10_000; calls++ {
		p.Now = e.now
		res, err := e.tr.Search(bg, p)
		if err != nil {
			e.t.Fatalf("search %+v: %v", p, err)
		}
		for _, in := range res.Tasks {
			all = append(all, in.ID)
		}
		if res.Next == "" {
			e.checkOrder(all, p.Order)
			return all, calls
		}
		p.Cursor = res.Next
	}
	e.t.Fatal("search does not end")
	return nil, 0
}

func (e *env) checkOrder(ids []string, o transport.Order) {
	e.t.Helper()
	for i := 1; i < len(ids); i++ {
		if o == transport.OldestFirst && ids[i] <= ids[i-1] || o == transport.NewestFirst && ids[i] >= ids[i-1] {
			e.t.Fatalf("ids out of order or repeated at %d: %v", i, ids)
		}
	}
}

func ids(ds []transport.Delivery) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.ID)
	}
	return out
}

// stateKey names a task's state as Stats and Search tell them apart: "r"
// for a scheduled task that was attempted, else the state's number.
func stateKey(st, att string) string {
	if st == "1" && att != "0" {
		return "r"
	}
	return st
}

// ixOf is the index set a task's state calls for (as the scripts name it):
// "0", none, for ready and running tasks.
func ixOf(st, att string) string {
	if st == "2" || st == "3" {
		return "0"
	}
	return stateKey(st, att)
}

// checkIndex verifies the index invariant against the task hashes: each
// task is in its queue's set of all tasks and in the one state set its
// 'ix' field names (none for ready and running tasks), which its state
// calls for; no set holds anything else; the set of queues is the queues
// that have tasks. It returns each task's queue, index set and state key
// by id.
func (e *env) checkIndex() map[string][3]string {
	e.t.Helper()
	tasks := map[string][3]string{} // id -> queue, ix, state key
	for _, key := range e.scan(e.key("t", "*")) {
		id := strings.TrimPrefix(key, e.key("t", ""))
		f, err := e.rdb.HMGet(bg, key, "state", "att", "queue", "ix").Result()
		if err != nil {
			e.t.Fatal(err)
		}
		st, att, q, ix := f[0].(string), f[1].(string), f[2].(string), fmt.Sprint(f[3])
		if want := ixOf(st, att); ix != want {
			e.t.Errorf("task %s: state %s attempt %s indexed as %q, want %q", id, st, att, ix, want)
		}
		tasks[id] = [3]string{q, ix, stateKey(st, att)}
	}
	queues := map[string]bool{}
	for _, v := range tasks {
		queues[v[0]] = true
	}
	members := func(key string) []string {
		m, err := e.rdb.ZRange(bg, key, 0, -1).Result()
		if err != nil {
			e.t.Fatal(err)
		}
		return m
	}
	inAll := map[string]int{}
	for _, key := range e.scan(e.key("a", "*")) {
		q := strings.TrimPrefix(key, e.key("a", ""))
		for _, id := range members(key) {
			inAll[id]++
			if tasks[id][0] != q {
				e.t.Errorf("set of all tasks of %s holds %s (task %v)", q, id, tasks[id])
			}
		}
	}
	inState := map[string]int{}
	for _, key := range e.scan(e.key("x", "*")) {
		rest := strings.TrimPrefix(key, e.key("x", ""))
		cut := strings.LastIndexByte(rest, ':')
		q, ix := rest[:cut], rest[cut+1:]
		for _, id := range members(key) {
			inState[id]++
			if tasks[id][0] != q || tasks[id][1] != ix {
				e.t.Errorf("index %s:%s holds %s (task %v)", q, ix, id, tasks[id])
			}
		}
	}
	for id, v := range tasks {
		want := 1
		if v[1] == "0" {
			want = 0
		}
		if inAll[id] != 1 || inState[id] != want {
			e.t.Errorf("task %s (%v) is in %d sets of all tasks and %d state sets, want 1 and %d", id, v, inAll[id], inState[id], want)
		}
	}
	qs, err := e.rdb.SMembers(bg, e.key("queues")).Result()
	if err != nil {
		e.t.Fatal(err)
	}
	slices.Sort(qs)
	var want []string
	for q := range queues {
		want = append(want, q)
	}
	slices.Sort(want)
	if !slices.Equal(qs, want) {
		t := e.t
		t.Errorf("queues = %v, want %v", qs, want)
	}
	return tasks
}

func (e *env) scan(pattern string) []string {
	var out []string
	iter := e.rdb.Scan(bg, 0, pattern, 1000).Iterator()
	for iter.Next(bg) {
		out = append(out, iter.Val())
	}
	if err := iter.Err(); err != nil {
		e.t.Fatal(err)
	}
	return out
}

func TestAdminStatsCounts(t *testing.T) {
	e := newEnv(t)
	now := e.now
	want := func(q string, counts map[transport.State]int64, retrying int64) {
		t.Helper()
		got, _ := e.stats(now)
		qs := got[q]
		for _, st := range []transport.State{1, 2, 3, 4, 5, 6, 7} {
			if qs.Counts[st] != counts[st] {
				t.Errorf("%s %v = %d, want %d (all: %v)", q, st, qs.Counts[st], counts[st], qs.Counts)
			}
		}
		if qs.Retrying != retrying {
			t.Errorf("%s retrying = %d, want %d", q, qs.Retrying, retrying)
		}
		e.checkIndex()
	}
	e.enqueue(now, tmsg("a"), tmsg("b"), tmsg("c"), tmsg("d"), tmsg("e", func(m *transport.Message) { m.ETA = now.Add(time.Hour) }))
	want("default", map[transport.State]int64{1: 1, 2: 4}, 0)
	d := e.claim(now, "w", 3)
	want("default", map[transport.State]int64{1: 1, 2: 1, 3: 3}, 0)
	e.finish(now, transport.Outcome{Lease: d[0].Lease(), State: transport.StateSucceeded},
		transport.Outcome{Lease: d[1].Lease(), State: transport.StateFailed, Error: "x"},
		transport.Outcome{Lease: d[2].Lease(), State: transport.StateScheduled, Error: "again", RunAt: now.Add(time.Minute)})
	want("default", map[transport.State]int64{1: 1, 2: 1, 4: 1, 5: 1}, 1)
	e.act(transport.ActionRetry, 1, "b")
	want("default", map[transport.State]int64{1: 1, 2: 2, 4: 1}, 1)
	e.act(transport.ActionDelete, 0, "a", "d")
	want("default", map[transport.State]int64{1: 1, 2: 1}, 1)
	e.act(transport.ActionCancel, 0, "e")
	want("default", map[transport.State]int64{2: 1, 6: 1}, 1)
	// Deleting every task of a queue drops it from Stats and the set of
	// queues.
	e.act(transport.ActionDelete, 0, "b", "c", "e")
	if got, _ := e.stats(now); len(got) != 0 {
		t.Errorf("stats after deleting every task: %+v", got)
	}
	e.checkIndex()
}

// OldestReady is the earliest due time across priority bands, not the
// head of the ready set (which is ordered by priority first).
func TestAdminStatsOldestReady(t *testing.T) {
	e := newEnv(t)
	now := e.now
	e.enqueue(now.Add(time.Minute), tmsg("hi", func(m *transport.Message) { m.Priority = 9 }))
	e.enqueue(now, tmsg("lo", func(m *transport.Message) { m.Priority = 0 }))
	e.enqueue(now.Add(2*time.Minute), tmsg("mid", func(m *transport.Message) { m.Priority = 5 }))
	got, _ := e.stats(now.Add(3 * time.Minute))
	if o := got["default"].OldestReady; !o.Equal(now) {
		t.Errorf("OldestReady = %v, want %v (the priority-0 task)", o, now)
	}
	e.claim(now.Add(3*time.Minute), "w", 3)
	if got, _ := e.stats(now); !got["default"].OldestReady.IsZero() {
		t.Errorf("OldestReady with nothing ready = %v", got["default"].OldestReady)
	}
}

func TestAdminHistory(t *testing.T) {
	e := newEnv(t)
	m0 := e.now // a minute's start
	e.enqueue(m0, tmsg("s1"), tmsg("f1"), tmsg("r1"), tmsg("c1"), tmsg("g1"),
		tmsg("lost", func(m *transport.Message) { m.MaxAttempts = 1 }), tmsg("lost2", func(m *transport.Message) { m.MaxAttempts = 1 }))
	e.enqueue(m0, tmsg("mail1", func(m *transport.Message) { m.Queue = "mail" }))
	d := e.claim(m0, "w", 7)
	if len(d) != 7 {
		t.Fatalf("claimed %v", ids(d))
	}
	lease := map[string]transport.Lease{}
	for _, x := range d {
		lease[x.ID] = x.Lease()
	}
	at := m0.Add(10 * time.Second)
	e.finish(at, transport.Outcome{Lease: lease["s1"], State: transport.StateSucceeded},
		transport.Outcome{Lease: lease["f1"], State: transport.StateFailed, Error: "x"},
		transport.Outcome{Lease: lease["r1"], State: transport.StateScheduled, RunAt: at.Add(time.Hour)},
		transport.Outcome{Lease: lease["c1"], State: transport.StateCancelled}, // not counted
		transport.Outcome{Lease: lease["g1"], State: transport.StateReady})     // released: not counted
	// The next minute: lost's lease lapses and a claim ends it failed;
	// lost2's lapses and a claim by id ends it failed.
	m1 := m0.Add(time.Minute)
	c, ok := any(e.tr).(transport.IDClaimer)
	if !ok {
		t.Fatal("no IDClaimer")
	}
	if r, err := c.ClaimIDs(bg, transport.ClaimIDsParams{Now: m1, Owner: "w2", LeaseUntil: m1.Add(time.Minute), IDs: []string{"lost2"}}); err != nil || r[0].State != transport.StateFailed || !r[0].Ended {
		t.Fatalf("claim by id of a lost task = %+v, %v", r, err)
	}
	e.claim(m1, "w2", 5)
	dm := e.claim(m1, "w2", 1, "mail")
	e.finish(m1, transport.Outcome{Lease: dm[0].Lease(), State: transport.StateSucceeded})
	_, st := e.stats(m1.Add(30 * time.Second))
	type key struct {
		min time.Time
		q   string
	}
	got := map[key][2]int64{}
	for i, h := range st.History {
		if i > 0 && h.Minute.Before(st.History[i-1].Minute) {
			t.Errorf("history not oldest first: %+v", st.History)
		}
		got[key{h.Minute, h.Queue}] = [2]int64{h.Succeeded, h.Failed}
	}
	want := map[key][2]int64{{m0, "default"}: {1, 2}, {m1, "default"}: {0, 2}, {m1, "mail"}: {1, 0}}
	if len(got) != len(want) {
		t.Errorf("history = %+v, want %v", st.History, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("history %v %s = %v, want %v (all %+v)", k.min, k.q, got[k], v, st.History)
		}
	}
	// The minute hashes expire by themselves.
	ttl, err := e.rdb.TTL(bg, e.key("m", strconv.FormatInt(m0.UnixMilli(), 10))).Result()
	if err != nil || ttl <= time.Hour || ttl > 2*time.Hour {
		t.Errorf("minute hash TTL = %v, %v; want about 2 h", ttl, err)
	}
	// An hour later, m0 has left the window (the last 60 minutes).
	if _, st := e.stats(m0.Add(60 * time.Minute)); len(st.History) != 2 {
		t.Errorf("history an hour later = %+v, want only m1's rows", st.History)
	}
}

func TestAdminAttempts(t *testing.T) {
	e := newEnv(t)
	now := e.now
	// Twenty-five failed attempts: the first record and the latest ones
	// are kept, transport.MaxAttemptRecords in all.
	e.enqueue(now, tmsg("many", func(m *transport.Message) { m.MaxAttempts = 30 }))
	at := now
	for i := 1; i <= 25; i++ {
		d := e.claim(at, fmt.Sprintf("w%d", i), 1)
		if len(d) != 1 || d[0].Attempt != i {
			t.Fatalf("attempt %d: %+v", i, d)
		}
		e.finish(at.Add(time.Second), transport.Outcome{Lease: d[0].Lease(), State: transport.StateScheduled, Error: fmt.Sprintf("err %d", i), RunAt: at.Add(time.Second)})
		at = at.Add(2 * time.Second)
	}
	in := e.get("many")
	if len(in.Attempts) != transport.MaxAttemptRecords {
		t.Fatalf("%d records, want %d", len(in.Attempts), transport.MaxAttemptRecords)
	}
	first, second, last := in.Attempts[0], in.Attempts[1], in.Attempts[len(in.Attempts)-1]
	if first.N != 1 || first.Owner != "w1" || first.Error != "err 1" || first.State != transport.StateScheduled || !first.Started.Equal(now) || !first.Finished.Equal(now.Add(time.Second)) {
		t.Errorf("first record = %+v", first)
	}
	if second.N != 25-transport.MaxAttemptRecords+2 || last.N != 25 || last.Owner != "w25" {
		t.Errorf("second record %+v, last %+v; want the latest kept", second, last)
	}
	if len(e.checkIndex()) != 1 {
		t.Error("lost a task")
	}

	// A release, a cancel pending at a retry, a failure.
	q3 := func(m *transport.Message) { m.Queue = "q3" }
	e.enqueue(now, tmsg("rel", q3), tmsg("canc", q3), tmsg("fail", q3))
	at = at.Add(time.Second)
	d := e.claim(at, "wa", 3, "q3")
	if len(d) != 3 {
		t.Fatalf("claimed %v", ids(d))
	}
	e.act(transport.ActionCancel, 0, "canc")
	byID := map[string]transport.Lease{}
	for _, x := range d {
		byID[x.ID] = x.Lease()
	}
	e.finish(at, transport.Outcome{Lease: byID["rel"], State: transport.StateReady},
		transport.Outcome{Lease: byID["canc"], State: transport.StateScheduled, Error: "e", RunAt: at},
		transport.Outcome{Lease: byID["fail"], State: transport.StateFailed, Error: "bad"})
	for id, want := range map[string]transport.State{"rel": transport.StateReady, "canc": transport.StateCancelled, "fail": transport.StateFailed} {
		in := e.get(id)
		if len(in.Attempts) != 1 || in.Attempts[0].State != want || in.Attempts[0].Owner != "wa" || in.Attempts[0].N != 1 {
			t.Errorf("%s: attempts %+v, want one ending %v", id, in.Attempts, want)
		}
		if in.Owner != "wa" {
			t.Errorf("%s: owner %q, want wa (kept)", id, in.Owner)
		}
	}

	// A worker lost under a claim by id: the lapsed attempt is recorded
	// as the task is leased again.
	c := any(e.tr).(transport.IDClaimer)
	e.enqueue(now, tmsg("byid"))
	r, err := c.ClaimIDs(bg, transport.ClaimIDsParams{Now: at, Owner: "b1", LeaseUntil: at.Add(time.Second), IDs: []string{"byid"}})
	if err != nil || r[0].Delivery == nil {
		t.Fatalf("claim by id: %+v, %v", r, err)
	}
	r, err = c.ClaimIDs(bg, transport.ClaimIDsParams{Now: at.Add(time.Minute), Owner: "b2", LeaseUntil: at.Add(2 * time.Minute), IDs: []string{"byid"}})
	if err != nil || r[0].Delivery == nil || r[0].Delivery.Attempt != 2 {
		t.Fatalf("claim by id after the lease lapsed: %+v, %v", r, err)
	}
	in = e.get("byid")
	if len(in.Attempts) != 1 || in.Attempts[0].Owner != "b1" || in.Attempts[0].State != transport.StateReady || !strings.Contains(in.Attempts[0].Error, "worker lost") ||
		!in.Attempts[0].Started.Equal(at) || !in.Attempts[0].Finished.Equal(at.Add(time.Minute)) {
		t.Errorf("claim-by-id worker lost: %+v", in.Attempts)
	}
	if in.Owner != "b2" {
		t.Errorf("owner %q, want b2", in.Owner)
	}
	// A worker lost on its last attempt, rescued by a claim.
	e.enqueue(now, tmsg("last", func(m *transport.Message) { m.MaxAttempts = 1; m.Queue = "q2" }))
	e.claim(at, "wl", 1, "q2")
	e.claim(at.Add(time.Minute), "wx", 1, "q2")
	in = e.get("last")
	if in.State != transport.StateFailed || len(in.Attempts) != 1 || in.Attempts[0].State != transport.StateFailed || in.Attempts[0].Owner != "wl" || in.Owner != "wl" {
		t.Errorf("lost on the last attempt: %v %+v, owner %q", in.State, in.Attempts, in.Owner)
	}
	// Search returns no attempt records.
	res, err := e.tr.Search(bg, transport.SearchParams{Now: now, IDPrefix: "many"})
	if err != nil || len(res.Tasks) != 1 || res.Tasks[0].Attempts != nil || res.Tasks[0].Owner != "w25" {
		t.Errorf("search = %+v, %v; want many, its owner and no attempts", res.Tasks, err)
	}
	e.checkIndex()
}

func TestAdminActRetry(t *testing.T) {
	e := newEnv(t)
	now := e.now
	e.enqueue(now, tmsg("u1", func(m *transport.Message) { m.MaxAttempts = 1; m.UniqueKey = "k1" }),
		tmsg("u2", func(m *transport.Message) { m.MaxAttempts = 1; m.UniqueKey = "k2" }))
	e.enqueue(now.Add(time.Millisecond), tmsg("exp", func(m *transport.Message) { m.Expires = now.Add(time.Second) }), tmsg("ok"))
	d := e.claim(now, "w", 2) // u1, u2
	for _, x := range d {
		e.finish(now, transport.Outcome{Lease: x.Lease(), State: transport.StateFailed, Error: "boom"})
	}
	d = e.claim(now.Add(2*time.Second), "w", 5) // exp expires, ok runs
	e.finish(now, transport.Outcome{Lease: d[0].Lease(), State: transport.StateSucceeded, Result: []byte("7")})
	if in := e.get("exp"); in.State != transport.StateExpired {
		t.Fatalf("exp = %v", in.State)
	}
	e.enqueue(now, tmsg("u2b", func(m *transport.Message) { m.UniqueKey = "k2"; m.Queue = "other" })) // takes k2

	if _, err := e.tr.Act(bg, transport.ActParams{Now: now, Action: transport.ActionRetry, IDs: []string{"u1"}, Attempts: 0}); !errors.Is(err, transport.ErrInvalid) {
		t.Errorf("retry with no attempts: %v", err)
	}
	if _, err := e.tr.Act(bg, transport.ActParams{Now: now, Action: 99, IDs: []string{"u1"}}); !errors.Is(err, transport.ErrInvalid) {
		t.Errorf("unknown action: %v", err)
	}
	res := e.act(transport.ActionRetry, 3, "u1", "u2", "exp", "ok", "gone")
	slices.Sort(res.Changed)
	if !slices.Equal(res.Changed, []string{"exp", "u1"}) || res.Skipped != 2 || res.Missing != 1 {
		t.Fatalf("retry = %+v; want u1 and exp, u2 (key taken) and ok (succeeded) skipped, one missing", res)
	}
	in := e.get("u1")
	if in.State != transport.StateReady || in.Attempt != 1 || in.MaxAttempts != 4 || !in.Finished.IsZero() || in.Error != "boom" || in.Result != nil {
		t.Errorf("retried u1 = %+v", in)
	}
	if in := e.get("exp"); in.State != transport.StateReady || !in.Expires.IsZero() {
		t.Errorf("retried exp = %v, expires %v", in.State, in.Expires)
	}
	e.act(transport.ActionDelete, 0, "exp") // out of the way of u1's claims
	// u1 holds its unique key again: another task with it is refused.
	_, err := e.tr.Enqueue(bg, transport.EnqueueParams{Now: now, Messages: []transport.Message{tmsg("u1c", func(m *transport.Message) { m.UniqueKey = "k1" })}})
	var dup *transport.DuplicateError
	if !errors.As(err, &dup) || dup.ExistingID != "u1" {
		t.Errorf("enqueue with the retried task's key: %v", err)
	}
	// It is out of the done set: a prune long after does not delete it.
	if n, _ := e.tr.Prune(bg, transport.PruneParams{Now: now.Add(48 * time.Hour)}); n != 2 {
		t.Errorf("pruned %d, want ok and u2", n)
	}
	// Its budget: three more claims.
	at := now.Add(time.Minute)
	for i := 2; i <= 4; i++ {
		d := e.claim(at, "w", 1)
		if len(d) != 1 || d[0].ID != "u1" || d[0].Attempt != i {
			t.Fatalf("claim %d: %+v", i, d)
		}
		e.finish(at, transport.Outcome{Lease: d[0].Lease(), State: transport.StateScheduled, Error: "again", RunAt: at})
		at = at.Add(time.Second)
	}
	e.checkIndex()
}

func TestAdminActDeleteRunNowCancel(t *testing.T) {
	e := newEnv(t)
	now := e.now
	var events = make(chan transport.Event, 100)
	unsub := e.tr.Subscribe(func(ev transport.Event) { events <- ev })
	defer unsub()
	waitEvent := func(what string, ok func(transport.Event) bool) {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case ev := <-events:
				if ok(ev) {
					return
				}
			case <-timeout:
				t.Fatalf("no %s event", what)
			}
		}
	}
	waitEvent("subscribed", func(ev transport.Event) bool { return ev.Kind == transport.EventChanged })

	// Ready tasks due at once are claimed in id order.
	e.enqueue(now, tmsg("1run"), tmsg("2rdy", func(m *transport.Message) { m.UniqueKey = "rk" }),
		tmsg("sch", func(m *transport.Message) { m.ETA = now.Add(time.Hour) }),
		tmsg("3retr"))
	d := e.claim(now, "w", 1)                                                                                          // 1run
	d2 := e.claim(now, "w", 1)                                                                                         // 2rdy
	e.finish(now, transport.Outcome{Lease: d2[0].Lease(), State: transport.StateScheduled, RunAt: now.Add(time.Hour)}) // rdy retrying
	if in := e.get("2rdy"); in.State != transport.StateScheduled || d[0].ID != "1run" {
		t.Fatalf("2rdy = %v, first claim %s", in.State, d[0].ID)
	}
	// Run now: scheduled and retrying tasks; others skipped.
	res := e.act(transport.ActionRunNow, 0, "sch", "2rdy", "1run", "3retr", "nope")
	slices.Sort(res.Changed)
	if !slices.Equal(res.Changed, []string{"2rdy", "sch"}) || res.Skipped != 2 || res.Missing != 1 {
		t.Errorf("run now = %+v", res)
	}
	got := ids(e.claim(now, "w2", 5))
	slices.Sort(got)
	if !slices.Equal(got, []string{"2rdy", "3retr", "sch"}) {
		t.Errorf("claimed after run now: %v", got)
	}
	e.checkIndex()

	// Delete: running tasks are skipped; the others go with their index
	// entries and unique key.
	e.enqueue(now, tmsg("del1", func(m *transport.Message) { m.UniqueKey = "dk" }), tmsg("del2", func(m *transport.Message) { m.ETA = now.Add(time.Hour) }))
	res = e.act(transport.ActionDelete, 0, "1run", "del1", "del2")
	slices.Sort(res.Changed)
	if !slices.Equal(res.Changed, []string{"del1", "del2"}) || res.Skipped != 1 {
		t.Errorf("delete = %+v, want the running task skipped", res)
	}
	waitEvent("deleted", func(ev transport.Event) bool {
		return ev.Kind == transport.EventFinished && slices.Contains(ev.IDs, "del1")
	})
	if _, err := e.tr.Get(bg, transport.GetParams{Now: now, ID: "del1"}); !errors.Is(err, transport.ErrNotFound) {
		t.Errorf("deleted task: %v", err)
	}
	e.enqueue(now, tmsg("del1b", func(m *transport.Message) { m.UniqueKey = "dk" })) // the key is free
	e.checkIndex()

	// Cancel: a running task is flagged and its worker told.
	res = e.act(transport.ActionCancel, 0, "1run", "del1b")
	if len(res.Changed) != 2 {
		t.Errorf("cancel = %+v", res)
	}
	waitEvent("cancel", func(ev transport.Event) bool {
		return ev.Kind == transport.EventCancel && slices.Contains(ev.IDs, "1run")
	})
	if r, err := e.tr.Extend(bg, transport.ExtendParams{Now: now, Leases: []transport.Lease{d[0].Lease()}, Until: now.Add(time.Minute)}); err != nil || !r[0].CancelRequested {
		t.Errorf("extend after cancel = %+v, %v", r, err)
	}
	if in := e.get("del1b"); in.State != transport.StateCancelled {
		t.Errorf("cancelled ready task = %v", in.State)
	}
	if res := e.act(transport.ActionCancel, 0, "del1b"); res.Skipped != 1 {
		t.Errorf("cancel of a cancelled task = %+v", res)
	}
	e.checkIndex()
}

// pagingTasks enqueues t000..t059: odd ones on queue "odd", every tenth
// (from t005) scheduled an hour ahead, created a second apart.
func pagingTasks(e *env) []transport.Message {
	now := e.now
	var all []transport.Message
	for i := range 60 {
		all = append(all, tmsg(fmt.Sprintf("t%03d", i), func(m *transport.Message) {
			if i%2 == 1 {
				m.Queue = "odd"
			}
			m.Created = now.Add(time.Duration(i) * time.Second)
			if i%10 == 5 {
				m.ETA = now.Add(time.Hour)
			}
		}))
	}
	e.enqueue(now, all...)
	return all
}

func TestAdminSearchPaging(t *testing.T) {
	for _, order := range []transport.Order{transport.OldestFirst, transport.NewestFirst} {
		e := newEnv(t)
		now := e.now
		all := pagingTasks(e)
		got, _ := e.searchAll(transport.SearchParams{Limit: 7, Order: order})
		if len(got) != 60 {
			t.Errorf("order %v: %d tasks", order, len(got))
		}
		// Walk ready tasks a page at a time while tasks change state
		// between pages: each task is listed at most once, in order,
		// and those that stay ready all along are listed.
		p := transport.SearchParams{Now: now, States: []transport.State{transport.StateReady}, Limit: 5, Order: order}
		ready, _ := e.searchAll(p)
		var seen []string
		changed := map[string]bool{}
		for page := 0; ; page++ {
			res, err := e.tr.Search(bg, p)
			if err != nil {
				t.Fatal(err)
			}
			for _, in := range res.Tasks {
				if in.State != transport.StateReady {
					t.Errorf("listed %s in state %v", in.ID, in.State)
				}
				seen = append(seen, in.ID)
			}
			if res.Next == "" {
				break
			}
			p.Cursor = res.Next
			// Tasks leave the ready set (claimed, then one succeeds and
			// one waits to retry), listed ones and ones not reached yet;
			// scheduled ones enter it, behind the cursor and ahead of it.
			for _, q := range []string{"default", "odd"} {
				d := e.claim(now, "w", 2, q)
				for j, x := range d {
					changed[x.ID] = true
					o := transport.Outcome{Lease: x.Lease(), State: transport.StateSucceeded}
					if j == 1 {
						o.State, o.RunAt = transport.StateScheduled, now.Add(time.Hour)
					}
					e.finish(now, o)
				}
			}
			if page == 1 {
				var sched []string
				for _, m := range all {
					if !m.ETA.IsZero() {
						sched = append(sched, m.ID)
						changed[m.ID] = true
					}
				}
				e.act(transport.ActionRunNow, 0, sched...)
			}
		}
		e.checkOrder(seen, order)
		if len(ready) < 20 {
			t.Fatalf("order %v: only %d ready tasks to walk", order, len(ready))
		}
		for _, id := range ready {
			if !changed[id] && !slices.Contains(seen, id) {
				t.Errorf("order %v: %s stayed ready and was not listed", order, id)
			}
		}
		e.checkIndex()
	}
	e := newEnv(t)
	now := e.now
	pagingTasks(e)
	// Filters combined with a cursor and a prefix, both orders.
	got, _ := e.searchAll(transport.SearchParams{IDPrefix: "t05", Limit: 3, Order: transport.NewestFirst})
	if !slices.Equal(got, []string{"t059", "t058", "t057", "t056", "t055", "t054", "t053", "t052", "t051", "t050"}) {
		t.Errorf("prefix t05 newest first: %v", got)
	}
	got, _ = e.searchAll(transport.SearchParams{IDPrefix: "t00", Queue: "odd", Limit: 2})
	if !slices.Equal(got, []string{"t001", "t003", "t005", "t007", "t009"}) {
		t.Errorf("prefix t00 in odd: %v", got)
	}
	got, _ = e.searchAll(transport.SearchParams{Since: now.Add(10 * time.Second), Until: now.Add(13 * time.Second), Limit: 1})
	if !slices.Equal(got, []string{"t010", "t011", "t012"}) {
		t.Errorf("created range: %v", got)
	}
	// A cursor past the prefix's range ends the walk.
	if res, err := e.tr.Search(bg, transport.SearchParams{Now: now, IDPrefix: "t01", Cursor: "t02"}); err != nil || len(res.Tasks) != 0 || res.Next != "" {
		t.Errorf("cursor after the prefix: %+v, %v", res, err)
	}
	// A page of exactly the remaining tasks says it is the last.
	res, err := e.tr.Search(bg, transport.SearchParams{Now: now, IDPrefix: "t05", Limit: 10})
	if err != nil || len(res.Tasks) != 10 || res.Next != "" {
		t.Errorf("the last page: %d tasks, next %q, %v", len(res.Tasks), res.Next, err)
	}
}

func TestAdminSearchFilters(t *testing.T) {
	e := newEnv(t)
	now := e.now
	e.enqueue(now, tmsg("a1", func(m *transport.Message) { m.Payload = []byte(`{"user":"ann"}`) }),
		tmsg("a2", func(m *transport.Message) { m.Headers = map[string]string{"tenant": "zed-corp"} }),
		tmsg("a3", func(m *transport.Message) { m.Name = "t.other"; m.ETA = now.Add(time.Hour) }),
		tmsg("a4"), tmsg("a5"))
	d := e.claim(now, "w", 2) // a1 a2
	e.finish(now, transport.Outcome{Lease: d[0].Lease(), State: transport.StateScheduled, Error: "smtp 550 for bob", RunAt: now.Add(time.Hour)},
		transport.Outcome{Lease: d[1].Lease(), State: transport.StateFailed, Error: "no"})
	cases := []struct {
		p    transport.SearchParams
		want []string
	}{
		{transport.SearchParams{Text: `"ann"`}, []string{"a1"}},
		{transport.SearchParams{Text: "550 for bob"}, []string{"a1"}},
		{transport.SearchParams{Text: "zed-corp"}, []string{"a2"}},
		{transport.SearchParams{Text: "nothing"}, nil},
		{transport.SearchParams{Name: "t.other"}, []string{"a3"}},
		{transport.SearchParams{States: []transport.State{transport.StateScheduled}}, []string{"a3"}},
		{transport.SearchParams{Retrying: true}, []string{"a1"}},
		{transport.SearchParams{States: []transport.State{transport.StateScheduled}, Retrying: true}, []string{"a1", "a3"}},
		{transport.SearchParams{States: []transport.State{transport.StateReady, transport.StateFailed}}, []string{"a2", "a4", "a5"}},
		{transport.SearchParams{Queue: "nope"}, nil},
	}
	for _, c := range cases {
		for _, order := range []transport.Order{transport.OldestFirst, transport.NewestFirst} {
			c.p.Order, c.p.Limit = order, 1
			got, _ := e.searchAll(c.p)
			want := slices.Clone(c.want)
			if order == transport.NewestFirst {
				slices.Reverse(want)
			}
			if !slices.Equal(got, want) {
				t.Errorf("search %+v = %v, want %v", c.p, got, want)
			}
		}
	}
	if _, err := e.tr.Search(bg, transport.SearchParams{Now: now, States: []transport.State{42}}); !errors.Is(err, transport.ErrInvalid) {
		t.Errorf("search with state 42: %v", err)
	}
	// Results carry the task, its owner and its progress.
	res, err := e.tr.Search(bg, transport.SearchParams{Now: now, IDPrefix: "a2"})
	if err != nil || len(res.Tasks) != 1 {
		t.Fatal(res, err)
	}
	if in := res.Tasks[0]; in.Headers["tenant"] != "zed-corp" || in.Owner != "w" || in.State != transport.StateFailed || in.Error != "no" {
		t.Errorf("search result = %+v", in)
	}
}

// Examine bounds the tasks read per call: a search that matches only the
// last of 100 tasks takes ten calls of ten, each ending where it stopped.
func TestAdminSearchExamine(t *testing.T) {
	e := newEnv(t)
	now := e.now
	var ms []transport.Message
	for i := range 100 {
		ms = append(ms, tmsg(fmt.Sprintf("e%03d", i), func(m *transport.Message) {
			if i == 99 {
				m.Payload = []byte(`{"needle":1}`)
			}
		}))
	}
	e.enqueue(now, ms...)
	p := transport.SearchParams{Now: now, Text: "needle", Examine: 10}
	for call := 1; ; call++ {
		res, err := e.tr.Search(bg, p)
		if err != nil {
			t.Fatal(err)
		}
		if call < 10 {
			if len(res.Tasks) != 0 || res.Next != fmt.Sprintf("e%03d", call*10-1) {
				t.Fatalf("call %d: %d tasks, next %q; want none and e%03d", call, len(res.Tasks), res.Next, call*10-1)
			}
			p.Cursor = res.Next
			continue
		}
		if len(res.Tasks) != 1 || res.Tasks[0].ID != "e099" || res.Next != "" {
			t.Fatalf("call %d: %+v next %q", call, res.Tasks, res.Next)
		}
		break
	}
	// Without filters beyond the index, a page reads only what it returns.
	res, err := e.tr.Search(bg, transport.SearchParams{Now: now, Limit: 5, Examine: 3})
	if err != nil || len(res.Tasks) != 3 || res.Next != "e002" {
		t.Errorf("limit 5, examine 3: %d tasks, next %q, %v", len(res.Tasks), res.Next, err)
	}
}

func TestAdminPauseAndWorkers(t *testing.T) {
	e := newEnv(t)
	now := e.now
	if err := e.tr.SetPaused(bg, transport.SetPausedParams{Now: now, Queue: ""}); !errors.Is(err, transport.ErrInvalid) {
		t.Errorf("pause of an empty name: %v", err)
	}
	for i, q := range []string{"b", "a", "b"} {
		if err := e.tr.SetPaused(bg, transport.SetPausedParams{Now: now.Add(time.Duration(i) * time.Second), Queue: q, Paused: true}); err != nil {
			t.Fatal(err)
		}
	}
	ps, err := e.tr.Paused(bg, transport.PausedParams{Now: now})
	if err != nil || len(ps) != 2 || ps[0].Queue != "a" || !ps[0].Since.Equal(now.Add(time.Second)) || ps[1].Queue != "b" || !ps[1].Since.Equal(now) {
		t.Errorf("paused = %+v, %v", ps, err)
	}
	events := make(chan transport.Event, 100)
	unsub := e.tr.Subscribe(func(ev transport.Event) { events <- ev })
	defer unsub()
	wait := func(ok func(transport.Event) bool) bool {
		timeout := time.After(10 * time.Second)
		for {
			select {
			case ev := <-events:
				if ok(ev) {
					return true
				}
			case <-timeout:
				return false
			}
		}
	}
	if !wait(func(ev transport.Event) bool { return ev.Kind == transport.EventChanged }) {
		t.Fatal("not subscribed")
	}
	e.tr.SetPaused(bg, transport.SetPausedParams{Now: now, Queue: "b", Paused: false})
	if !wait(func(ev transport.Event) bool { return ev.Kind == transport.EventReady && ev.Queue == "b" }) {
		t.Error("a resume did not wake the queue's workers")
	}
	if ps, _ := e.tr.Paused(bg, transport.PausedParams{Now: now}); len(ps) != 1 || ps[0].Queue != "a" {
		t.Errorf("after resuming b: %+v", ps)
	}

	// Workers: live ones only; expired records are dropped.
	hb := func(id string, at time.Time, gone bool) {
		t.Helper()
		w := transport.WorkerInfo{ID: id, Host: "h", PID: 7, Queues: []string{"a", "b"}, Concurrency: 8, Busy: 1, Started: now, Heartbeat: at, Expires: at.Add(30 * time.Second), Version: "v9"}
		if err := e.tr.Heartbeat(bg, transport.HeartbeatParams{Now: at, Worker: w, Gone: gone}); err != nil {
			t.Fatal(err)
		}
	}
	hb("w1", now, false)
	hb("w2", now, false)
	hb("w3", now.Add(20*time.Second), false)
	ws, err := e.tr.Workers(bg, transport.WorkersParams{Now: now.Add(29 * time.Second)})
	if err != nil || len(ws) != 3 {
		t.Fatalf("workers = %+v, %v", ws, err)
	}
	for _, w := range ws {
		if w.Host != "h" || w.PID != 7 || !slices.Equal(w.Queues, []string{"a", "b"}) || w.Concurrency != 8 || w.Busy != 1 || w.Version != "v9" || !w.Started.Equal(now) {
			t.Errorf("worker = %+v", w)
		}
	}
	hb("w2", now.Add(29*time.Second), true) // gone
	ws, _ = e.tr.Workers(bg, transport.WorkersParams{Now: now.Add(31 * time.Second)})
	if len(ws) != 1 || ws[0].ID != "w3" || !ws[0].Heartbeat.Equal(now.Add(20*time.Second)) {
		t.Errorf("workers after w1 expired and w2 left = %+v", ws)
	}
	// The next heartbeat drops the expired record.
	hb("w3", now.Add(40*time.Second), false)
	if n, _ := e.rdb.HLen(bg, e.key("workers")).Result(); n != 1 {
		t.Errorf("%d worker records kept, want 1", n)
	}
	if err := e.tr.Heartbeat(bg, transport.HeartbeatParams{Now: now}); !errors.Is(err, transport.ErrInvalid) {
		t.Errorf("heartbeat without an id: %v", err)
	}
}

func TestAdminProgress(t *testing.T) {
	e := newEnv(t)
	now := e.now
	e.enqueue(now, tmsg("p", func(m *transport.Message) { m.MaxAttempts = 2 }))
	d := e.claim(now, "w1", 1)[0]
	set := func(l transport.Lease, v string) bool {
		t.Helper()
		r, err := e.tr.SetProgress(bg, transport.ProgressParams{Now: now, Lease: l, Value: []byte(v)})
		if err != nil {
			t.Fatal(err)
		}
		return !r.Lost
	}
	if !set(d.Lease(), `{"done":1}`) {
		t.Fatal("progress of the held lease refused")
	}
	other := d.Lease()
	other.Owner = "w2"
	older := d.Lease()
	older.Attempt = 0
	if set(other, `{"x":1}`) || set(older, `{"x":2}`) || set(transport.Lease{ID: "nope", Attempt: 1, Owner: "w1"}, `{}`) {
		t.Error("progress with a lease not held was accepted")
	}
	if in := e.get("p"); string(in.Progress) != `{"done":1}` {
		t.Errorf("progress = %s", in.Progress)
	}
	e.finish(now, transport.Outcome{Lease: d.Lease(), State: transport.StateScheduled, RunAt: now})
	if set(d.Lease(), `{"late":1}`) {
		t.Error("progress after the attempt ended was accepted")
	}
	d2 := e.claim(now, "w1", 1)[0]
	if !set(d2.Lease(), `{"done":2}`) {
		t.Error("progress of the second attempt refused")
	}
	e.finish(now, transport.Outcome{Lease: d2.Lease(), State: transport.StateSucceeded})
	if in := e.get("p"); string(in.Progress) != `{"done":2}` || in.Owner != "w1" {
		t.Errorf("after success: progress %s, owner %q", in.Progress, in.Owner)
	}
	res, err := e.tr.Search(bg, transport.SearchParams{Now: now})
	if err != nil || len(res.Tasks) != 1 || string(res.Tasks[0].Progress) != `{"done":2}` {
		t.Errorf("search = %+v, %v", res.Tasks, err)
	}
}

func TestAdminSchedules(t *testing.T) {
	e := newEnv(t)
	now := e.now
	tmpl := &transport.Message{Name: "t.report", Queue: "reports", Payload: []byte(`{"k":1}`), MaxAttempts: 2, ResultTTL: time.Hour,
		Headers: map[string]string{"h": "v"}, Priority: 3}
	next := now.Add(time.Hour)
	initSched := func(spec string, at time.Time, m *transport.Message) transport.ScheduleState {
		t.Helper()
		st, err := e.tr.ScheduleInit(bg, transport.ScheduleInitParams{Now: now, Name: "daily", Spec: spec, NextAt: at, Template: m})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	st := initSched("every 1h", next, tmpl)
	if st.Template == nil || st.Template.Name != "t.report" || st.Template.Headers["h"] != "v" || st.Paused {
		t.Fatalf("state = %+v", st)
	}
	// The template is replaced on every init; the cursor stays unless the
	// spec changed.
	t2 := *tmpl
	t2.Payload = []byte(`{"k":2}`)
	st = initSched("every 1h", now.Add(5*time.Hour), &t2)
	if !st.NextAt.Equal(next) || string(st.Template.Payload) != `{"k":2}` {
		t.Errorf("re-init with the same spec: next %v, template %s", st.NextAt, st.Template.Payload)
	}
	id, err := e.tr.ScheduleTrigger(bg, transport.ScheduleTriggerParams{Now: now.Add(time.Minute), Name: "daily", ID: "trig"})
	if err != nil || id != "trig" {
		t.Fatalf("trigger = %q, %v", id, err)
	}
	in := e.get("trig")
	if in.State != transport.StateReady || string(in.Payload) != `{"k":2}` || in.Queue != "reports" || in.Priority != 3 || !in.Created.Equal(now.Add(time.Minute)) || in.Headers["h"] != "v" {
		t.Errorf("triggered task = %+v", in)
	}
	sts, _ := e.tr.ScheduleStates(bg, transport.ScheduleStatesParams{Now: now, Names: []string{"daily"}})
	if s := sts[0]; s.LastTaskID != "trig" || !s.LastFiredAt.Equal(now.Add(time.Minute)) || !s.LastSlot.IsZero() || !s.NextAt.Equal(next) || s.LastTaskState != transport.StateReady {
		t.Errorf("after trigger: %+v", s)
	}
	if got, _ := e.stats(now); got["reports"].Counts[transport.StateReady] != 1 {
		t.Errorf("the triggered task is not counted: %+v", got)
	}
	if _, err := e.tr.ScheduleTrigger(bg, transport.ScheduleTriggerParams{Now: now, Name: "daily", ID: "trig"}); !errors.Is(err, transport.ErrDuplicate) {
		t.Errorf("trigger with a taken id: %v", err)
	}
	if _, err := e.tr.ScheduleTrigger(bg, transport.ScheduleTriggerParams{Now: now, Name: "nope", ID: "n"}); !errors.Is(err, transport.ErrNotFound) {
		t.Errorf("trigger of an unknown schedule: %v", err)
	}
	// Without a template (an init that passes none drops it).
	initSched("every 1h", next, nil)
	if _, err := e.tr.ScheduleTrigger(bg, transport.ScheduleTriggerParams{Now: now, Name: "daily", ID: "t2"}); !errors.Is(err, transport.ErrInvalid) {
		t.Errorf("trigger without a template: %v", err)
	}
	initSched("every 1h", next, tmpl)

	// Pause: slots are skipped, the cursor moves.
	if err := e.tr.SchedulePause(bg, transport.SchedulePauseParams{Now: now, Name: "nope", Paused: true}); !errors.Is(err, transport.ErrNotFound) {
		t.Errorf("pause of an unknown schedule: %v", err)
	}
	if err := e.tr.SchedulePause(bg, transport.SchedulePauseParams{Now: now, Name: "daily", Paused: true}); err != nil {
		t.Fatal(err)
	}
	m := *tmpl
	m.ID = "slot1"
	res, err := e.tr.ScheduleFire(bg, transport.ScheduleFireParams{Now: next, Name: "daily", Cursor: next, NextAt: next.Add(time.Hour), Slot: next, Message: &m})
	if err != nil || !res.Advanced || res.Fired || res.Skipped != "paused" {
		t.Errorf("fire while paused = %+v, %v", res, err)
	}
	sts, _ = e.tr.ScheduleStates(bg, transport.ScheduleStatesParams{Now: now, Names: []string{"daily"}})
	if s := sts[0]; !s.Paused || !s.NextAt.Equal(next.Add(time.Hour)) || s.LastTaskID != "trig" {
		t.Errorf("after a paused slot: %+v", s)
	}
	// A trigger works while paused.
	if _, err := e.tr.ScheduleTrigger(bg, transport.ScheduleTriggerParams{Now: now, Name: "daily", ID: "trig2"}); err != nil {
		t.Errorf("trigger while paused: %v", err)
	}
	e.tr.SchedulePause(bg, transport.SchedulePauseParams{Now: now, Name: "daily", Paused: false})
	m.ID = "slot2"
	res, err = e.tr.ScheduleFire(bg, transport.ScheduleFireParams{Now: next.Add(time.Hour), Name: "daily", Cursor: next.Add(time.Hour), NextAt: next.Add(2 * time.Hour), Slot: next.Add(time.Hour), Message: &m})
	if err != nil || !res.Fired || res.TaskID != "slot2" {
		t.Errorf("fire after resume = %+v, %v", res, err)
	}
	// A changed spec resets the cursor and keeps the pause state off.
	if st := initSched("every 2h", now.Add(7*time.Hour), tmpl); !st.NextAt.Equal(now.Add(7*time.Hour)) || st.Paused {
		t.Errorf("after a spec change: %+v", st)
	}
	e.checkIndex()
}

// Prune removes finished tasks from the indexes, and a queue left without
// tasks from the set of queues.
func TestAdminPrune(t *testing.T) {
	e := newEnv(t)
	now := e.now
	e.enqueue(now, tmsg("p1", func(m *transport.Message) { m.Queue = "gone" }), tmsg("p2"), tmsg("p3"))
	for _, q := range []string{"gone", "default"} {
		for _, d := range e.claim(now, "w", 5, q) {
			if d.ID != "p3" {
				e.finish(now, transport.Outcome{Lease: d.Lease(), State: transport.StateSucceeded})
			}
		}
	}
	if n, err := e.tr.Prune(bg, transport.PruneParams{Now: now.Add(2 * time.Hour)}); err != nil || n != 2 {
		t.Fatalf("pruned %d, %v", n, err)
	}
	tasks := e.checkIndex()
	if len(tasks) != 1 {
		t.Errorf("tasks left: %v", tasks)
	}
	if got, _ := e.stats(now); len(got) != 1 || got["default"].Counts[transport.StateRunning] != 1 {
		t.Errorf("stats after prune: %+v", got)
	}
}

// Tasks stored by the version before the indexes (no 'ix' field, in no
// index set) are indexed by the next New, and a task deleted by such a
// version is dropped from the indexes when Search meets it.
func TestAdminUpgrade(t *testing.T) {
	e := newEnv(t)
	now := e.now
	e.enqueue(now, tmsg("o1"), tmsg("o2", func(m *transport.Message) { m.Queue = "q2" }), tmsg("o3", func(m *transport.Message) { m.ETA = now.Add(time.Hour) }), tmsg("o4"))
	d := e.claim(now, "w", 1)
	e.finish(now, transport.Outcome{Lease: d[0].Lease(), State: transport.StateScheduled, RunAt: now.Add(time.Hour)})
	legacy := func() {
		t.Helper()
		var keys []string
		keys = append(keys, e.scan(e.key("x", "*"))...)
		keys = append(keys, e.scan(e.key("a", "*"))...)
		keys = append(keys, e.key("queues"), e.key("layout"))
		if err := e.rdb.Del(bg, keys...).Err(); err != nil {
			t.Fatal(err)
		}
		for _, k := range e.scan(e.key("t", "*")) {
			e.rdb.HDel(bg, k, "ix")
		}
	}
	legacy()
	// Without the upgrade, a claim indexes what it changes.
	e.claim(now, "w", 1, "q2")
	if got, _ := e.stats(now); got["q2"].Counts[transport.StateRunning] != 1 {
		t.Errorf("a legacy task claimed is not counted: %+v", got)
	}
	e.open() // the upgrade
	e.checkIndex()
	if got, _ := e.searchAll(transport.SearchParams{}); !slices.Equal(got, []string{"o1", "o2", "o3", "o4"}) {
		t.Errorf("search after the upgrade: %v", got)
	}
	if got, _ := e.stats(now); got["default"].Retrying != 1 || got["default"].Counts[transport.StateScheduled] != 1 || got["default"].Counts[transport.StateReady] != 1 {
		t.Errorf("stats after the upgrade: %+v", got)
	}
	// An old version prunes o4 without touching the indexes.
	e.rdb.Del(bg, e.key("t", "o4"))
	if got, _ := e.searchAll(transport.SearchParams{Queue: "default"}); !slices.Equal(got, []string{"o1", "o3"}) {
		t.Errorf("search with a deleted task: %v", got)
	}
	e.checkIndex()
	// The layout is recorded: the next New does not scan.
	if v, _ := e.rdb.Get(bg, e.key("layout")).Result(); v != "2" {
		t.Errorf("layout = %q", v)
	}
}

// Random operations keep the index invariant, and Stats and Search agree
// with the task hashes.
func TestAdminIndexInvariant(t *testing.T) {
	e := newEnv(t)
	rng := rand.New(rand.NewPCG(1, 2))
	now := e.now
	queues := []string{"a", "b", "c:d"}
	c := any(e.tr).(transport.IDClaimer)
	var held []transport.Delivery
	var known []string
	pick := func() string { return known[rng.IntN(len(known))] }
	for step := range 600 {
		now = now.Add(time.Duration(rng.IntN(3000)) * time.Millisecond)
		e.now = now
		switch op := rng.IntN(10); {
		case op < 3 || len(known) == 0:
			var ms []transport.Message
			for range 1 + rng.IntN(3) {
				id := fmt.Sprintf("r%04d", len(known))
				known = append(known, id)
				ms = append(ms, tmsg(id, func(m *transport.Message) {
					m.Queue = queues[rng.IntN(len(queues))]
					m.MaxAttempts = 1 + rng.IntN(3)
					m.Priority = rng.IntN(10)
					m.ResultTTL = time.Duration(rng.IntN(60)) * time.Second
					switch rng.IntN(5) {
					case 0:
						m.ETA = now.Add(time.Duration(rng.IntN(20)) * time.Second)
					case 1:
						m.Expires = now.Add(time.Duration(rng.IntN(10)-2) * time.Second)
					case 2:
						m.UniqueKey = fmt.Sprintf("k%d", rng.IntN(5))
						m.ReturnExisting = true
					}
				}))
			}
			e.enqueue(now, ms...)
		case op < 5:
			r, err := e.tr.Claim(bg, transport.ClaimParams{Now: now, Owner: fmt.Sprintf("w%d", step), Queues: queues, Limit: 1 + rng.IntN(3), LeaseUntil: now.Add(time.Duration(1+rng.IntN(10)) * time.Second)})
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, r.Deliveries...)
		case op < 7 && len(held) > 0:
			i := rng.IntN(len(held))
			d := held[i]
			held = slices.Delete(held, i, i+1)
			o := transport.Outcome{Lease: d.Lease(), State: []transport.State{2, 1, 1, 4, 5, 6}[rng.IntN(6)], Error: "e"}
			o.RunAt = now.Add(time.Duration(rng.IntN(40)-5) * time.Second)
			e.finish(now, o)
		case op < 8:
			acts := []transport.Action{transport.ActionRetry, transport.ActionCancel, transport.ActionDelete, transport.ActionRunNow}
			e.act(acts[rng.IntN(len(acts))], 1+rng.IntN(2), pick(), pick())
		case op < 9:
			if _, err := c.ClaimIDs(bg, transport.ClaimIDsParams{Now: now, Owner: fmt.Sprintf("i%d", step), LeaseUntil: now.Add(5 * time.Second), IDs: []string{pick(), pick()}}); err != nil {
				t.Fatal(err)
			}
		default:
			if _, err := e.tr.Prune(bg, transport.PruneParams{Now: now, Limit: 5}); err != nil {
				t.Fatal(err)
			}
		}
		if step%20 == 19 {
			e.checkConsistent(now)
		}
	}
	e.checkConsistent(now)
}

// checkConsistent checks the index invariant and that Stats and Search
// report what the task hashes hold.
func (e *env) checkConsistent(now time.Time) {
	e.t.Helper()
	tasks := e.checkIndex()
	want := map[string]map[string]int64{}
	var all []string
	byIx := map[string][]string{}
	for id, v := range tasks {
		if want[v[0]] == nil {
			want[v[0]] = map[string]int64{}
		}
		want[v[0]][v[2]]++
		all = append(all, id)
		byIx[v[2]] = append(byIx[v[2]], id)
	}
	got, _ := e.stats(now)
	for q := range got {
		if want[q] == nil {
			e.t.Errorf("stats list queue %s, which has no task", q)
		}
	}
	keys := []string{"1", "r", "2", "3", "4", "5", "6", "7"}
	for q, counts := range want {
		qs, ok := got[q]
		if !ok {
			e.t.Errorf("stats miss queue %s", q)
		}
		for _, key := range keys {
			var g int64
			if key == "r" {
				g = qs.Retrying
			} else {
				st, _ := strconv.Atoi(key)
				g = qs.Counts[transport.State(st)]
			}
			if g != counts[key] {
				e.t.Errorf("stats %s %s = %d, want %d", q, key, g, counts[key])
			}
		}
	}
	slices.Sort(all)
	if got, _ := e.searchAll(transport.SearchParams{Limit: 13}); !slices.Equal(got, all) {
		e.t.Errorf("search all = %v, want %v", got, all)
	}
	params := func(key string) transport.SearchParams {
		p := transport.SearchParams{Limit: 11, Order: transport.NewestFirst}
		if key == "r" {
			p.Retrying = true
		} else {
			st, _ := strconv.Atoi(key)
			p.States = []transport.State{transport.State(st)}
		}
		return p
	}
	for _, key := range keys {
		list := slices.Clone(byIx[key])
		slices.Sort(list)
		slices.Reverse(list)
		if got, _ := e.searchAll(params(key)); !slices.Equal(got, list) {
			e.t.Errorf("search %s = %v, want %v", key, got, list)
		}
		// Per queue, oldest first.
		for q := range want {
			var inQ []string
			for _, id := range byIx[key] {
				if tasks[id][0] == q {
					inQ = append(inQ, id)
				}
			}
			slices.Sort(inQ)
			p := params(key)
			p.Queue, p.Order, p.Limit = q, transport.OldestFirst, 4
			if got, _ := e.searchAll(p); !slices.Equal(got, inQ) {
				e.t.Errorf("search %s in %s = %v, want %v", key, q, got, inQ)
			}
		}
	}
	// Ready or running, and running or failed.
	for _, pair := range [][2]string{{"2", "3"}, {"3", "5"}} {
		list := append(slices.Clone(byIx[pair[0]]), byIx[pair[1]]...)
		slices.Sort(list)
		p := params(pair[0])
		p.States = append(p.States, params(pair[1]).States...)
		p.Order = transport.OldestFirst
		if got, _ := e.searchAll(p); !slices.Equal(got, list) {
			e.t.Errorf("search %v = %v, want %v", pair, got, list)
		}
	}
}
