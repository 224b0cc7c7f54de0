package transporttest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/transport"
)

// The operations API: contract tests on the transport under the suite's
// clock (adminContract), and end-to-end tests of docket's API on every
// backend that claims Admin (OperateEndToEnd, PauseQueue).

var adminContract = []struct {
	name string
	fn   func(t *testing.T, s transport.Transport, f Features)
}{
	{"AdminStats", testAdminStats},
	{"AdminSearch", testAdminSearch},
	{"AdminAct", testAdminAct},
	{"AdminAttempts", testAdminAttempts},
	{"AdminRegistry", testAdminRegistry},
	{"ScheduleAdmin", testScheduleAdmin},
}

func adminOf(t *testing.T, s transport.Transport, f Features) transport.Admin {
	t.Helper()
	need(t, f.Admin, "Admin")
	a, ok := s.(transport.Admin)
	if !ok {
		t.Fatalf("%T does not implement transport.Admin", s)
	}
	return a
}

func stats(t *testing.T, a transport.Admin, now time.Time) map[string]transport.QueueStats {
	t.Helper()
	st, err := a.Stats(ctx, transport.StatsParams{Now: now})
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	out := map[string]transport.QueueStats{}
	for _, q := range st.Queues {
		out[q.Queue] = q
	}
	return out
}

func act(t *testing.T, a transport.Admin, now time.Time, action transport.Action, attempts int, ids ...string) transport.ActResult {
	t.Helper()
	res, err := a.Act(ctx, transport.ActParams{Now: now, Action: action, IDs: ids, Attempts: attempts})
	if err != nil {
		t.Fatalf("Act %v: %v", action, err)
	}
	return res
}

func testAdminStats(t *testing.T, s transport.Transport, f Features) {
	a := adminOf(t, s, f)
	now := base
	enqueue(t, s, now, msg("s1"), msg("s2"), msg("s3"), msg("s4"), msg("m1", func(m *transport.Message) {
		m.Queue, m.ETA = "mail", now.Add(time.Hour)
	}))
	later := now.Add(5 * time.Second)
	d := claim(t, s, later, "w", 3).Deliveries
	if len(d) != 3 {
		t.Fatalf("claimed %d, want 3", len(d))
	}
	finish(t, s, later, transport.Outcome{Lease: d[0].Lease(), State: transport.StateSucceeded, Result: []byte("1")})
	finish(t, s, later, transport.Outcome{Lease: d[1].Lease(), State: transport.StateFailed, Error: "boom"})
	finish(t, s, later, transport.Outcome{Lease: d[2].Lease(), State: transport.StateScheduled, Error: "again", RunAt: later.Add(time.Minute)})
	got := stats(t, a, later)
	def := got["default"]
	want := map[transport.State]int64{transport.StateScheduled: 0, transport.StateReady: 1, transport.StateRunning: 0,
		transport.StateSucceeded: 1, transport.StateFailed: 1, transport.StateCancelled: 0, transport.StateExpired: 0}
	for st, n := range want {
		if def.Counts[st] != n {
			t.Errorf("default %v = %d, want %d (counts %v)", st, def.Counts[st], n, def.Counts)
		}
	}
	if def.Retrying != 1 {
		t.Errorf("default retrying = %d, want 1", def.Retrying)
	}
	if !def.OldestReady.Equal(now) {
		t.Errorf("default OldestReady = %v, want %v (the due time of the ready task)", def.OldestReady, now)
	}
	if m := got["mail"]; m.Counts[transport.StateScheduled] != 1 || !m.OldestReady.IsZero() {
		t.Errorf("mail = %+v, want 1 scheduled and no ready task", m)
	}
	st, err := a.Stats(ctx, transport.StatsParams{Now: later})
	if err != nil {
		t.Fatal(err)
	}
	var ok, failed int64
	for _, m := range st.History {
		if m.Queue == "default" {
			ok += m.Succeeded
			failed += m.Failed
			if !m.Minute.Equal(later.Truncate(time.Minute)) {
				t.Errorf("minute %v, want %v", m.Minute, later.Truncate(time.Minute))
			}
		}
	}
	if ok != 1 || failed != 2 {
		t.Errorf("history: %d succeeded, %d failed; want 1 and 2 (a retry counts as a failed attempt): %+v", ok, failed, st.History)
	}
	// An hour later the history is empty.
	// An hour later the history is empty, not missing: the backend keeps
	// one (nil would say it does not).
	if st, _ := a.Stats(ctx, transport.StatsParams{Now: later.Add(2 * time.Hour)}); len(st.History) != 0 || st.History == nil {
		t.Errorf("history two hours later: %#v, want empty and not nil", st.History)
	}
}

