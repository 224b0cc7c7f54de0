package transporttest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docketq/docket/transport"
)

// The contract tests drive a transport through its methods alone, with a
// clock the suite controls: every params struct carries Now, and a
// transport never reads the clock for decisions a test controls.

// base is the suite's "now"; tests move forward from it.
var base = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// runContract runs the contract tests, each on a fresh transport from
// newTransport.
func runContract(t *testing.T, newTransport func(t *testing.T) transport.Transport, f Features) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s transport.Transport, f Features)
	}{
		{"RoundTrip", testRoundTrip},
		{"BatchIsAtomic", testBatchAtomic},
		{"DuplicateID", testDuplicateID},
		{"UniqueKey", testUniqueKey},
		{"ClaimOrder", testClaimOrder},
		{"ClaimQueuesAndExclude", testClaimQueues},
		{"ETA", testContractETA},
		{"LeaseFencing", testLeaseFencing},
		{"WorkerLost", testWorkerLost},
		{"Expiry", testContractExpiry},
		{"RetryAndRelease", testRetryRelease},
		{"Cancel", testCancel},
		{"CancelSurvivesReleaseAndRetry", testCancelPending},
		{"Lookup", testLookup},
		{"Prune", testPrune},
		{"ConcurrentClaims", testConcurrentClaims},
		{"ClaimIDs", testClaimIDs},
		{"Handoff", testHandoff},
		{"Overdue", testOverdue},
	}
	tests = append(tests, adminContract...)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newTransport(t)
			t.Cleanup(func() { s.Close() })
			tc.fn(t, s, f)
		})
	}
}

var ctx = context.Background()

func msg(id string, mods ...func(*transport.Message)) transport.Message {
	m := transport.Message{
		ID: id, Name: "t.noop", Queue: "default", Payload: []byte(`{}`),
		MaxAttempts: 3, ResultTTL: time.Hour, Created: base,
	}
	for _, f := range mods {
		f(&m)
	}
	return m
}

func enqueue(t *testing.T, s transport.Transport, now time.Time, msgs ...transport.Message) []transport.EnqueueResult {
	t.Helper()
	res, err := s.Enqueue(ctx, transport.EnqueueParams{Now: now, Messages: msgs})
	if err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	return res
}

func claim(t *testing.T, s transport.Transport, now time.Time, owner string, limit int, mods ...func(*transport.ClaimParams)) transport.ClaimResult {
	t.Helper()
	p := transport.ClaimParams{Now: now, Owner: owner, Queues: []string{"default"}, Limit: limit, LeaseUntil: now.Add(30 * time.Second)}
	for _, f := range mods {
		f(&p)
	}
	res, err := s.Claim(ctx, p)
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	return res
}

func ids(ds []transport.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.ID
	}
	return out
}

func get(t *testing.T, s transport.Transport, id string) transport.Info {
	t.Helper()
	in, err := s.Get(ctx, transport.GetParams{Now: base, ID: id})
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return in
}

func finish(t *testing.T, s transport.Transport, now time.Time, o transport.Outcome) transport.FinishResult {
	t.Helper()
	res, err := s.Finish(ctx, transport.FinishParams{Now: now, Items: []transport.Outcome{o}})
	if err != nil {
		t.Fatalf("Finish: %v", err)
	}
	return res[0]
}