func search(t *testing.T, a transport.Admin, p transport.SearchParams) ([]string, string) {
	t.Helper()
	if p.Now.IsZero() {
		p.Now = base
	}
	res, err := a.Search(ctx, p)
	if err != nil {
		t.Fatalf("Search(%+v): %v", p, err)
	}
	var out []string
	for _, in := range res.Tasks {
		out = append(out, in.ID)
	}
	return out, res.Next
}

// searchAll pages through a search and returns every id.
func searchAll(t *testing.T, a transport.Admin, p transport.SearchParams) []string {
	t.Helper()
	var all []string
	for range 1000 {
		ids, next := search(t, a, p)
		all = append(all, ids...)
		if next == "" {
			return all
		}
		p.Cursor = next
	}
	t.Fatal("search does not end")
	return nil
}

func testAdminSearch(t *testing.T, s transport.Transport, f Features) {
	a := adminOf(t, s, f)
	now := base
	var msgs []transport.Message
	for i := range 30 {
		i := i
		msgs = append(msgs, msg(fmt.Sprintf("x%02d", i), func(m *transport.Message) {
			m.Created = now.Add(time.Duration(i) * time.Second)
			if i%3 == 1 {
				m.Queue = "mail"
			}
			if i%5 == 0 {
				m.Name = "t.other"
			}
			m.Payload = []byte(fmt.Sprintf(`{"n":%d,"who":"user-%d"}`, i, i))
			if i == 29 {
				m.Headers = map[string]string{"tenant": "acme-7"}
			}
		}))
	}
	enqueue(t, s, now, msgs...)
	// Fail x00, x03, x06 (default queue, claimed in order).
	d := claim(t, s, now, "w", 3).Deliveries
	for _, x := range d {
		finish(t, s, now, transport.Outcome{Lease: x.Lease(), State: transport.StateFailed, Error: "smtp: 550 mailbox " + x.ID})
	}
	failed := ids(d)

	all := searchAll(t, a, transport.SearchParams{Limit: 7})
	if len(all) != 30 || !slices.IsSorted(all) {
		t.Fatalf("all, oldest first, 7 a page: %v", all)
	}
	newest := searchAll(t, a, transport.SearchParams{Limit: 4, Order: transport.NewestFirst})
	if len(newest) != 30 || newest[0] != "x29" || newest[29] != "x00" {
		t.Fatalf("all, newest first: %v", newest)
	}
	cases := []struct {
		p    transport.SearchParams
		want []string
	}{
		{transport.SearchParams{States: []transport.State{transport.StateFailed}}, failed},
		{transport.SearchParams{States: []transport.State{transport.StateFailed}, Queue: "mail"}, nil},
		{transport.SearchParams{Queue: "mail", Name: "t.other"}, []string{"x10", "x25"}},
		{transport.SearchParams{Text: "mailbox x03"}, []string{"x03"}},
		{transport.SearchParams{Text: `"user-17"`}, []string{"x17"}},
		{transport.SearchParams{Text: "acme-7"}, []string{"x29"}},
		{transport.SearchParams{IDPrefix: "x1"}, []string{"x10", "x11", "x12", "x13", "x14", "x15", "x16", "x17", "x18", "x19"}},
		{transport.SearchParams{Since: now.Add(27 * time.Second)}, []string{"x27", "x28", "x29"}},
		{transport.SearchParams{Until: now.Add(2 * time.Second)}, []string{"x00", "x01"}},
		{transport.SearchParams{States: []transport.State{transport.StateReady}, Queue: "mail", Until: now.Add(5 * time.Second)}, []string{"x01", "x04"}},
	}
	for _, c := range cases {
		if got := searchAll(t, a, c.p); !slices.Equal(got, c.want) {
			t.Errorf("Search(%+v) = %v, want %v", c.p, got, c.want)
		}
	}
	// Paging stays correct while tasks change state: ready tasks seen
	// once each, even when the ones already listed are claimed meanwhile.
	p := transport.SearchParams{States: []transport.State{transport.StateReady}, Limit: 5}
	first, next := search(t, a, p)
	if len(first) != 5 || next == "" {
		t.Fatalf("first page %v, next %q", first, next)
	}
	claim(t, s, now, "w2", 5, func(cp *transport.ClaimParams) { cp.Queues = []string{"default", "mail"} })
	p.Cursor = next
	rest := searchAll(t, a, p)
	seen := append(slices.Clone(first), rest...)
	slices.Sort(seen)
	if len(slices.Compact(seen)) != len(first)+len(rest) {
		t.Errorf("a task was listed twice: %v then %v", first, rest)
	}
	for _, id := range rest {
		if id <= first[len(first)-1] {
			t.Errorf("page after the cursor lists %s, before it", id)
		}
	}
	// A bounded examination: a search that matches nothing stops early
	// with a cursor to continue.
	ids1, next1 := search(t, a, transport.SearchParams{Text: "no such text", Examine: 5})
	if len(ids1) != 0 || next1 == "" {
		t.Errorf("Examine 5 of 30: %v, next %q; want no tasks and a cursor", ids1, next1)
	}
	// Info in results carries the task.
	res, err := a.Search(ctx, transport.SearchParams{Now: now, IDPrefix: "x29"})
	if err != nil || len(res.Tasks) != 1 || res.Tasks[0].Headers["tenant"] != "acme-7" || string(res.Tasks[0].Payload) != `{"n":29,"who":"user-29"}` {
		t.Errorf("Search x29 = %+v, %v", res.Tasks, err)
	}
}

func testAdminAct(t *testing.T, s transport.Transport, f Features) {
	a := adminOf(t, s, f)
	now := base
	enqueue(t, s, now, msg("f1", func(m *transport.Message) { m.MaxAttempts = 1; m.UniqueKey = "k1" }),
		msg("f2", func(m *transport.Message) { m.MaxAttempts = 1; m.Expires = now.Add(time.Hour) }),
		msg("r1"), msg("sch", func(m *transport.Message) { m.ETA = now.Add(time.Hour) }))
	d := claim(t, s, now, "w", 3).Deliveries // f1, f2, r1 in order
	if len(d) != 3 {
		t.Fatalf("claimed %v", ids(d))
	}
	old := d[0].Lease()
	for _, x := range d[:2] {
		finish(t, s, now, transport.Outcome{Lease: x.Lease(), State: transport.StateFailed, Error: "boom"})
	}
	// f1's unique key is taken by a new task meanwhile.
	enqueue(t, s, now, msg("f1b", func(m *transport.Message) { m.UniqueKey = "k1" }))

	if _, err := a.Act(ctx, transport.ActParams{Now: now, Action: transport.ActionRetry, IDs: []string{"f2"}}); !errors.Is(err, transport.ErrInvalid) {
		t.Errorf("retry with Attempts 0: %v, want ErrInvalid", err)
	}
	res := act(t, a, now, transport.ActionRetry, 2, "f1", "f2", "r1", "nope")
	if !slices.Equal(res.Changed, []string{"f2"}) || res.Skipped != 2 || res.Missing != 1 {
		t.Fatalf("retry = %+v; want f2 changed, f1 (key taken) and r1 (running) skipped, 1 missing", res)
	}
	in := get(t, s, "f2")
	if in.State != transport.StateReady || in.MaxAttempts != in.Attempt+2 || !in.Expires.IsZero() {
		t.Errorf("retried f2 = state %v, attempt %d of %d, expires %v; want ready with 2 more attempts and no expiry", in.State, in.Attempt, in.MaxAttempts, in.Expires)
	}
	if res := act(t, a, now, transport.ActionRetry, 1, "f2"); len(res.Changed) != 0 || res.Skipped != 1 {
		t.Errorf("second retry = %+v, want skipped: safe to repeat", res)
	}
	d2 := claim(t, s, now.Add(time.Second), "w2", 5).Deliveries
	if !slices.Contains(ids(d2), "f2") {
		t.Fatalf("retried f2 not claimed: %v", ids(d2))
	}
	for _, x := range d2 {
		if x.ID == "f2" && x.Attempt != 2 {
			t.Errorf("retried f2 claimed as attempt %d, want 2 (attempts keep counting)", x.Attempt)
		}
	}
	// The first attempt's lease of f1 stays fenced out.
	if r := finish(t, s, now, transport.Outcome{Lease: old, State: transport.StateSucceeded}); !r.Lost {
		t.Errorf("stale lease of a finished task was accepted")
	}
	// Run now: the scheduled task becomes claimable at once.
	if res := act(t, a, now, transport.ActionRunNow, 0, "sch", "r1"); !slices.Equal(res.Changed, []string{"sch"}) || res.Skipped != 1 {
		t.Errorf("run now = %+v, want sch changed and r1 skipped", res)
	}
	if d3 := claim(t, s, now.Add(2*time.Second), "w3", 5).Deliveries; !slices.Contains(ids(d3), "sch") {
		t.Errorf("run-now task not claimed: %v", ids(d3))
	}
	// Delete: not a running task; a finished one disappears.
	if res := act(t, a, now, transport.ActionDelete, 0, "r1", "f1"); !slices.Equal(res.Changed, []string{"f1"}) || res.Skipped != 1 {
		t.Errorf("delete = %+v, want f1 deleted, running r1 skipped", res)
	}
	if _, err := s.Get(ctx, transport.GetParams{Now: now, ID: "f1"}); !errors.Is(err, transport.ErrNotFound) {
		t.Errorf("Get deleted: %v, want ErrNotFound", err)
	}
	// Cancel: a ready task ends, a running one is flagged.
	enqueue(t, s, now, msg("c1"))
	res = act(t, a, now, transport.ActionCancel, 0, "c1", "r1")
	if len(res.Changed) != 2 {
		t.Errorf("cancel = %+v, want both", res)
	}
	if in := get(t, s, "c1"); in.State != transport.StateCancelled {
		t.Errorf("cancelled ready task: %v", in.State)
	}
	if in := get(t, s, "r1"); in.State != transport.StateRunning || !in.CancelRequested {
		t.Errorf("cancelled running task: %v, flag %v", in.State, in.CancelRequested)
	}
}