func testRoundTrip(t *testing.T, s transport.Transport, _ Features) {
	payload := []byte("{\"s\":\"a\\u0000b\"}\x00\xff\xfe")
	m := msg("rt1", func(m *transport.Message) {
		m.Name, m.Queue, m.Payload, m.Priority = "mail.send", "emails", payload, 7
		m.Headers = map[string]string{"trace": "abc", "tenant": "t-1"}
		m.Expires = base.Add(time.Hour)
		m.MaxAttempts, m.Timeout, m.ResultTTL = 6, 1500*time.Millisecond, 2*time.Hour
		m.Backoff = &transport.Backoff{Base: time.Second, Max: time.Minute, Jitter: 0.5}
		m.IgnoreResult, m.UniqueKey = true, "k:1"
	})
	res := enqueue(t, s, base, m)
	if res[0].ID != "rt1" || res[0].Existing {
		t.Fatalf("EnqueueResult = %+v", res[0])
	}
	in := get(t, s, "rt1")
	if in.State != transport.StateReady || in.Name != "mail.send" || in.Queue != "emails" || in.Priority != 7 ||
		string(in.Payload) != string(payload) || in.MaxAttempts != 6 || in.Timeout != 1500*time.Millisecond ||
		in.ResultTTL != 2*time.Hour || !in.IgnoreResult || in.UniqueKey != "k:1" || !in.Expires.Equal(base.Add(time.Hour)) ||
		in.Headers["trace"] != "abc" || in.Headers["tenant"] != "t-1" || in.Backoff == nil || *in.Backoff != *m.Backoff ||
		!in.Created.Equal(base) || in.Attempt != 0 {
		t.Fatalf("round trip mismatch:\n got %+v\nwant %+v", in, m)
	}
	d := claim(t, s, base, "w1", 1, func(p *transport.ClaimParams) { p.Queues = []string{"emails"} }).Deliveries
	if len(d) != 1 || string(d[0].Payload) != string(payload) || d[0].Attempt != 1 || d[0].Owner != "w1" ||
		d[0].Headers["trace"] != "abc" || d[0].Timeout != 1500*time.Millisecond || d[0].Backoff == nil {
		t.Fatalf("claimed delivery mismatch: %+v", d)
	}
	result := []byte("\x00binary\xff")
	if r := finish(t, s, base, transport.Outcome{Lease: d[0].Lease(), State: transport.StateSucceeded, Result: result}); r.Lost {
		t.Fatal("Finish lost a held lease")
	}
	in = get(t, s, "rt1")
	if in.State != transport.StateSucceeded || string(in.Result) != string(result) || !in.Finished.Equal(base) || in.Attempt != 1 {
		t.Fatalf("after finish: %+v", in)
	}
	if _, err := s.Get(ctx, transport.GetParams{Now: base, ID: "missing"}); !errors.Is(err, transport.ErrNotFound) {
		t.Fatalf("Get(missing) = %v, want ErrNotFound", err)
	}
}

// A batch is stored whole: a taken id fails all of it (the part that needs
// SharedState), and a large batch is stored in one call.
func testBatchAtomic(t *testing.T, s transport.Transport, f Features) {
	big := make([]transport.Message, 500)
	for i := range big {
		big[i] = msg(fmt.Sprintf("big%03d", i))
	}
	if res := enqueue(t, s, base, big...); len(res) != 500 || res[499].ID != "big499" {
		t.Fatalf("batch results = %d", len(res))
	}
	if get(t, s, "big250").State != transport.StateReady {
		t.Fatal("a task of a large batch is not ready")
	}
	need(t, f.SharedState, "SharedState")
	enqueue(t, s, base, msg("a1"))
	_, err := s.Enqueue(ctx, transport.EnqueueParams{Now: base, Messages: []transport.Message{msg("b1"), msg("b2"), msg("a1")}})
	var dup *transport.DuplicateError
	if !errors.As(err, &dup) || dup.ExistingID != "a1" {
		t.Fatalf("batch with a taken id: err = %v, want *DuplicateError for a1", err)
	}
	for _, id := range []string{"b1", "b2"} {
		if _, err := s.Get(ctx, transport.GetParams{Now: base, ID: id}); !errors.Is(err, transport.ErrNotFound) {
			t.Fatalf("%s was stored although its batch failed (err=%v)", id, err)
		}
	}
}

func testDuplicateID(t *testing.T, s transport.Transport, f Features) {
	need(t, f.SharedState, "SharedState")
	enqueue(t, s, base, msg("d1"))
	_, err := s.Enqueue(ctx, transport.EnqueueParams{Now: base, Messages: []transport.Message{msg("d1")}})
	if !errors.Is(err, transport.ErrDuplicate) {
		t.Fatalf("second enqueue of d1: %v, want ErrDuplicate", err)
	}
	res := enqueue(t, s, base, msg("d1", func(m *transport.Message) { m.ReturnExisting = true }))
	if res[0].ID != "d1" || !res[0].Existing {
		t.Fatalf("ReturnExisting: %+v", res[0])
	}
}