func testAdminAttempts(t *testing.T, s transport.Transport, f Features) {
	adminOf(t, s, f)
	now := base
	enqueue(t, s, now, msg("a1", func(m *transport.Message) { m.MaxAttempts = 3 }))
	d := claim(t, s, now, "w1", 1).Deliveries[0]
	finish(t, s, now.Add(time.Second), transport.Outcome{Lease: d.Lease(), State: transport.StateScheduled, Error: "first failure", RunAt: now.Add(2 * time.Second)})
	d = claim(t, s, now.Add(3*time.Second), "w2", 1).Deliveries[0]
	// w2 is lost: its lease lapses and the next claim rescues the task.
	d = claim(t, s, now.Add(time.Minute), "w3", 1).Deliveries[0]
	if d.Attempt != 3 {
		t.Fatalf("third attempt is %d", d.Attempt)
	}
	finish(t, s, now.Add(61*time.Second), transport.Outcome{Lease: d.Lease(), State: transport.StateSucceeded, Result: []byte("1")})
	in := get(t, s, "a1")
	if in.Owner != "w3" {
		t.Errorf("Owner after success = %q, want w3 (kept)", in.Owner)
	}
	if len(in.Attempts) != 2 {
		t.Fatalf("attempts = %+v, want the retry and the lost worker", in.Attempts)
	}
	r, l := in.Attempts[0], in.Attempts[1]
	if r.N != 1 || r.Owner != "w1" || r.State != transport.StateScheduled || r.Error != "first failure" || !r.Started.Equal(now) || !r.Finished.Equal(now.Add(time.Second)) {
		t.Errorf("first attempt = %+v", r)
	}
	if l.N != 2 || l.Owner != "w2" || l.State != transport.StateReady || !strings.Contains(l.Error, "worker lost") {
		t.Errorf("second attempt = %+v, want worker lost", l)
	}
}