func testUniqueKey(t *testing.T, s transport.Transport, f Features) {
	need(t, f.SharedState, "SharedState")
	uk := func(m *transport.Message) { m.UniqueKey = "report:42" }
	enqueue(t, s, base, msg("u1", uk))
	_, err := s.Enqueue(ctx, transport.EnqueueParams{Now: base, Messages: []transport.Message{msg("u2", uk)}})
	var dup *transport.DuplicateError
	if !errors.As(err, &dup) || dup.ExistingID != "u1" || dup.UniqueKey != "report:42" {
		t.Fatalf("second unique enqueue: %v", err)
	}
	res := enqueue(t, s, base, msg("u3", uk, func(m *transport.Message) { m.ReturnExisting = true }))
	if res[0].ID != "u1" || !res[0].Existing {
		t.Fatalf("ReturnExisting: %+v", res[0])
	}
	// Still held while running; free once terminal.
	d := claim(t, s, base, "w", 1).Deliveries
	if _, err := s.Enqueue(ctx, transport.EnqueueParams{Now: base, Messages: []transport.Message{msg("u4", uk)}}); !errors.Is(err, transport.ErrDuplicate) {
		t.Fatalf("unique key free while running: %v", err)
	}
	finish(t, s, base, transport.Outcome{Lease: d[0].Lease(), State: transport.StateSucceeded})
	if res := enqueue(t, s, base, msg("u5", uk)); res[0].ID != "u5" {
		t.Fatalf("after terminal: %+v", res)
	}
	// Keys with SQL and glob metacharacters are stored verbatim.
	for i, k := range []string{"x'); DROP TABLE docket_tasks;--", "%", "_", "*", "[a]", `"q"`, `\`} {
		id := fmt.Sprintf("m%d", i)
		enqueue(t, s, base, msg(id, func(m *transport.Message) { m.UniqueKey = k }))
		if in := get(t, s, id); in.UniqueKey != k {
			t.Fatalf("unique key %q stored as %q", k, in.UniqueKey)
		}
	}
}

// Claims take the highest priority first, then the oldest (the order
// needs Priority); a limit is honoured and an empty queue yields nothing.
func testClaimOrder(t *testing.T, s transport.Transport, f Features) {
	prio := func(p int) func(*transport.Message) { return func(m *transport.Message) { m.Priority = p } }
	enqueue(t, s, base, msg("o1", prio(0)))
	enqueue(t, s, base.Add(time.Millisecond), msg("o2", prio(5)))
	enqueue(t, s, base.Add(2*time.Millisecond), msg("o3", prio(0)))
	enqueue(t, s, base.Add(3*time.Millisecond), msg("o4", prio(9)))
	now := base.Add(time.Second)
	var got []string
	for range 4 {
		got = append(got, ids(claim(t, s, now, "w", 1).Deliveries)...)
	}
	want := []string{"o4", "o2", "o1", "o3"}
	if !f.Priority {
		slices.Sort(got)
		want = []string{"o1", "o2", "o3", "o4"}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("claim order %v, want %v", got, want)
	}
	if d := claim(t, s, now, "w", 5).Deliveries; len(d) != 0 {
		t.Fatalf("claimed %v from an empty queue", ids(d))
	}
	for i := range 10 {
		enqueue(t, s, now, msg(fmt.Sprintf("l%02d", i)))
	}
	if d := claim(t, s, now, "w", 4).Deliveries; len(d) != 4 {
		t.Fatalf("limit 4 claimed %d", len(d))
	}
}

func testClaimQueues(t *testing.T, s transport.Transport, _ Features) {
	enqueue(t, s, base,
		msg("q1", func(m *transport.Message) { m.Queue = "a" }),
		msg("q2", func(m *transport.Message) { m.Queue = "b" }),
		msg("q3", func(m *transport.Message) { m.Queue = "b"; m.Name = "slow" }),
	)
	res := claim(t, s, base, "w", 10, func(p *transport.ClaimParams) { p.Queues = []string{"b"}; p.Exclude = []string{"slow"} })
	if got := ids(res.Deliveries); !slices.Equal(got, []string{"q2"}) {
		t.Fatalf("queue b excluding slow: %v", got)
	}
	res = claim(t, s, base, "w", 10, func(p *transport.ClaimParams) { p.Queues = []string{"a", "b"} })
	got := ids(res.Deliveries)
	slices.Sort(got)
	if !slices.Equal(got, []string{"q1", "q3"}) {
		t.Fatalf("queues a,b: %v", got)
	}
}

func testContractETA(t *testing.T, s transport.Transport, _ Features) {
	eta := base.Add(time.Hour)
	enqueue(t, s, base, msg("e1", func(m *transport.Message) { m.ETA = eta }))
	if in := get(t, s, "e1"); in.State != transport.StateScheduled || !in.ETA.Equal(eta) {
		t.Fatalf("scheduled task: %+v", in)
	}
	res := claim(t, s, base.Add(59*time.Minute), "w", 1)
	if len(res.Deliveries) != 0 {
		t.Fatal("claimed a task before its ETA")
	}
	if !res.NextAt.Equal(eta) {
		t.Fatalf("NextAt = %v, want %v", res.NextAt, eta)
	}
	if d := claim(t, s, eta, "w", 1).Deliveries; len(d) != 1 || d[0].ID != "e1" {
		t.Fatalf("at ETA claimed %v", ids(d))
	} else if !d[0].ETA.Equal(eta) {
		t.Fatalf("delivery's ETA %v, want the enqueued %v (a worker's queue-wait figure starts there)", d[0].ETA, eta)
	}
	// A past ETA means now.
	enqueue(t, s, base, msg("e2", func(m *transport.Message) { m.ETA = base.Add(-time.Hour) }))
	if in := get(t, s, "e2"); in.State != transport.StateReady {
		t.Fatalf("past ETA state %v", in.State)
	}
}

func testLeaseFencing(t *testing.T, s transport.Transport, _ Features) {
	enqueue(t, s, base, msg("f1"))
	d := claim(t, s, base, "w1", 1).Deliveries[0]
	// Heartbeat by the holder works; by anyone else it is lost.
	ext, err := s.Extend(ctx, transport.ExtendParams{Now: base, Until: base.Add(time.Minute), Leases: []transport.Lease{
		d.Lease(), {ID: "f1", Attempt: 1, Owner: "w2"}, {ID: "f1", Attempt: 2, Owner: "w1"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if ext[0].Lost || !ext[1].Lost || !ext[2].Lost {
		t.Fatalf("Extend results %+v", ext)
	}
	// The extension holds off the rescue.
	if r := claim(t, s, base.Add(45*time.Second), "w2", 1); len(r.Deliveries) != 0 {
		t.Fatal("rescued an extended lease")
	}
	// Once it lapses, another worker gets attempt 2 and the old lease is dead.
	lapse := base.Add(61 * time.Second)
	d2 := claim(t, s, lapse, "w2", 1).Deliveries
	if len(d2) != 1 || d2[0].Attempt != 2 || d2[0].Owner != "w2" || d2[0].LastError == "" {
		t.Fatalf("rescue: %+v", d2)
	}
	if r := finish(t, s, lapse, transport.Outcome{Lease: d.Lease(), State: transport.StateSucceeded, Result: []byte(`"stale"`)}); !r.Lost {
		t.Fatal("stale attempt's Finish was accepted")
	}
	if ext, _ := s.Extend(ctx, transport.ExtendParams{Now: lapse, Until: lapse.Add(time.Minute), Leases: []transport.Lease{d.Lease()}}); !ext[0].Lost {
		t.Fatal("stale attempt's Extend was accepted")
	}
	if r := finish(t, s, lapse, transport.Outcome{Lease: d2[0].Lease(), State: transport.StateSucceeded, Result: []byte(`"fresh"`)}); r.Lost {
		t.Fatal("current attempt's Finish was refused")
	}
	// Nothing revives a finished task.
	if r := finish(t, s, lapse, transport.Outcome{Lease: d2[0].Lease(), State: transport.StateFailed}); !r.Lost {
		t.Fatal("second Finish of one attempt was accepted")
	}
	if in := get(t, s, "f1"); in.State != transport.StateSucceeded || string(in.Result) != `"fresh"` {
		t.Fatalf("final: %v %s", in.State, in.Result)
	}
}

func testWorkerLost(t *testing.T, s transport.Transport, _ Features) {
	enqueue(t, s, base, msg("w1", func(m *transport.Message) { m.MaxAttempts = 2 }))
	now := base
	for attempt := 1; attempt <= 2; attempt++ {
		d := claim(t, s, now, "dead", 1).Deliveries
		if len(d) != 1 || d[0].Attempt != attempt {
			t.Fatalf("claim %d: %+v", attempt, d)
		}
		now = now.Add(31 * time.Second) // lease lapses: the worker "died"
	}
	res := claim(t, s, now, "w", 1)
	if len(res.Deliveries) != 0 || len(res.Ended) != 1 || res.Ended[0].ID != "w1" || res.Ended[0].State != transport.StateFailed {
		t.Fatalf("third claim: %+v", res)
	}
	if e := res.Ended[0]; e.Name != "t.noop" || e.Queue != "default" || e.Attempt != 2 {
		t.Fatalf("ended task's name, queue and attempt: %+v, want t.noop, default, 2", e)
	}
	if in := get(t, s, "w1"); in.State != transport.StateFailed || in.Attempt != 2 || in.Error == "" {
		t.Fatalf("worker lost: %+v", in)
	}
}

func testContractExpiry(t *testing.T, s transport.Transport, _ Features) {
	enqueue(t, s, base, msg("x1", func(m *transport.Message) { m.Expires = base.Add(time.Minute) }))
	res := claim(t, s, base.Add(2*time.Minute), "w", 1)
	if len(res.Deliveries) != 0 || len(res.Ended) != 1 || res.Ended[0].State != transport.StateExpired {
		t.Fatalf("claim after expiry: %+v", res)
	}
	if e := res.Ended[0]; e.Name != "t.noop" || e.Queue != "default" || e.Attempt != 0 {
		t.Fatalf("expired task's name, queue and attempt: %+v, want t.noop, default, 0", e)
	}
	if in := get(t, s, "x1"); in.State != transport.StateExpired || in.Attempt != 0 {
		t.Fatalf("expired: %+v", in)
	}
	enqueue(t, s, base.Add(time.Hour), msg("x2", func(m *transport.Message) { m.Expires = base }))
	if in := get(t, s, "x2"); in.State != transport.StateExpired {
		t.Fatalf("enqueued already expired: %v", in.State)
	}
}

func testRetryRelease(t *testing.T, s transport.Transport, _ Features) {
	enqueue(t, s, base, msg("r1"))
	d := claim(t, s, base, "w", 1).Deliveries[0]
	retryAt := base.Add(10 * time.Second)
	finish(t, s, base, transport.Outcome{Lease: d.Lease(), State: transport.StateScheduled, RunAt: retryAt, Error: "boom"})
	if in := get(t, s, "r1"); in.State != transport.StateScheduled || !in.ETA.Equal(retryAt) || in.Error != "boom" || in.Attempt != 1 {
		t.Fatalf("after retry: %+v", in)
	}
	if len(claim(t, s, base.Add(9*time.Second), "w", 1).Deliveries) != 0 {
		t.Fatal("retry ran early")
	}
	d = claim(t, s, retryAt, "w", 1).Deliveries[0]
	if d.Attempt != 2 || d.LastError != "boom" {
		t.Fatalf("retry delivery %+v", d)
	}
	finish(t, s, retryAt, transport.Outcome{Lease: d.Lease(), State: transport.StateReady})
	if in := get(t, s, "r1"); in.State != transport.StateReady || in.Attempt != 1 || in.Error != "boom" {
		t.Fatalf("after release: %+v", in)
	}
	if d = claim(t, s, retryAt, "w2", 1).Deliveries[0]; d.Attempt != 2 || d.LastError != "boom" {
		t.Fatalf("release consumed an attempt or lost the last error: attempt %d, last error %q", d.Attempt, d.LastError)
	}
}

func testCancel(t *testing.T, s transport.Transport, _ Features) {
	enqueue(t, s, base, msg("c1"), msg("c2"), msg("c3", func(m *transport.Message) { m.ETA = base.Add(time.Hour) }))
	r, err := s.Cancel(ctx, transport.CancelParams{Now: base, ID: "c3"})
	if err != nil || r.State != transport.StateCancelled {
		t.Fatalf("cancel scheduled: %+v %v", r, err)
	}
	d := claim(t, s, base, "w", 1).Deliveries[0]
	r, err = s.Cancel(ctx, transport.CancelParams{Now: base, ID: d.ID})
	if err != nil || r.State != transport.StateRunning {
		t.Fatalf("cancel running: %+v %v", r, err)
	}
	ext, _ := s.Extend(ctx, transport.ExtendParams{Now: base, Until: base.Add(time.Minute), Leases: []transport.Lease{d.Lease()}})
	if ext[0].Lost || !ext[0].CancelRequested {
		t.Fatalf("Extend after cancel: %+v", ext[0])
	}
	finish(t, s, base, transport.Outcome{Lease: d.Lease(), State: transport.StateCancelled, Error: "context canceled"})
	r, _ = s.Cancel(ctx, transport.CancelParams{Now: base, ID: d.ID})
	if r.State != transport.StateCancelled {
		t.Fatalf("cancel again: %+v", r)
	}
	other := "c1"
	if d.ID == "c1" {
		other = "c2"
	}
	r, _ = s.Cancel(ctx, transport.CancelParams{Now: base, ID: other})
	if r.State != transport.StateCancelled {
		t.Fatalf("cancel ready: %+v", r)
	}
	if res := claim(t, s, base.Add(2*time.Hour), "w", 5); len(res.Deliveries) != 0 {
		t.Fatalf("cancelled tasks were claimed: %v", ids(res.Deliveries))
	}
	if _, err := s.Cancel(ctx, transport.CancelParams{Now: base, ID: "nope"}); !errors.Is(err, transport.ErrNotFound) {
		t.Fatalf("cancel missing: %v", err)
	}
	// A cancel that lands while the worker is gone ends the task cancelled.
	enqueue(t, s, base, msg("c4", func(m *transport.Message) { m.Queue = "solo" }))
	d = claim(t, s, base, "w", 1, func(p *transport.ClaimParams) { p.Queues = []string{"solo"} }).Deliveries[0]
	s.Cancel(ctx, transport.CancelParams{Now: base, ID: "c4"})
	res := claim(t, s, base.Add(time.Minute), "w2", 1, func(p *transport.ClaimParams) { p.Queues = []string{"solo"} })
	if len(res.Deliveries) != 0 || get(t, s, "c4").State != transport.StateCancelled {
		t.Fatalf("cancelled running task after lease loss: %+v", res)
	}
}

// A cancel accepted while a task is leased is never lost: releasing the
// task (graceful shutdown, or a prefetched task given back) or scheduling
// a retry ends it cancelled instead of putting it back, and frees its
// unique key. An outcome that ends the task otherwise stands, and a claim
// by id never leases a task with a cancel recorded.
func testCancelPending(t *testing.T, s transport.Transport, f Features) {
	uk := func(m *transport.Message) { m.UniqueKey = "only-one" }
	enqueue(t, s, base, msg("rel", uk), msg("retry"), msg("due"), msg("ok"), msg("fail"))
	res := claim(t, s, base, "w", 5)
	if len(res.Deliveries) != 5 {
		t.Fatalf("claimed %v", ids(res.Deliveries))
	}
	leases := map[string]transport.Lease{}
	for _, d := range res.Deliveries {
		leases[d.ID] = d.Lease()
		r, err := s.Cancel(ctx, transport.CancelParams{Now: base, ID: d.ID})
		if err != nil || r.State != transport.StateRunning {
			t.Fatalf("Cancel(%s) = %+v, %v", d.ID, r, err)
		}
	}
	now := base.Add(time.Second)
	outcomes := []transport.Outcome{
		{Lease: leases["rel"], State: transport.StateReady},
		{Lease: leases["retry"], State: transport.StateScheduled, RunAt: now.Add(time.Minute), Error: "boom"},
		{Lease: leases["due"], State: transport.StateScheduled, RunAt: now, Error: "bang"},
		{Lease: leases["ok"], State: transport.StateSucceeded, Result: []byte("7")},
		{Lease: leases["fail"], State: transport.StateFailed, Error: "permanent"},
	}
	fr, err := s.Finish(ctx, transport.FinishParams{Now: now, Items: outcomes})
	if err != nil {
		t.Fatalf("Finish: %v", err)
	}
	for i, r := range fr {
		if r.Lost {
			t.Fatalf("outcome of %s was fenced out", outcomes[i].ID)
		}
		// The caller learns which put-backs ended the task, to wake its
		// waiters.
		if want := i < 3; r.Cancelled != want {
			t.Errorf("Finish of %s: Cancelled = %v, want %v", outcomes[i].ID, r.Cancelled, want)
		}
	}
	for _, c := range []struct {
		id      string
		attempt int
		err     []string
	}{
		{"rel", 0, []string{"cancelled"}},
		{"retry", 1, []string{"cancelled", "boom"}},
		{"due", 1, []string{"cancelled", "bang"}},
	} {
		in := get(t, s, c.id)
		if in.State != transport.StateCancelled || in.Attempt != c.attempt || !in.Finished.Equal(now) {
			t.Errorf("%s after its attempt was put back with a cancel pending: state %v, attempt %d, finished %v; want cancelled, attempt %d, finished %v",
				c.id, in.State, in.Attempt, in.Finished, c.attempt, now)
		}
		for _, want := range c.err {
			if !strings.Contains(in.Error, want) {
				t.Errorf("%s: error %q does not mention %q", c.id, in.Error, want)
			}
		}
	}
	if in := get(t, s, "ok"); in.State != transport.StateSucceeded || string(in.Result) != "7" {
		t.Errorf("ok: a success with a cancel pending became %v %q", in.State, in.Result)
	}
	if in := get(t, s, "fail"); in.State != transport.StateFailed || in.Error != "permanent" {
		t.Errorf("fail: a failure with a cancel pending became %v %q", in.State, in.Error)
	}
	sts, err := s.Lookup(ctx, transport.LookupParams{Now: now, IDs: []string{"rel", "retry", "due"}})
	if err != nil || len(sts) != 3 {
		t.Fatalf("Lookup: %v, %v", sts, err)
	}
	for _, st := range sts {
		if st.State != transport.StateCancelled {
			t.Errorf("Lookup(%s): %v", st.ID, st.State)
		}
	}
	if got := claim(t, s, now.Add(time.Hour), "w2", 10); len(got.Deliveries) != 0 {
		t.Fatalf("cancelled tasks were claimed again: %v", ids(got.Deliveries))
	}
	if ext, err := s.Extend(ctx, transport.ExtendParams{Now: now, Until: now.Add(time.Minute), Leases: []transport.Lease{leases["rel"]}}); err != nil || !ext[0].Lost {
		t.Fatalf("Extend of a lease that was given back: %+v, %v", ext, err)
	}
	// The unique key is free again.
	enqueue(t, s, now, msg("rel2", uk))
	if f.ClaimByID {
		r, err := idClaimer(t, s).ClaimIDs(ctx, transport.ClaimIDsParams{Now: now.Add(time.Hour), Owner: "w3", LeaseUntil: now.Add(2 * time.Hour), IDs: []string{"rel", "retry"}})
		if err != nil {
			t.Fatalf("ClaimIDs: %v", err)
		}
		for i, x := range r {
			if x.Delivery != nil || x.State != transport.StateCancelled {
				t.Errorf("ClaimIDs of cancelled task %d: %+v", i, x)
			}
		}
	}
}

func idClaimer(t *testing.T, s transport.Transport) transport.IDClaimer {
	t.Helper()
	c, ok := s.(transport.IDClaimer)
	if !ok {
		t.Fatalf("%T claims ClaimByID but does not implement transport.IDClaimer", s)
	}
	return c
}

func testLookup(t *testing.T, s transport.Transport, _ Features) {
	enqueue(t, s, base, msg("k1"), msg("k2"))
	d := claim(t, s, base, "w", 1).Deliveries[0]
	s.Cancel(ctx, transport.CancelParams{Now: base, ID: d.ID})
	sts, err := s.Lookup(ctx, transport.LookupParams{Now: base, IDs: []string{"k1", "k2", "nope"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(sts) != 2 {
		t.Fatalf("Lookup returned %d statuses", len(sts))
	}
	for _, st := range sts {
		if st.ID == d.ID && (st.State != transport.StateRunning || !st.CancelRequested) {
			t.Fatalf("running: %+v", st)
		}
		if st.ID != d.ID && (st.State != transport.StateReady || st.CancelRequested) {
			t.Fatalf("ready: %+v", st)
		}
	}
}

func testPrune(t *testing.T, s transport.Transport, f Features) {
	need(t, f.Pruning, "Pruning")
	pr, ok := s.(transport.Pruner)
	if !ok {
		t.Fatalf("%T claims Pruning but does not implement transport.Pruner", s)
	}
	enqueue(t, s, base, msg("p1"), msg("p2"), msg("p3", func(m *transport.Message) { m.ResultTTL = 3 * time.Hour }))
	for _, d := range claim(t, s, base, "w", 3).Deliveries {
		finish(t, s, base, transport.Outcome{Lease: d.Lease(), State: transport.StateSucceeded})
	}
	enqueue(t, s, base, msg("p4"))
	n, err := pr.Prune(ctx, transport.PruneParams{Now: base.Add(59 * time.Minute), Limit: 10})
	if err != nil || n != 0 {
		t.Fatalf("early prune: %d %v", n, err)
	}
	n, err = pr.Prune(ctx, transport.PruneParams{Now: base.Add(61 * time.Minute), Limit: 1})
	if err != nil || n != 1 {
		t.Fatalf("prune limit 1: %d %v", n, err)
	}
	n, _ = pr.Prune(ctx, transport.PruneParams{Now: base.Add(61 * time.Minute), Limit: 10})
	if n != 1 {
		t.Fatalf("second prune: %d", n)
	}
	if get(t, s, "p3").State != transport.StateSucceeded || get(t, s, "p4").State != transport.StateReady {
		t.Fatal("prune deleted a task it should keep")
	}
}

func testConcurrentClaims(t *testing.T, s transport.Transport, _ Features) {
	const n = 400
	msgs := make([]transport.Message, n)
	for i := range msgs {
		msgs[i] = msg(fmt.Sprintf("cc%04d", i))
	}
	enqueue(t, s, base, msgs...)
	var mu sync.Mutex
	seen := map[string]string{}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			owner := fmt.Sprintf("w%d", w)
			for {
				res, err := s.Claim(ctx, transport.ClaimParams{Now: base, Owner: owner, Queues: []string{"default"}, Limit: 7, LeaseUntil: base.Add(time.Minute)})
				if err != nil {
					errs <- err
					return
				}
				if len(res.Deliveries) == 0 {
					return
				}
				items := make([]transport.Outcome, len(res.Deliveries))
				mu.Lock()
				for i, d := range res.Deliveries {
					if prev, dup := seen[d.ID]; dup {
						errs <- fmt.Errorf("%s claimed by %s and %s", d.ID, prev, owner)
					}
					seen[d.ID] = owner
					items[i] = transport.Outcome{Lease: d.Lease(), State: transport.StateSucceeded}
				}
				mu.Unlock()
				fr, err := s.Finish(ctx, transport.FinishParams{Now: base, Items: items})
				if err != nil {
					errs <- err
					return
				}
				for _, r := range fr {
					if r.Lost {
						errs <- errors.New("a held lease was reported lost")
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(seen) != n {
		t.Fatalf("claimed %d of %d tasks", len(seen), n)
	}
}

// ClaimIDs (for a result store behind a broker): a task is leased by id
// whatever its queue position; a task under a live lease or not due is
// left with the time to ask again; final and unknown tasks are left;
// expired, cancelled-while-lost and out-of-attempts tasks end.
func testClaimIDs(t *testing.T, s transport.Transport, f Features) {
	need(t, f.ClaimByID, "ClaimByID")
	c := idClaimer(t, s)
	enqueue(t, s, base,
		msg("a"), msg("b", func(m *transport.Message) { m.ETA = base.Add(time.Hour) }),
		msg("c", func(m *transport.Message) { m.Expires = base.Add(time.Second) }),
		msg("d", func(m *transport.Message) { m.MaxAttempts = 1 }), msg("e"))
	claimIDs := func(now time.Time, owner string, ids ...string) []transport.ClaimIDResult {
		t.Helper()
		res, err := c.ClaimIDs(ctx, transport.ClaimIDsParams{Now: now, Owner: owner, LeaseUntil: now.Add(30 * time.Second), IDs: ids})
		if err != nil || len(res) != len(ids) {
			t.Fatalf("ClaimIDs(%v): %v, %v", ids, res, err)
		}
		return res
	}
	res := claimIDs(base, "w1", "a", "b", "nope")
	if d := res[0].Delivery; d == nil || d.ID != "a" || d.Attempt != 1 || d.Owner != "w1" || d.Name != "t.noop" || string(d.Payload) != "{}" {
		t.Fatalf("a: %+v", res[0])
	}
	if res[1].Delivery != nil || res[1].State != transport.StateScheduled || !res[1].RunAt.Equal(base.Add(time.Hour)) {
		t.Fatalf("b (not due): %+v", res[1])
	}
	if res[2].Delivery != nil || res[2].State != 0 {
		t.Fatalf("unknown id: %+v", res[2])
	}
	// c, d and e stay claimable from their queue; a is leased.
	if got := claim(t, s, base, "w9", 10); len(got.Deliveries) != 3 {
		t.Fatalf("queue claim after ClaimIDs: %v", ids(got.Deliveries))
	}
	// A second copy of a is left while w1's lease lives, and leased as
	// the next attempt once it lapsed, fencing w1 out.
	if r := claimIDs(base.Add(time.Second), "w2", "a")[0]; r.Delivery != nil || r.State != transport.StateRunning || !r.RunAt.Equal(base.Add(30*time.Second)) {
		t.Fatalf("copy of a task under a live lease: %+v", r)
	}
	r := claimIDs(base.Add(31*time.Second), "w2", "a")[0]
	if r.Delivery == nil || r.Delivery.Attempt != 2 {
		t.Fatalf("after the lease lapsed: %+v", r)
	}
	if f := finish(t, s, base.Add(32*time.Second), transport.Outcome{Lease: transport.Lease{ID: "a", Attempt: 1, Owner: "w1"}, State: transport.StateSucceeded}); !f.Lost {
		t.Fatal("the lapsed holder's outcome was written")
	}
	finish(t, s, base.Add(32*time.Second), transport.Outcome{Lease: r.Delivery.Lease(), State: transport.StateSucceeded, Result: []byte("1")})
	later := base.Add(time.Minute)
	if r := claimIDs(later, "w3", "a")[0]; r.Delivery != nil || r.State != transport.StateSucceeded || r.Ended {
		t.Fatalf("finished task: %+v", r)
	}
	// c expired while w9 held it and w9 was lost.
	if r := claimIDs(later, "w3", "c")[0]; !r.Ended || r.State != transport.StateExpired {
		t.Fatalf("expired: %+v", r)
	}
	// d had one attempt, and its worker was lost.
	if r := claimIDs(later, "w3", "d")[0]; !r.Ended || r.State != transport.StateFailed {
		t.Fatalf("out of attempts: %+v", r)
	}
	if in := get(t, s, "d"); in.State != transport.StateFailed || in.Error == "" {
		t.Fatalf("d: %v %q", in.State, in.Error)
	}
	// e was cancelled while running, then its worker was lost.
	if cr, err := s.Cancel(ctx, transport.CancelParams{Now: base.Add(3 * time.Second), ID: "e"}); err != nil || cr.State != transport.StateRunning {
		t.Fatalf("Cancel(e) = %+v, %v", cr, err)
	}
	if r := claimIDs(later, "w3", "e")[0]; !r.Ended || r.State != transport.StateCancelled {
		t.Fatalf("cancelled while lost: %+v", r)
	}
	// b falls due.
	if r := claimIDs(base.Add(2*time.Hour), "w3", "b")[0]; r.Delivery == nil || r.Delivery.Attempt != 1 {
		t.Fatalf("due: %+v", r)
	}
}