func testAdminRegistry(t *testing.T, s transport.Transport, f Features) {
	a := adminOf(t, s, f)
	now := base
	// Pause.
	if err := a.SetPaused(ctx, transport.SetPausedParams{Now: now, Queue: "mail", Paused: true}); err != nil {
		t.Fatal(err)
	}
	a.SetPaused(ctx, transport.SetPausedParams{Now: now.Add(time.Second), Queue: "mail", Paused: true}) // idempotent
	ps, err := a.Paused(ctx, transport.PausedParams{Now: now})
	if err != nil || len(ps) != 1 || ps[0].Queue != "mail" || !ps[0].Since.Equal(now) {
		t.Errorf("Paused = %+v, %v; want mail since the first pause", ps, err)
	}
	a.SetPaused(ctx, transport.SetPausedParams{Now: now, Queue: "mail", Paused: false})
	if ps, _ := a.Paused(ctx, transport.PausedParams{Now: now}); len(ps) != 0 {
		t.Errorf("Paused after resume = %+v", ps)
	}
	// Workers.
	w := transport.WorkerInfo{ID: "h:1:a", Host: "h", PID: 1, Queues: []string{"default"}, Concurrency: 4, Busy: 2,
		Started: now, Heartbeat: now, Expires: now.Add(30 * time.Second), Version: "v1"}
	if err := a.Heartbeat(ctx, transport.HeartbeatParams{Now: now, Worker: w}); err != nil {
		t.Fatal(err)
	}
	w2 := w
	w2.ID = "h:2:b"
	a.Heartbeat(ctx, transport.HeartbeatParams{Now: now, Worker: w2})
	ws, err := a.Workers(ctx, transport.WorkersParams{Now: now.Add(time.Second)})
	if err != nil || len(ws) != 2 {
		t.Fatalf("Workers = %+v, %v", ws, err)
	}
	for _, x := range ws {
		if x.ID == w.ID && (x.Host != "h" || x.Concurrency != 4 || x.Busy != 2 || !slices.Equal(x.Queues, []string{"default"}) || x.Version != "v1" || !x.Started.Equal(now)) {
			t.Errorf("worker = %+v, want %+v", x, w)
		}
	}
	a.Heartbeat(ctx, transport.HeartbeatParams{Now: now, Worker: w2, Gone: true})
	w.Heartbeat, w.Expires = now.Add(20*time.Second), now.Add(50*time.Second)
	a.Heartbeat(ctx, transport.HeartbeatParams{Now: now.Add(20 * time.Second), Worker: w})
	if ws, _ := a.Workers(ctx, transport.WorkersParams{Now: now.Add(40 * time.Second)}); len(ws) != 1 || ws[0].ID != w.ID {
		t.Errorf("Workers after one left and one renewed = %+v", ws)
	}
	if ws, _ := a.Workers(ctx, transport.WorkersParams{Now: now.Add(51 * time.Second)}); len(ws) != 0 {
		t.Errorf("Workers after the heartbeat expired = %+v", ws)
	}
	// Progress, fenced on the lease.
	enqueue(t, s, now, msg("p1"))
	d := claim(t, s, now, "w", 1).Deliveries[0]
	if r, err := a.SetProgress(ctx, transport.ProgressParams{Now: now, Lease: d.Lease(), Value: []byte(`{"done":3,"total":10}`)}); err != nil || r.Lost {
		t.Fatalf("SetProgress = %+v, %v", r, err)
	}
	stale := d.Lease()
	stale.Owner = "other"
	if r, _ := a.SetProgress(ctx, transport.ProgressParams{Now: now, Lease: stale, Value: []byte(`{}`)}); !r.Lost {
		t.Errorf("SetProgress with another owner's lease was accepted")
	}
	if in := get(t, s, "p1"); string(in.Progress) != `{"done":3,"total":10}` {
		t.Errorf("Progress = %s", in.Progress)
	}
	// A new attempt starts with none.
	finish(t, s, now, transport.Outcome{Lease: d.Lease(), State: transport.StateScheduled, Error: "again", RunAt: now})
	claim(t, s, now.Add(time.Second), "w", 1)
	if in := get(t, s, "p1"); in.State != transport.StateRunning || len(in.Progress) != 0 {
		t.Errorf("second attempt: state %v, progress %q; want running with no progress", in.State, in.Progress)
	}
}

func testScheduleAdmin(t *testing.T, s transport.Transport, f Features) {
	need(t, f.Admin && f.Schedules, "Admin and Schedules")
	ss := s.(transport.ScheduleStore)
	sa, ok := s.(transport.ScheduleAdmin)
	if !ok {
		t.Fatalf("%T does not implement transport.ScheduleAdmin", s)
	}
	now := base
	tmpl := msg("", func(m *transport.Message) {
		m.Name, m.Queue, m.Payload = "t.report", "reports", []byte(`{"kind":"daily"}`)
	})
	tmpl.Created = time.Time{}
	next := now.Add(time.Hour)
	if _, err := ss.ScheduleInit(ctx, transport.ScheduleInitParams{Now: now, Name: "daily", Spec: "every 1h", NextAt: next, Template: &tmpl}); err != nil {
		t.Fatal(err)
	}
	ss.ScheduleInit(ctx, transport.ScheduleInitParams{Now: now, Name: "bare", Spec: "every 1h", NextAt: next})
	if _, err := sa.ScheduleTrigger(ctx, transport.ScheduleTriggerParams{Now: now, Name: "bare", ID: "b1"}); !errors.Is(err, transport.ErrInvalid) {
		t.Errorf("trigger without a template: %v, want ErrInvalid", err)
	}
	if _, err := sa.ScheduleTrigger(ctx, transport.ScheduleTriggerParams{Now: now, Name: "nope", ID: "n1"}); !errors.Is(err, transport.ErrNotFound) {
		t.Errorf("trigger of an unknown schedule: %v, want ErrNotFound", err)
	}
	id, err := sa.ScheduleTrigger(ctx, transport.ScheduleTriggerParams{Now: now.Add(time.Minute), Name: "daily", ID: "trig1"})
	if err != nil || id != "trig1" {
		t.Fatalf("trigger = %q, %v", id, err)
	}
	in := get(t, s, "trig1")
	if in.Name != "t.report" || in.Queue != "reports" || string(in.Payload) != `{"kind":"daily"}` || in.State != transport.StateReady {
		t.Errorf("triggered task = %+v", in)
	}
	sts, err := ss.ScheduleStates(ctx, transport.ScheduleStatesParams{Now: now, Names: []string{"daily"}})
	if err != nil || len(sts) != 1 {
		t.Fatalf("states = %+v, %v", sts, err)
	}
	st := sts[0]
	if !st.NextAt.Equal(next) || !st.LastSlot.IsZero() || st.LastTaskID != "trig1" || st.Template == nil || st.Template.Name != "t.report" {
		t.Errorf("after trigger: %+v; want the cursor untouched, no slot, last task trig1, the template kept", st)
	}
	// Paused: a slot is skipped, the cursor still moves.
	if err := sa.SchedulePause(ctx, transport.SchedulePauseParams{Now: now, Name: "daily", Paused: true}); err != nil {
		t.Fatal(err)
	}
	m := tmpl
	m.ID, m.Created = "slot1", next
	res, err := ss.ScheduleFire(ctx, transport.ScheduleFireParams{Now: next, Name: "daily", Cursor: next, NextAt: next.Add(time.Hour), Slot: next, Message: &m})
	if err != nil || !res.Advanced || res.Fired || res.Skipped != "paused" {
		t.Errorf("fire while paused = %+v, %v; want advanced, not fired, skipped paused", res, err)
	}
	if _, err := s.Get(ctx, transport.GetParams{Now: next, ID: "slot1"}); !errors.Is(err, transport.ErrNotFound) {
		t.Errorf("a paused slot enqueued its task: %v", err)
	}
	sts, _ = ss.ScheduleStates(ctx, transport.ScheduleStatesParams{Now: now, Names: []string{"daily"}})
	if len(sts) != 1 || !sts[0].Paused {
		t.Errorf("states = %+v, want paused", sts)
	}
	sa.SchedulePause(ctx, transport.SchedulePauseParams{Now: now, Name: "daily", Paused: false})
	m.ID = "slot2"
	res, err = ss.ScheduleFire(ctx, transport.ScheduleFireParams{Now: next.Add(time.Hour), Name: "daily", Cursor: next.Add(time.Hour), NextAt: next.Add(2 * time.Hour), Slot: next.Add(time.Hour), Message: &m})
	if err != nil || !res.Fired {
		t.Errorf("fire after resume = %+v, %v", res, err)
	}
}

// testOperate runs the 3 a.m. story through docket's API: tasks fail,
// an operator finds them, reads why, fixes the cause and retries them all.
func testOperate(t *testing.T, b Backend) {
	need(t, b.Features.Admin, "Admin")
	url := b.NewURL(t)
	q := open(t, b, url)
	var fixed atomic.Bool
	task := docket.NewTask("tt.report", func(ctx context.Context, a args) (int, error) {
		docket.Progress(ctx, 1, 2)
		if a.N%5 == 0 && !fixed.Load() {
			return 0, docket.Permanent(fmt.Errorf("report %d: disk full", a.N))
		}
		return a.N, nil
	})
	q.Register(task)
	var in []args
	for i := range 50 {
		in = append(in, args{i})
	}
	rs, err := task.EnqueueMany(bg, q, in)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, q)
	for _, r := range rs {
		r.Wait(wctx(t))
	}
	ws, err := q.Workers(bg)
	if err != nil || len(ws) != 1 || ws[0].Concurrency == 0 {
		t.Errorf("Workers = %+v, %v; want this process", ws, err)
	}
	stop()
	st, err := q.Stats(bg)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int64{}
	for _, qs := range st.Queues {
		for k, v := range qs.Counts {
			counts[k] += v
		}
	}
	if counts["succeeded"] != 40 || counts["failed"] != 10 {
		t.Fatalf("stats %v, want 40 succeeded and 10 failed", counts)
	}
	page, err := q.Search(bg, docket.SearchOptions{Filter: docket.Filter{States: []string{"failed"}, Name: "tt.report"}, Limit: 3, Newest: true})
	if err != nil || len(page.Tasks) != 3 || page.Next == "" {
		t.Fatalf("Search failed = %+v, %v", page, err)
	}
	info, err := q.Info(bg, page.Tasks[0].ID)
	if err != nil || !strings.Contains(info.Error, "disk full") || len(info.Attempts) != 1 || info.Attempts[0].Owner == "" || string(info.Progress) != `{"done":1,"total":2}` {
		t.Fatalf("Info = %+v, %v; want the error, one attempt with its worker, and the progress", info, err)
	}
	fixed.Store(true)
	var reported int
	res, err := q.Act(bg, docket.ActionRetry, docket.Target{Filter: &docket.Filter{States: []string{"failed"}}, Progress: func(_, changed int) { reported = changed }})
	if err != nil || res.Changed != 10 || reported != 10 {
		t.Fatalf("retry all failed = %+v, %v (progress said %d)", res, err, reported)
	}
	if res, _ := q.Act(bg, docket.ActionRetry, docket.Target{Filter: &docket.Filter{States: []string{"failed"}}}); res.Changed != 0 {
		t.Errorf("a second retry changed %d tasks", res.Changed)
	}
	run(t, q)
	for _, r := range rs {
		if _, err := r.Wait(wctx(t)); err != nil {
			t.Fatalf("after the retry: %v", err)
		}
	}
	if info, _ := q.Info(bg, page.Tasks[0].ID); info.State != docket.StateSucceeded || len(info.Attempts) != 2 {
		t.Errorf("retried task = %v with attempts %+v; want succeeded, with both attempts", info.State, info.Attempts)
	}
}

// testPauseQueue: a paused queue is not claimed by a worker of another
// Queue (another process) that starts after the pause; enqueue still
// works, other queues run, and resume lets the task run.
func testPauseQueue(t *testing.T, b Backend) {
	need(t, b.Features.Admin, "Admin")
	url := b.NewURL(t)
	worker, operator := open(t, b, url), open(t, b, url)
	var ran atomic.Int32
	task := docket.NewTask("tt.paused", func(ctx context.Context, a args) (int, error) { ran.Add(1); return 0, nil })
	other := docket.NewTask("tt.other-queue", func(ctx context.Context, a args) (int, error) { return 0, nil }, docket.OnQueue("other"))
	worker.Register(task, other)
	operator.Register(task, other)
	if err := operator.PauseQueue(bg, docket.DefaultQueue); err != nil {
		t.Fatal(err)
	}
	r, err := task.Enqueue(bg, operator, args{1})
	if err != nil {
		t.Fatalf("enqueue on a paused queue: %v", err)
	}
	run(t, worker)
	// The worker claims: a task of another queue runs...
	o, _ := other.Enqueue(bg, operator, args{1})
	if _, err := o.Wait(wctx(t)); err != nil {
		t.Fatalf("a task of another queue: %v", err)
	}
	// ...but not the paused queue's, enqueued before it started.
	if in, _ := r.Info(bg); in.State != docket.StateReady || ran.Load() != 0 {
		t.Fatalf("task on the paused queue: %v, ran %d times", in.State, ran.Load())
	}
	st, _ := operator.Stats(bg)
	var paused bool
	for _, qs := range st.Queues {
		paused = paused || qs.Name == docket.DefaultQueue && qs.Paused
	}
	if !paused {
		t.Errorf("Stats does not show the pause: %+v", st.Queues)
	}
	if err := operator.ResumeQueue(bg, docket.DefaultQueue); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Wait(wctx(t)); err != nil {
		t.Fatalf("after resume: %v", err)
	}
}
