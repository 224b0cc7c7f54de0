package sqlite

import (
	"bytes"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/docketq/docket/transport"
)

// Tests of the operations API (admin.go, search.go); the shared contract
// runs in conformance_test.go.

func enqueueT(t *testing.T, s *Store, now time.Time, msgs ...transport.Message) {
	t.Helper()
	if _, err := s.Enqueue(ctx, transport.EnqueueParams{Now: now, Messages: msgs}); err != nil {
		t.Fatal(err)
	}
}

func claimT(t *testing.T, s *Store, now time.Time, owner string, limit int, queues ...string) []transport.Delivery {
	t.Helper()
	if len(queues) == 0 {
		queues = []string{"default"}
	}
	res, err := s.Claim(ctx, transport.ClaimParams{Now: now, Owner: owner, Queues: queues, Limit: limit, LeaseUntil: now.Add(30 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	return res.Deliveries
}

func finishT(t *testing.T, s *Store, now time.Time, outs ...transport.Outcome) []transport.FinishResult {
	t.Helper()
	res, err := s.Finish(ctx, transport.FinishParams{Now: now, Items: outs})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func getT(t *testing.T, s *Store, id string) transport.Info {
	t.Helper()
	in, err := s.Get(ctx, transport.GetParams{Now: base, ID: id})
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func actT(t *testing.T, s *Store, now time.Time, a transport.Action, attempts int, ids ...string) transport.ActResult {
	t.Helper()
	res, err := s.Act(ctx, transport.ActParams{Now: now, Action: a, IDs: ids, Attempts: attempts})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func searchIDs(t *testing.T, s *Store, p transport.SearchParams) ([]string, string) {
	t.Helper()
	res, err := s.Search(ctx, p)
	if err != nil {
		t.Fatalf("Search(%+v): %v", p, err)
	}
	var ids []string
	for _, in := range res.Tasks {
		ids = append(ids, in.ID)
	}
	return ids, res.Next
}

// ulidAt is a task id made at t, as docket makes them.
func ulidAt(t time.Time, i int) string {
	entropy := make([]byte, 10)
	binary.BigEndian.PutUint64(entropy[2:], uint64(i))
	return ulid.MustNew(ulid.Timestamp(t), bytes.NewReader(entropy)).String()
}

func explain(t *testing.T, s *Store, q string, args ...any) []string {
	t.Helper()
	rows, err := s.rdb.QueryContext(ctx, "EXPLAIN QUERY PLAN "+q, args...)
	if err != nil {
		t.Fatalf("explain %s: %v", q, err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return plan
}

// fullScan reports a plan step that reads the whole task table in rowid
// order, without any index.
func fullScan(plan []string) bool {
	for _, step := range plan {
		f := strings.Fields(step)
		if len(f) >= 2 && f[0] == "SCAN" && (f[1] == "docket_tasks" || f[1] == "t" || f[1] == "u") && !strings.Contains(step, "USING") {
			return true
		}
	}
	return false
}

// Every statement Stats, Search and Act run uses an index: no plain scan
// of the task table, and the walks read in index order (no sort).
func TestAdminQueryPlans(t *testing.T) {
	s := openFile(t, filepath.Join(t.TempDir(), "q.db"))
	var msgs []transport.Message
	for i := range 3000 {
		m := msg(ulidAt(base.Add(time.Duration(i)*time.Millisecond), i))
		m.Queue = []string{"default", "mail", "reports"}[i%3]
		m.Priority = i % 4
		if i%2 == 0 {
			m.ETA = base.Add(time.Hour)
		}
		msgs = append(msgs, m)
	}
	enqueueT(t, s, base, msgs...)
	for _, d := range claimT(t, s, base, "w", 200, "default", "mail") {
		finishT(t, s, base, transport.Outcome{Lease: d.Lease(), State: transport.StateSucceeded})
	}
	claimT(t, s, base, "w", 20, "reports")
	type shape struct {
		name string
		q    string
		args []any
		// covering: the statement may read a whole index (the counts).
		covering bool
		// uses lists what the plan must show: the indexes it reads.
		uses []string
	}
	shapes := []shape{
		{"stats-count", statsCountSQL, nil, true, []string{"COVERING INDEX docket_tasks_admin"}},
		{"stats-ready", statsReadySQL, nil, true, []string{"COVERING INDEX docket_tasks_ready"}},
		// The running count reads the rowids of the timer index (the
		// scheduled and running tasks) and those of the scheduled tasks in
		// the admin index, never the ready or finished tasks.
		{"stats-running", statsRunningSQL, []any{`["default","mail"]`}, true, []string{"SCAN docket_tasks USING INDEX docket_tasks_timers",
			"COVERING INDEX docket_tasks_admin (queue=? AND state=?)", "USING INTEGER PRIMARY KEY (rowid=?)"}},
		{"stats-retrying", statsRetryingSQL, []any{`["default","mail"]`}, false, []string{"INDEX docket_tasks_admin (queue=? AND state=?)"}},
		{"stats-oldest-ready", statsOldestReadySQL, []any{"default"}, false, []string{"docket_tasks_ready"}},
		{"stats-history", statsHistorySQL, []any{1}, false, nil},
		{"queues", queuesSQL, nil, false, []string{"COVERING INDEX docket_tasks_admin"}},
		{"read-tasks", "SELECT " + infoCols + " FROM docket_tasks WHERE id IN (SELECT value FROM json_each(?))", []any{`["a"]`}, false, nil},
		{"act-retry", actRetrySQL, []any{1, 2, "x"}, false, nil},
		{"act-cancel", actCancelSQL, []any{1, "x"}, false, nil},
		{"act-delete", actDeleteSQL, []any{"x"}, false, nil},
		{"act-run-now", actRunNowSQL, []any{1, "x"}, false, nil},
		{"progress", progressSQL, []any{[]byte("1"), "x", 1, "o"}, false, nil},
		{"finish-minutes", finishMinutesSQL, []any{1, `["a"]`, `["b"]`}, false, nil},
		{"promote", promoteSQL, []any{1}, false, nil},
		{"claim-id", claimIDSQL, []any{1, "o", 2, "x"}, false, nil},
		{"end-id", endIDSQL, []any{1, 5, "e", "x"}, false, nil},
	}
	// Every query shape of Search: each filter, both orders, with and
	// without a queue, state or cursor. The scheduled and finished states
	// are ranges of docket_tasks_admin; a search for ready or running
	// tasks, or for every state of a queue, walks the primary key.
	searches := map[string]transport.SearchParams{
		"all":                 {},
		"all-newest-cursor":   {Order: transport.NewestFirst, Cursor: msgs[1500].ID},
		"name":                {Name: "n", Cursor: msgs[10].ID},
		"text":                {Text: "x"},
		"time":                {Since: base.Add(time.Second), Until: base.Add(2 * time.Second)},
		"prefix":              {IDPrefix: msgs[0].ID[:8]},
		"queue":               {Queue: "mail"},
		"queue-states":        {Queue: "mail", States: []transport.State{transport.StateReady, transport.StateSucceeded}},
		"queue-cold-states":   {Queue: "mail", States: []transport.State{transport.StateSucceeded, transport.StateFailed}, Cursor: msgs[100].ID},
		"states":              {States: []transport.State{transport.StateFailed}, Order: transport.NewestFirst},
		"scheduled":           {States: []transport.State{transport.StateScheduled}, Text: "1"},
		"scheduled-time":      {States: []transport.State{transport.StateScheduled, transport.StateExpired}, Since: base, Until: base.Add(time.Second)},
		"retrying":            {Retrying: true, Queue: "default"},
		"running":             {States: []transport.State{transport.StateRunning}, Order: transport.NewestFirst},
		"hot-and-retrying":    {States: []transport.State{transport.StateReady, transport.StateScheduled}, Retrying: true, Queue: "mail"},
		"states-time-newest":  {States: []transport.State{transport.StateReady}, Since: base, Order: transport.NewestFirst, Cursor: msgs[2000].ID},
		"queue-states-filter": {Queue: "default", States: []transport.State{transport.StateReady}, Name: "n", Text: "1", Until: base.Add(time.Hour)},
	}
	for name, p := range searches {
		w, ok := newWalk(p, transport.DefaultSearchExamine)
		if !ok {
			t.Fatalf("%s: empty walk", name)
		}
		pk := len(p.States) == 0 && !p.Retrying // every state of a queue, or of all
		for _, st := range p.States {
			pk = pk || st == transport.StateReady || st == transport.StateRunning
		}
		if pk != (w.states == nil) {
			t.Errorf("%s: walks the ranges %v; want the primary key: %v", name, w.states, pk)
		}
		states := []*rangeState{nil}
		uses := []string{"INDEX sqlite_autoindex_docket_tasks_1"}
		if w.states != nil {
			states = states[:0]
			for i := range w.states {
				states = append(states, &w.states[i])
			}
			uses = []string{"INDEX docket_tasks_admin (queue=? AND state=?"}
		}
		for _, rs := range states {
			for i, g := range w.segments {
				q, args := w.rangeSQL(rs, "mail", g)
				shapes = append(shapes, shape{name: fmt.Sprintf("search-%s-%d", name, i), q: q, args: args, uses: uses})
			}
		}
	}
	// Without statistics (docket never runs ANALYZE), then with the
	// statistics of this file.
	for _, analyzed := range []bool{false, true} {
		if analyzed {
			if _, err := s.rdb.ExecContext(ctx, "ANALYZE"); err != nil {
				t.Fatal(err)
			}
		}
		for _, sh := range shapes {
			name := sh.name
			if analyzed {
				name += " (analyzed)"
			}
			plan := explain(t, s, sh.q, sh.args...)
			all := strings.Join(plan, "\n")
			if fullScan(plan) {
				t.Errorf("%s scans the task table:\n%s", name, all)
			}
			for _, use := range sh.uses {
				if !strings.Contains(all, use) {
					t.Errorf("%s does not use %s:\n%s", name, use, all)
				}
			}
			// A search without any bound, or for ready or running tasks,
			// walks the primary key in id order: a scan that LIMIT stops.
			// Nothing else reads a whole index.
			pkWalk := strings.HasPrefix(sh.name, "search-") && strings.Contains(all, "INDEX sqlite_autoindex_docket_tasks_1")
			if !sh.covering && !pkWalk && strings.Contains(all, "SCAN docket_tasks") {
				t.Errorf("%s reads a whole index:\n%s", name, all)
			}
			if strings.HasPrefix(sh.name, "search-") && strings.Contains(all, "TEMP B-TREE") {
				t.Errorf("%s sorts:\n%s", name, all)
			}
			if !strings.Contains(all, "docket_tasks") && !strings.Contains(all, "docket_minutes") {
				t.Errorf("%s: the plan does not mention the table:\n%s", name, all)
			}
			if testing.Verbose() {
				t.Logf("%s:\n\t%s", name, strings.Join(plan, "\n\t"))
			}
		}
	}
}

// adminEntries counts the entries of docket_tasks_admin, read from the
// b-tree pages themselves (an index b-tree keeps entries in its interior
// pages too).
func adminEntries(t *testing.T, s *Store) int {
	t.Helper()
	var n int
	if err := s.rdb.QueryRowContext(ctx, "SELECT coalesce(sum(ncell), 0) FROM dbstat WHERE name = 'docket_tasks_admin' AND pagetype != 'overflow'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// docket_tasks_admin leaves out ready and running tasks: an enqueue and a
// claim never write it, a finish adds one entry, a retry adds one and a
// promotion removes one.
func TestAdminIndexLeavesOutHotStates(t *testing.T) {
	s := openFile(t, filepath.Join(t.TempDir(), "q.db"))
	var def string
	if err := s.rdb.QueryRowContext(ctx, "SELECT sql FROM sqlite_schema WHERE name = 'docket_tasks_admin'").Scan(&def); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(def, "WHERE "+adminIndexCond) {
		t.Fatalf("docket_tasks_admin is %q; want the partial index WHERE %s that the queries state", def, adminIndexCond)
	}
	var msgs []transport.Message
	for i := range 40 {
		m := msg(fmt.Sprintf("t%02d", i))
		m.MaxAttempts = 2
		if i >= 35 {
			m.ETA = base.Add(time.Hour)
		}
		msgs = append(msgs, m)
	}
	enqueueT(t, s, base, msgs...)
	if n := adminEntries(t, s); n != 5 {
		t.Fatalf("after enqueueing 35 ready and 5 scheduled tasks: %d entries, want 5", n)
	}
	ds := claimT(t, s, base, "w", 30)
	if n := adminEntries(t, s); n != 5 {
		t.Fatalf("after claiming 30 tasks: %d entries, want 5", n)
	}
	var outs []transport.Outcome
	for i, d := range ds[:12] {
		o := transport.Outcome{Lease: d.Lease(), State: transport.StateSucceeded}
		if i%3 == 0 {
			o.State, o.RunAt = transport.StateScheduled, base.Add(time.Second) // a retry
		}
		outs = append(outs, o)
	}
	finishT(t, s, base, outs...)
	if n := adminEntries(t, s); n != 5+12 {
		t.Fatalf("after 8 successes and 4 retries: %d entries, want 17", n)
	}
	claimT(t, s, base.Add(2*time.Second), "w", 1, "elsewhere") // promotes the 4 retries
	if n := adminEntries(t, s); n != 5+8 {
		t.Fatalf("after the retries were promoted: %d entries, want 13", n)
	}
}

// Stats counts every state of every queue from three indexes: it agrees
// with a plain count of the table.
func TestStatsAgreesWithTable(t *testing.T) {
	s := openFile(t, filepath.Join(t.TempDir(), "q.db"))
	queues := []string{"a", "b", "c"}
	var msgs []transport.Message
	for i := range 300 {
		m := msg(ulidAt(base.Add(time.Duration(i)*time.Millisecond), i))
		m.Queue = queues[i%3]
		m.MaxAttempts = 3
		if i%7 == 0 {
			m.ETA = base.Add(time.Hour)
		}
		if i%11 == 0 {
			m.Expires = base.Add(time.Second)
		}
		msgs = append(msgs, m)
	}
	enqueueT(t, s, base, msgs...)
	now := base.Add(2 * time.Second) // the tasks with an expiry expire as they are claimed
	for round, q := range []string{"a", "b", "c", "a", "b"} {
		ds := claimT(t, s, now, "w", 40-round*5, q)
		var outs []transport.Outcome
		for i, d := range ds[:len(ds)/2] {
			o := transport.Outcome{Lease: d.Lease(), State: []transport.State{transport.StateSucceeded, transport.StateFailed, transport.StateScheduled, transport.StateCancelled}[i%4]}
			if o.State == transport.StateScheduled {
				o.RunAt = now.Add(time.Minute)
			}
			outs = append(outs, o)
		}
		finishT(t, s, now, outs...)
	}
	want := map[string]map[transport.State]int64{}
	retrying := map[string]int64{}
	rows, err := s.rdb.QueryContext(ctx, "SELECT queue, state, attempt > 0, count(*) FROM docket_tasks NOT INDEXED GROUP BY 1, 2, 3")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var queue string
		var state transport.State
		var tried bool
		var n int64
		if err := rows.Scan(&queue, &state, &tried, &n); err != nil {
			t.Fatal(err)
		}
		if want[queue] == nil {
			want[queue] = map[transport.State]int64{1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 7: 0, 8: 0}
		}
		if state == transport.StateScheduled && tried {
			retrying[queue] += n
		} else {
			want[queue][state] += n
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	st, err := s.Stats(ctx, transport.StatsParams{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Queues) != 3 {
		t.Fatalf("queues %+v", st.Queues)
	}
	for i, q := range st.Queues {
		if q.Queue != queues[i] {
			t.Errorf("queue %d is %q, want %q (by name)", i, q.Queue, queues[i])
		}
		if fmt.Sprint(q.Counts) != fmt.Sprint(want[q.Queue]) || q.Retrying != retrying[q.Queue] {
			t.Errorf("%s: counts %v retrying %d; the table holds %v and %d", q.Queue, q.Counts, q.Retrying, want[q.Queue], retrying[q.Queue])
		}
		for _, state := range []transport.State{transport.StateReady, transport.StateRunning, transport.StateSucceeded} {
			if q.Counts[state] == 0 {
				t.Errorf("%s: no %v task; the test should have some", q.Queue, state)
			}
		}
	}
	// A queue with running tasks only is listed too.
	enqueueT(t, s, now, transport.Message{ID: "solo", Name: "n", Queue: "0-solo", Payload: []byte("1"), MaxAttempts: 1, ResultTTL: time.Hour})
	claimT(t, s, now, "w", 1, "0-solo")
	st, err = s.Stats(ctx, transport.StatsParams{Now: now})
	if err != nil || len(st.Queues) != 4 || st.Queues[0].Queue != "0-solo" || st.Queues[0].Counts[transport.StateRunning] != 1 {
		t.Errorf("stats with a queue of one running task: %+v, %v", st.Queues, err)
	}
}

// Ready and running tasks are found by walking the primary key: newest
// first at once, oldest first after pages (each bounded by Examine) over
// the older history.
func TestSearchHotStatesUnderHistory(t *testing.T) {
	s := openFile(t, filepath.Join(t.TempDir(), "q.db"))
	var msgs []transport.Message
	for i := range 200 {
		m := msg(ulidAt(base.Add(time.Duration(i)*time.Millisecond), i))
		m.Queue = []string{"default", "mail"}[i%2]
		msgs = append(msgs, m)
	}
	enqueueT(t, s, base, msgs...)
	for _, d := range claimT(t, s, base, "w", 200, "default", "mail") {
		finishT(t, s, base, transport.Outcome{Lease: d.Lease(), State: transport.StateSucceeded})
	}
	var live []string
	for i := 200; i < 206; i++ {
		m := msg(ulidAt(base.Add(time.Duration(i)*time.Millisecond), i))
		m.Queue = []string{"default", "mail"}[i%2]
		enqueueT(t, s, base, m)
		live = append(live, m.ID)
	}
	claimT(t, s, base, "w", 1, "mail") // live[1] runs
	hot := []transport.State{transport.StateReady, transport.StateRunning}
	ids, _ := searchIDs(t, s, transport.SearchParams{States: hot, Order: transport.NewestFirst, Examine: 50})
	if want := []string{live[5], live[4], live[3], live[2], live[1], live[0]}; !slices.Equal(ids, want) {
		t.Errorf("newest ready or running: %v, want %v on the first page", ids, want)
	}
	for _, c := range []struct {
		p    transport.SearchParams
		want []string
	}{
		{transport.SearchParams{States: hot, Examine: 50}, live},
		{transport.SearchParams{States: []transport.State{transport.StateRunning}, Queue: "mail", Examine: 50}, live[1:2]},
		{transport.SearchParams{States: []transport.State{transport.StateReady, transport.StateSucceeded}, Queue: "mail", Examine: 50, Limit: 1000}, nil},
	} {
		var got []string
		p := c.p
		pages := 0
		for ; pages < 20; pages++ {
			ids, next := searchIDs(t, s, p)
			got = append(got, ids...)
			if next == "" {
				break
			}
			p.Cursor = next
		}
		want := c.want
		if want == nil { // every task of mail but the running one
			for i := 1; i < 206; i += 2 {
				if i != 201 {
					want = append(want, ulidAt(base.Add(time.Duration(i)*time.Millisecond), i))
				}
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%+v: %v, want %v", c.p, got, want)
		}
		if pages != 206/50 {
			t.Errorf("%+v: %d pages after the first, want %d (each examines 50 tasks)", c.p, pages, 206/50)
		}
	}
}

// A retry gives a failed task Attempts more claims, keeps counting its
// attempts, and leaves the leases of its earlier attempts fenced out.
func TestActRetryBudgetAndFencing(t *testing.T) {
	s := openFile(t, filepath.Join(t.TempDir(), "q.db"))
	m := msg("f1")
	m.Expires = base.Add(time.Hour)
	enqueueT(t, s, base, m)
	d := claimT(t, s, base, "w1", 1)[0]
	finishT(t, s, base, transport.Outcome{Lease: d.Lease(), State: transport.StateFailed, Error: "boom", Result: []byte("r")})
	for _, n := range []int{0, -1} {
		if _, err := s.Act(ctx, transport.ActParams{Now: base, Action: transport.ActionRetry, IDs: []string{"f1"}, Attempts: n}); !errors.Is(err, transport.ErrInvalid) {
			t.Errorf("retry with %d attempts: %v, want ErrInvalid", n, err)
		}
	}
	if _, err := s.Act(ctx, transport.ActParams{Now: base, Action: 99, IDs: []string{"f1"}}); !errors.Is(err, transport.ErrInvalid) {
		t.Errorf("unknown action: %v, want ErrInvalid", err)
	}
	now := base.Add(time.Minute)
	if res := actT(t, s, now, transport.ActionRetry, 2, "f1"); !slices.Equal(res.Changed, []string{"f1"}) {
		t.Fatalf("retry = %+v", res)
	}
	in := getT(t, s, "f1")
	if in.State != transport.StateReady || in.Attempt != 1 || in.MaxAttempts != 3 || !in.Expires.IsZero() || !in.Finished.IsZero() ||
		in.Result != nil || in.Error != "boom" || !in.RunAt.Equal(now) || in.Owner != "w1" {
		t.Errorf("retried = %+v", in)
	}
	// The old lease is dead; the next claim is attempt 2 of 3.
	if r := finishT(t, s, now, transport.Outcome{Lease: d.Lease(), State: transport.StateSucceeded}); !r[0].Lost {
		t.Errorf("the lease of the first attempt was accepted after the retry")
	}
	ds := claimT(t, s, now, "w2", 1)
	if len(ds) != 1 || ds[0].Attempt != 2 || ds[0].MaxAttempts != 3 || ds[0].LastError != "boom" {
		t.Fatalf("claim after the retry = %+v", ds)
	}
	if r := finishT(t, s, now, transport.Outcome{Lease: d.Lease(), State: transport.StateFailed}); !r[0].Lost {
		t.Errorf("the first lease was accepted while the second attempt runs")
	}
	finishT(t, s, now, transport.Outcome{Lease: ds[0].Lease(), State: transport.StateSucceeded})
	if in := getT(t, s, "f1"); in.State != transport.StateSucceeded || in.Owner != "w2" || len(in.Attempts) != 1 {
		t.Errorf("after the retried attempt: %+v", in)
	}
}

// A retry skips a task whose unique key an unfinished task holds, in the
// same call too, without failing the others.
func TestActRetryUniqueKeySkip(t *testing.T) {
	s := openFile(t, filepath.Join(t.TempDir(), "q.db"))
	var msgs []transport.Message
	for _, id := range []string{"a", "b", "c"} {
		m := msg(id)
		m.UniqueKey = "k"
		if id == "c" {
			m.UniqueKey = "other"
		}
		msgs = append(msgs, m)
	}
	enqueueT(t, s, base, msgs[0])
	d := claimT(t, s, base, "w", 1)[0]
	finishT(t, s, base, transport.Outcome{Lease: d.Lease(), State: transport.StateFailed})
	enqueueT(t, s, base, msgs[1]) // b takes k: a's key is free again
	d = claimT(t, s, base, "w", 1)[0]
	finishT(t, s, base, transport.Outcome{Lease: d.Lease(), State: transport.StateFailed})
	enqueueT(t, s, base, msgs[2])
	d = claimT(t, s, base, "w", 1)[0]
	finishT(t, s, base, transport.Outcome{Lease: d.Lease(), State: transport.StateFailed})
	// a and b both failed holding k: one retry gets it, the other is skipped.
	res := actT(t, s, base, transport.ActionRetry, 1, "a", "b", "c", "missing")
	if !slices.Equal(res.Changed, []string{"a", "c"}) || res.Skipped != 1 || res.Missing != 1 {
		t.Fatalf("retry = %+v; want a and c changed, b skipped (k taken by a), 1 missing", res)
	}
	if in := getT(t, s, "b"); in.State != transport.StateFailed {
		t.Errorf("b = %v, want still failed", in.State)
	}
	// Another enqueue with the key is refused as before.
	m := msg("d")
	m.UniqueKey = "k"
	if _, err := s.Enqueue(ctx, transport.EnqueueParams{Now: base, Messages: []transport.Message{m}}); !errors.Is(err, transport.ErrDuplicate) {
		t.Errorf("enqueue with the retried task's key: %v, want ErrDuplicate", err)
	}
}

func TestActDeleteCancelRunNow(t *testing.T) {
	s := openFile(t, filepath.Join(t.TempDir(), "q.db"))
	sch, retrying := msg("c-sch"), msg("b-retrying")
	sch.ETA = base.Add(time.Hour)
	retrying.MaxAttempts = 3
	enqueueT(t, s, base, msg("a-run"), retrying, sch, msg("d-ready"))
	ds := claimT(t, s, base, "w", 2) // run, retrying
	finishT(t, s, base, transport.Outcome{Lease: ds[1].Lease(), State: transport.StateScheduled, RunAt: base.Add(time.Hour), Error: "x"})

	if res := actT(t, s, base, transport.ActionDelete, 0, "a-run", "d-ready", "gone"); !slices.Equal(res.Changed, []string{"d-ready"}) || res.Skipped != 1 || res.Missing != 1 {
		t.Errorf("delete = %+v; want ready deleted, running skipped, 1 missing", res)
	}
	if _, err := s.Get(ctx, transport.GetParams{ID: "a-run"}); err != nil {
		t.Errorf("the running task was deleted: %v", err)
	}
	now := base.Add(time.Second)
	if res := actT(t, s, now, transport.ActionRunNow, 0, "c-sch", "b-retrying", "a-run"); !slices.Equal(res.Changed, []string{"c-sch", "b-retrying"}) || res.Skipped != 1 {
		t.Errorf("run now = %+v; want sch and retrying changed, running skipped", res)
	}
	got := claimT(t, s, now, "w2", 5)
	var ids []string
	for _, d := range got {
		ids = append(ids, d.ID)
	}
	slices.Sort(ids)
	if !slices.Equal(ids, []string{"b-retrying", "c-sch"}) {
		t.Errorf("claimed after run now: %v", ids)
	}
	// Cancel: the running task is flagged, a finished one skipped.
	res := actT(t, s, now, transport.ActionCancel, 0, "a-run", "c-sch")
	if !slices.Equal(res.Changed, []string{"a-run", "c-sch"}) {
		t.Errorf("cancel = %+v", res)
	}
	finishT(t, s, now, transport.Outcome{Lease: ds[0].Lease(), State: transport.StateCancelled, Error: "cancelled"})
	if res := actT(t, s, now, transport.ActionCancel, 0, "a-run"); len(res.Changed) != 0 || res.Skipped != 1 {
		t.Errorf("cancel of a cancelled task = %+v", res)
	}
	if res := actT(t, s, now, transport.ActionDelete, 0, "a-run"); !slices.Equal(res.Changed, []string{"a-run"}) {
		t.Errorf("delete of a finished task = %+v", res)
	}
}

// Paging through a search, newest or oldest first, lists each task once
// and in order while tasks change state between pages.
func TestSearchPagingWhileChanging(t *testing.T) {
	s := openFile(t, filepath.Join(t.TempDir(), "q.db"))
	var msgs []transport.Message
	for i := range 60 {
		m := msg(ulidAt(base.Add(time.Duration(i)*time.Millisecond), i))
		m.Queue = []string{"default", "mail"}[i%2]
		msgs = append(msgs, m)
	}
	enqueueT(t, s, base, msgs...)
	for _, order := range []transport.Order{transport.OldestFirst, transport.NewestFirst} {
		for _, p := range []transport.SearchParams{
			{Order: order, Limit: 7},
			{Order: order, Limit: 7, States: []transport.State{transport.StateReady, transport.StateSucceeded}},
			{Order: order, Limit: 7, Queue: "mail"},
		} {
			var seen []string
			for page := 0; ; page++ {
				if page > 100 {
					t.Fatal("search does not end")
				}
				ids, next := searchIDs(t, s, p)
				seen = append(seen, ids...)
				// Meanwhile a worker runs tasks of both queues.
				for _, d := range claimT(t, s, base, "w", 3, "default", "mail") {
					finishT(t, s, base, transport.Outcome{Lease: d.Lease(), State: transport.StateSucceeded})
				}
				if next == "" {
					break
				}
				p.Cursor = next
			}
			sorted := slices.IsSorted(seen)
			if order == transport.NewestFirst {
				sorted = slices.IsSortedFunc(seen, func(a, b string) int { return strings.Compare(b, a) })
			}
			if !sorted || len(slices.Compact(slices.Clone(seen))) != len(seen) {
				t.Errorf("%+v: listed out of order or twice: %v", p, seen)
			}
			want := 60
			if p.Queue == "mail" {
				want = 30
			}
			if len(seen) != want {
				t.Errorf("%+v: listed %d tasks, want %d (each in a listed state)", p, len(seen), want)
			}
		}
		// Put every task back to ready for the next order.
		var all []string
		for _, m := range msgs {
			all = append(all, m.ID)
		}
		actT(t, s, base, transport.ActionDelete, 0, all...)
		enqueueT(t, s, base, msgs...)
	}
}

func TestSearchFilters(t *testing.T) {
	s := openFile(t, filepath.Join(t.TempDir(), "q.db"))
	var msgs []transport.Message
	for i := range 20 {
		m := msg(ulidAt(base.Add(time.Duration(i)*time.Second), i))
		m.Created = base.Add(time.Duration(i) * time.Second)
		m.Payload = []byte(fmt.Sprintf(`{"user":"U%02d"}`, i))
		m.MaxAttempts = 2
		if i == 7 {
			m.Headers = map[string]string{"Tenant": "ACME"}
		}
		if i%4 == 0 {
			m.Name = "other"
		}
		msgs = append(msgs, m)
	}
	// Producer-chosen ids that are no ULIDs, created in the same span.
	for i, id := range []string{"+early", "order-5", "zz"} {
		m := msg(id)
		m.Created = base.Add(time.Duration(5+i) * time.Second)
		msgs = append(msgs, m)
	}
	enqueueT(t, s, base, msgs...)
	d := claimT(t, s, base, "w", 3) // +early, then the first two ULIDs
	finishT(t, s, base, transport.Outcome{Lease: d[1].Lease(), State: transport.StateFailed, Error: "SMTP 550 for U00"},
		transport.Outcome{Lease: d[2].Lease(), State: transport.StateScheduled, RunAt: base.Add(time.Hour), Error: "try later"})
	id := func(i int) string { return msgs[i].ID }
	cases := []struct {
		name string
		p    transport.SearchParams
		want []string
	}{
		{"text in payload", transport.SearchParams{Text: `"U13"`}, []string{id(13)}},
		{"text in error", transport.SearchParams{Text: "SMTP 550"}, []string{id(0)}},
		{"text in headers", transport.SearchParams{Text: "ACME"}, []string{id(7)}},
		{"text is case-sensitive", transport.SearchParams{Text: "acme"}, nil},
		{"retrying", transport.SearchParams{Retrying: true}, []string{id(1)}},
		{"scheduled is not retrying", transport.SearchParams{States: []transport.State{transport.StateScheduled}}, nil},
		{"scheduled and retrying", transport.SearchParams{States: []transport.State{transport.StateScheduled, transport.StateFailed}, Retrying: true}, []string{id(0), id(1)}},
		{"running", transport.SearchParams{States: []transport.State{transport.StateRunning}}, []string{"+early"}},
		{"name", transport.SearchParams{Name: "other", Until: base.Add(9 * time.Second)}, []string{id(0), id(4), id(8)}},
		{"since and until, ULIDs and chosen ids", transport.SearchParams{Since: base.Add(5 * time.Second), Until: base.Add(8 * time.Second)},
			[]string{"+early", id(5), id(6), id(7), "order-5", "zz"}},
		{"since and until, newest first", transport.SearchParams{Since: base.Add(6 * time.Second), Until: base.Add(7 * time.Second), Order: transport.NewestFirst},
			[]string{"order-5", id(6)}},
		{"prefix", transport.SearchParams{IDPrefix: "order"}, []string{"order-5"}},
		{"prefix and state", transport.SearchParams{IDPrefix: id(3)[:len(id(3))-1], States: []transport.State{transport.StateReady}}, []string{id(3)}},
	}
	for _, c := range cases {
		var got []string
		p := c.p
		for range 100 {
			ids, next := searchIDs(t, s, p)
			got = append(got, ids...)
			if next == "" {
				break
			}
			p.Cursor = next
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
	// Search returns the task as Get does, without its attempt records.
	res, err := s.Search(ctx, transport.SearchParams{Text: "SMTP"})
	if err != nil || len(res.Tasks) != 1 {
		t.Fatalf("search = %+v, %v", res, err)
	}
	in := res.Tasks[0]
	if in.Owner != "w" || in.Error != "SMTP 550 for U00" || in.State != transport.StateFailed || in.Attempts != nil || string(in.Payload) != `{"user":"U00"}` {
		t.Errorf("found %+v", in)
	}
	if _, err := s.Search(ctx, transport.SearchParams{States: []transport.State{9}}); !errors.Is(err, transport.ErrInvalid) {
		t.Errorf("search for state 9: %v, want ErrInvalid", err)
	}
}

// A search examines at most Examine tasks per call and says where to go on.
func TestSearchExamineBound(t *testing.T) {
	s := openFile(t, filepath.Join(t.TempDir(), "q.db"))
	var msgs []transport.Message
	for i := range 100 {
		m := msg(fmt.Sprintf("t%03d", i))
		if i == 95 {
			m.Payload = []byte(`"needle"`)
		}
		msgs = append(msgs, m)
	}
	enqueueT(t, s, base, msgs...)
	p := transport.SearchParams{Text: "needle", Examine: 10}
	var pages int
	var found []string
	for {
		ids, next := searchIDs(t, s, p)
		pages++
		found = append(found, ids...)
		if len(ids) == 0 && next == "" && pages < 10 {
			t.Fatalf("page %d ended the walk early", pages)
		}
		if next == "" {
			break
		}
		if len(ids) == 0 && next != fmt.Sprintf("t%03d", pages*10-1) {
			t.Fatalf("page %d: next %q, want the 10th id examined", pages, next)
		}
		p.Cursor = next
	}
	if !slices.Equal(found, []string{"t095"}) || pages != 10 {
		t.Errorf("found %v in %d pages, want t095 in 10", found, pages)
	}
	// The limit ends a page with a cursor, and the last page has none.
	ids, next := searchIDs(t, s, transport.SearchParams{Limit: 99})
	if len(ids) != 99 || next != "t098" {
		t.Errorf("99 of 100: %d tasks, next %q", len(ids), next)
	}
	ids, next = searchIDs(t, s, transport.SearchParams{Limit: 100})
	if len(ids) != 100 || next != "" {
		t.Errorf("100 of 100: %d tasks, next %q, want no cursor", len(ids), next)
	}
	if ids, _ := searchIDs(t, s, transport.SearchParams{Limit: 5000}); len(ids) != 100 {
		t.Errorf("limit 5000: %d", len(ids))
	}
}

// Every attempt that ends without success leaves a record: a retry, a
// release, a lost worker (rescued by a claim, or by ClaimIDs), a final
// failure; a success leaves none. Past the bound the first and the latest
// stay.
func TestAttemptRecords(t *testing.T) {
	s := openFile(t, filepath.Join(t.TempDir(), "q.db"))
	m := msg("a")
	m.MaxAttempts = 100
	enqueueT(t, s, base, m)
	at := func(sec int) time.Time { return base.Add(time.Duration(sec) * time.Second) }
	d := claimT(t, s, at(0), "w1", 1)[0]
	finishT(t, s, at(1), transport.Outcome{Lease: d.Lease(), State: transport.StateScheduled, RunAt: at(2), Error: "e1"})
	d = claimT(t, s, at(2), "w2", 1)[0]
	finishT(t, s, at(3), transport.Outcome{Lease: d.Lease(), State: transport.StateReady}) // released
	d = claimT(t, s, at(4), "w3", 1)[0]                                                    // attempt 2 again; then lost
	claimT(t, s, at(100), "w4", 1, "elsewhere")                                            // any claim rescues
	if in := getT(t, s, "a"); in.State != transport.StateReady {
		t.Fatalf("after the lease lapsed: %v", in.State)
	}
	d = claimT(t, s, at(101), "w5", 1)[0] // attempt 3, lost; ClaimIDs re-leases
	ci, err := s.ClaimIDs(ctx, transport.ClaimIDsParams{Now: at(200), Owner: "w6", LeaseUntil: at(230), IDs: []string{"a"}})
	if err != nil || ci[0].Delivery == nil {
		t.Fatalf("ClaimIDs = %+v, %v", ci, err)
	}
	d = *ci[0].Delivery
	finishT(t, s, at(201), transport.Outcome{Lease: d.Lease(), State: transport.StateSucceeded})
	in := getT(t, s, "a")
	want := []transport.Attempt{
		{N: 1, Owner: "w1", Started: at(0), Finished: at(1), State: transport.StateScheduled, Error: "e1"},
		{N: 2, Owner: "w2", Started: at(2), Finished: at(3), State: transport.StateReady},
		{N: 2, Owner: "w3", Started: at(4), Finished: at(100), State: transport.StateReady, Error: "worker lost: lease expired in attempt 2"},
		{N: 3, Owner: "w5", Started: at(101), Finished: at(200), State: transport.StateReady, Error: "worker lost: lease expired in attempt 3"},
	}
	if !slices.EqualFunc(in.Attempts, want, attemptEqual) {
		t.Errorf("attempts:\n%+v\nwant\n%+v", in.Attempts, want)
	}
	if in.Owner != "w6" || in.State != transport.StateSucceeded {
		t.Errorf("owner %q state %v", in.Owner, in.State)
	}

	// Lost with no attempt left: failed, recorded, counted as a failure;
	// by a claim and by ClaimIDs.
	for i, byID := range []bool{false, true} {
		id := fmt.Sprintf("last%d", i)
		enqueueT(t, s, at(300), msg(id))
		d := claimT(t, s, at(300), "wl", 1)[0]
		if byID {
			ci, err := s.ClaimIDs(ctx, transport.ClaimIDsParams{Now: at(400), Owner: "x", LeaseUntil: at(430), IDs: []string{id}})
			if err != nil || !ci[0].Ended || ci[0].State != transport.StateFailed {
				t.Fatalf("ClaimIDs of a lost last attempt = %+v, %v", ci, err)
			}
		} else {
			claimT(t, s, at(400), "x", 1, "elsewhere")
		}
		in := getT(t, s, id)
		if in.State != transport.StateFailed || len(in.Attempts) != 1 || in.Attempts[0].State != transport.StateFailed ||
			in.Attempts[0].Owner != "wl" || !strings.Contains(in.Attempts[0].Error, "worker lost") || in.Owner != "wl" || d.Attempt != 1 {
			t.Errorf("%s lost on its last attempt: %+v", id, in)
		}
	}

	// The bound: the first record and the latest ones.
	m = msg("many")
	m.MaxAttempts = 100
	enqueueT(t, s, at(500), m)
	for i := 1; i <= 30; i++ {
		d := claimT(t, s, at(500+i), "w", 1)[0]
		finishT(t, s, at(500+i), transport.Outcome{Lease: d.Lease(), State: transport.StateScheduled, RunAt: at(500 + i), Error: fmt.Sprint("e", i)})
	}
	d = claimT(t, s, at(600), "w", 1)[0]
	finishT(t, s, at(600), transport.Outcome{Lease: d.Lease(), State: transport.StateFailed, Error: "final"})
	in = getT(t, s, "many")
	if len(in.Attempts) != transport.MaxAttemptRecords {
		t.Fatalf("%d records, want %d", len(in.Attempts), transport.MaxAttemptRecords)
	}
	if in.Attempts[0].N != 1 || in.Attempts[0].Error != "e1" || in.Attempts[1].N != 13 || in.Attempts[19].N != 31 || in.Attempts[19].State != transport.StateFailed {
		t.Errorf("records kept: first %+v, second %+v, last %+v", in.Attempts[0], in.Attempts[1], in.Attempts[19])
	}
}

func attemptEqual(a, b transport.Attempt) bool {
	return a.N == b.N && a.Owner == b.Owner && a.Started.Equal(b.Started) && a.Finished.Equal(b.Finished) && a.State == b.State && a.Error == b.Error
}

// Outcomes are counted per minute and queue, one row per pair, within the
// transaction that records them.
func TestMinutesAggregated(t *testing.T) {
	s := openFile(t, filepath.Join(t.TempDir(), "q.db"))
	var msgs []transport.Message
	for i := range 12 {
		m := msg(fmt.Sprintf("t%02d", i))
		m.Queue = []string{"default", "mail"}[i%2]
		m.MaxAttempts = 2
		msgs = append(msgs, m)
	}
	enqueueT(t, s, base, msgs...)
	now := base.Add(90 * time.Second) // minute 1
	ds := claimT(t, s, now, "w", 12, "default", "mail")
	var outs []transport.Outcome
	for i, d := range ds {
		o := transport.Outcome{Lease: d.Lease(), State: transport.StateSucceeded}
		switch i % 4 {
		case 1:
			o.State, o.Error = transport.StateFailed, "x"
		case 2:
			o.State, o.RunAt = transport.StateScheduled, now.Add(time.Hour)
		case 3:
			if i > 8 {
				o.State = transport.StateReady // a release is no outcome
			}
		}
		outs = append(outs, o)
	}
	outs = append(outs, transport.Outcome{Lease: ds[0].Lease(), State: transport.StateSucceeded}) // lost: not counted
	finishT(t, s, now, outs...)
	var rows int
	if err := s.rdb.QueryRowContext(ctx, "SELECT count(*) FROM docket_minutes").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 2 {
		t.Errorf("%d minute rows, want 2 (one per queue)", rows)
	}
	// A lost worker on its last attempt counts as a failure of the minute
	// it was rescued in.
	enqueueT(t, s, now, msg("lost"))
	lost := claimT(t, s, now, "w", 1)
	if len(lost) != 1 {
		t.Fatal("claim lost")
	}
	later := base.Add(5 * time.Minute)
	claimT(t, s, later, "w2", 1, "elsewhere")
	st, err := s.Stats(ctx, transport.StatsParams{Now: later})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][2]int64{}
	for _, m := range st.History {
		got[m.Queue+"@"+m.Minute.Format("15:04")] = [2]int64{m.Succeeded, m.Failed}
	}
	// What the outcomes add up to, per queue, in minute 1.
	want := map[string][2]int64{}
	for i, o := range outs[:len(outs)-1] {
		k := ds[i].Queue + "@00:01"
		v := want[k]
		switch o.State {
		case transport.StateSucceeded:
			v[0]++
		case transport.StateFailed, transport.StateScheduled:
			v[1]++
		}
		want[k] = v
	}
	want["default@00:05"] = [2]int64{0, 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("history %v, want %v", got, want)
	}
	// Prune forgets minutes older than two hours, and expired workers.
	s.Heartbeat(ctx, transport.HeartbeatParams{Now: base, Worker: transport.WorkerInfo{ID: "old", Heartbeat: base, Expires: base.Add(time.Minute)}})
	s.Heartbeat(ctx, transport.HeartbeatParams{Now: base, Worker: transport.WorkerInfo{ID: "new", Heartbeat: base, Expires: base.Add(3 * time.Hour)}})
	if _, err := s.Prune(ctx, transport.PruneParams{Now: base.Add(2*time.Hour + 3*time.Minute)}); err != nil {
		t.Fatal(err)
	}
	var minutes, workers int
	s.rdb.QueryRowContext(ctx, "SELECT count(*) FROM docket_minutes").Scan(&minutes)
	s.rdb.QueryRowContext(ctx, "SELECT count(*) FROM docket_workers").Scan(&workers)
	if minutes != 1 || workers != 1 {
		t.Errorf("after prune: %d minute rows (want the one of minute 5), %d workers (want 1)", minutes, workers)
	}
}

func TestStatsCounts(t *testing.T) {
	for _, mem := range []bool{false, true} {
		var s *Store
		if mem {
			var err error
			if s, err = Open(ctx, Options{Memory: true}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
		} else {
			s = openFile(t, filepath.Join(t.TempDir(), "q.db"))
		}
		st, err := s.Stats(ctx, transport.StatsParams{Now: base})
		if err != nil || len(st.Queues) != 0 || st.History == nil || len(st.History) != 0 {
			t.Fatalf("empty store: %+v, %v", st, err)
		}
		var msgs []transport.Message
		for i := range 10 {
			m := msg(fmt.Sprintf("t%02d", i))
			m.MaxAttempts = 3
			m.Priority = i % 3
			m.ETA = base.Add(time.Duration(10-i) * time.Second) // later tasks due earlier
			msgs = append(msgs, m)
		}
		sched := msg("later")
		sched.ETA = base.Add(time.Hour)
		sched.Queue = "z"
		msgs = append(msgs, sched)
		enqueueT(t, s, base, msgs...)
		now := base.Add(time.Minute)
		ds := claimT(t, s, now, "w", 2) // the highest priority: t08 (due first), t05
		finishT(t, s, now, transport.Outcome{Lease: ds[0].Lease(), State: transport.StateScheduled, RunAt: now.Add(time.Hour)})
		st, err = s.Stats(ctx, transport.StatsParams{Now: now})
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Queues) != 2 || st.Queues[0].Queue != "default" || st.Queues[1].Queue != "z" {
			t.Fatalf("queues %+v", st.Queues)
		}
		q := st.Queues[0]
		want := map[transport.State]int64{1: 0, 2: 8, 3: 1, 4: 0, 5: 0, 6: 0, 7: 0, 8: 0}
		if fmt.Sprint(q.Counts) != fmt.Sprint(want) || q.Retrying != 1 {
			t.Errorf("counts %v retrying %d, want %v and 1", q.Counts, q.Retrying, want)
		}
		// The oldest ready task over every priority: t09 was due first.
		if !q.OldestReady.Equal(base.Add(time.Second)) {
			t.Errorf("OldestReady %v, want %v", q.OldestReady, base.Add(time.Second))
		}
		if z := st.Queues[1]; z.Counts[transport.StateScheduled] != 1 || !z.OldestReady.IsZero() || z.Retrying != 0 {
			t.Errorf("z = %+v", z)
		}
		if len(st.History) != 1 || st.History[0].Failed != 1 || !st.History[0].Minute.Equal(now.Truncate(time.Minute)) {
			t.Errorf("history %+v", st.History)
		}
	}
}

// SetProgress writes under the lease only; Get and Search return it.
func TestProgress(t *testing.T) {
	s := openFile(t, filepath.Join(t.TempDir(), "q.db"))
	enqueueT(t, s, base, msg("p"))
	d := claimT(t, s, base, "w", 1)[0]
	for _, c := range []struct {
		lease transport.Lease
		lost  bool
	}{
		{d.Lease(), false},
		{transport.Lease{ID: "p", Attempt: 2, Owner: "w"}, true},
		{transport.Lease{ID: "p", Attempt: 1, Owner: "x"}, true},
		{transport.Lease{ID: "nope", Attempt: 1, Owner: "w"}, true},
	} {
		r, err := s.SetProgress(ctx, transport.ProgressParams{Now: base, Lease: c.lease, Value: []byte(fmt.Sprintf(`{"by":%q}`, c.lease.Owner))})
		if err != nil || r.Lost != c.lost {
			t.Errorf("SetProgress(%+v) = %+v, %v; want lost %v", c.lease, r, err, c.lost)
		}
	}
	finishT(t, s, base, transport.Outcome{Lease: d.Lease(), State: transport.StateSucceeded})
	if r, _ := s.SetProgress(ctx, transport.ProgressParams{Now: base, Lease: d.Lease(), Value: []byte(`1`)}); !r.Lost {
		t.Errorf("SetProgress after the task ended was accepted")
	}
	if in := getT(t, s, "p"); string(in.Progress) != `{"by":"w"}` {
		t.Errorf("Get progress %s", in.Progress)
	}
	res, err := s.Search(ctx, transport.SearchParams{})
	if err != nil || len(res.Tasks) != 1 || string(res.Tasks[0].Progress) != `{"by":"w"}` {
		t.Errorf("Search progress: %+v, %v", res.Tasks, err)
	}
}

// The schedule template is replaced by every ScheduleInit, the cursor
// only when the spec changed; a trigger moves neither the cursor nor the
// last slot.
func TestScheduleTemplate(t *testing.T) {
	s := openFile(t, filepath.Join(t.TempDir(), "q.db"))
	tmpl := transport.Message{Name: "t.r", Queue: "reports", Payload: []byte(`{"a":1}`), Priority: 3, MaxAttempts: 4,
		Timeout: time.Minute, ResultTTL: time.Hour, Headers: map[string]string{"h": "v"}, Backoff: &transport.Backoff{Base: time.Second, Max: time.Minute, Jitter: 0.5}}
	next := base.Add(time.Hour)
	st, err := s.ScheduleInit(ctx, transport.ScheduleInitParams{Now: base, Name: "s", Spec: "1h", NextAt: next, Template: &tmpl})
	if err != nil || st.Template == nil || st.Template.Priority != 3 || st.Template.Backoff == nil || st.Template.Headers["h"] != "v" || st.Template.Timeout != time.Minute {
		t.Fatalf("init = %+v, %v", st, err)
	}
	tmpl2 := tmpl
	tmpl2.Payload = []byte(`{"a":2}`)
	st, err = s.ScheduleInit(ctx, transport.ScheduleInitParams{Now: base.Add(time.Minute), Name: "s", Spec: "1h", NextAt: base.Add(2 * time.Hour), Template: &tmpl2})
	if err != nil || !st.NextAt.Equal(next) || string(st.Template.Payload) != `{"a":2}` {
		t.Fatalf("re-init with the same spec = %+v, %v; want the cursor kept, the template replaced", st, err)
	}
	id, err := s.ScheduleTrigger(ctx, transport.ScheduleTriggerParams{Now: base.Add(2 * time.Minute), Name: "s", ID: "trig"})
	if err != nil || id != "trig" {
		t.Fatalf("trigger = %q, %v", id, err)
	}
	in := getT(t, s, "trig")
	if string(in.Payload) != `{"a":2}` || in.Priority != 3 || in.MaxAttempts != 4 || in.Headers["h"] != "v" || in.Backoff == nil ||
		!in.Created.Equal(base.Add(2*time.Minute)) || !in.ETA.IsZero() || in.State != transport.StateReady {
		t.Errorf("triggered = %+v", in)
	}
	if _, err := s.ScheduleTrigger(ctx, transport.ScheduleTriggerParams{Now: base, Name: "s", ID: "trig"}); !errors.Is(err, transport.ErrDuplicate) {
		t.Errorf("trigger with a taken id: %v, want ErrDuplicate", err)
	}
	sts, _ := s.ScheduleStates(ctx, transport.ScheduleStatesParams{Names: []string{"s"}})
	if len(sts) != 1 || sts[0].LastTaskID != "trig" || !sts[0].LastFiredAt.Equal(base.Add(2*time.Minute)) || !sts[0].LastSlot.IsZero() || !sts[0].NextAt.Equal(next) {
		t.Errorf("after trigger: %+v", sts)
	}
	if err := s.SchedulePause(ctx, transport.SchedulePauseParams{Now: base, Name: "nope", Paused: true}); !errors.Is(err, transport.ErrNotFound) {
		t.Errorf("pause of an unknown schedule: %v", err)
	}
	// A new spec moves the cursor; a ScheduleInit without a template
	// clears it.
	st, err = s.ScheduleInit(ctx, transport.ScheduleInitParams{Now: base, Name: "s", Spec: "2h", NextAt: base.Add(2 * time.Hour)})
	if err != nil || !st.NextAt.Equal(base.Add(2*time.Hour)) || st.Template != nil {
		t.Errorf("re-init with a new spec = %+v, %v", st, err)
	}
	if _, err := s.ScheduleTrigger(ctx, transport.ScheduleTriggerParams{Now: base, Name: "s", ID: "t2"}); !errors.Is(err, transport.ErrInvalid) ||
		!strings.Contains(err.Error(), "stores templates") {
		t.Errorf("trigger without a template: %v", err)
	}
}

// A file written by the first schema is migrated in place: its tasks and
// schedules stay and work.
func TestMigrateFromVersion1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v1.db")
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"PRAGMA journal_mode = WAL",
		migrations[0],
		`INSERT INTO docket_tasks (id, name, queue, state, run_at, max_attempts, ttl_ms, payload, created_at, owner, attempt, started_at)
			VALUES ('ready', 'n', 'default', 2, 1, 1, 3600000, x'31', 1, NULL, 0, 0),
			       ('running', 'n', 'default', 3, 99999999999999, 1, 3600000, x'32', 1, 'w-old', 1, 5),
			       ('done', 'n', 'mail', 4, 99999999999999, 1, 3600000, x'33', 1, NULL, 1, 5)`,
		`INSERT INTO docket_schedules (name, spec, next_at, updated_at) VALUES ('s', '1h', 7, 1)`,
		"PRAGMA user_version = 1",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()
	s := openFile(t, path)
	var version int
	s.rdb.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version)
	if version != schemaVersion {
		t.Errorf("user_version %d, want %d", version, schemaVersion)
	}
	if in := getT(t, s, "done"); in.State != transport.StateSucceeded || string(in.Payload) != "3" || in.Attempts != nil || in.Owner != "" {
		t.Errorf("done = %+v", in)
	}
	st, err := s.Stats(ctx, transport.StatsParams{Now: base})
	if err != nil || len(st.Queues) != 2 || st.Queues[0].Counts[transport.StateReady] != 1 || st.Queues[0].Counts[transport.StateRunning] != 1 {
		t.Errorf("stats = %+v, %v", st, err)
	}
	// The running task's old lease still finishes it.
	if r := finishT(t, s, base, transport.Outcome{Lease: transport.Lease{ID: "running", Attempt: 1, Owner: "w-old"}, State: transport.StateFailed, Error: "x"}); r[0].Lost {
		t.Errorf("the lease of a migrated running task was lost")
	}
	if in := getT(t, s, "running"); len(in.Attempts) != 1 || in.Attempts[0].Owner != "w-old" {
		t.Errorf("running after finish = %+v", in)
	}
	if d := claimT(t, s, base, "w", 5); len(d) != 1 || d[0].ID != "ready" {
		t.Errorf("claim after migration = %+v", d)
	}
	sts, err := s.ScheduleStates(ctx, transport.ScheduleStatesParams{})
	if err != nil || len(sts) != 1 || sts[0].Paused || sts[0].Template != nil {
		t.Errorf("schedules = %+v, %v", sts, err)
	}
}

// Stats on a file of a million finished tasks (DOCKET_TEST_LONG): a scan
// of the covering index, measured, beside 50,000 ready, 10,000 scheduled
// and 100 running tasks.
func TestStatsMillion(t *testing.T) {
	if os.Getenv("DOCKET_TEST_LONG") == "" {
		t.Skip("set DOCKET_TEST_LONG to build a file of a million tasks")
	}
	if raceEnabled {
		t.Skip("a measurement: the race detector slows SQLite too much to mean anything (run without -race)")
	}
	s := openFile(t, filepath.Join(t.TempDir(), "big.db"))
	const n = 1_000_000
	start := time.Now()
	err := s.w.do(ctx, "test", func(r runner) error {
		_, err := r.exec(ctx, `WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < ?)
			INSERT INTO docket_tasks (id, name, queue, state, run_at, max_attempts, ttl_ms, payload, created_at, attempt, owner, finished_at)
			SELECT printf('t%08d', i), 'n', CASE i % 4 WHEN 0 THEN 'mail' ELSE 'default' END, 4 + i % 2, 9999999999999, 1, 3600000, x'7b7d', 1, 1, 'w', 2
			FROM c`, n-1)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// A deep ready queue too, of every priority, for the oldest-ready
	// seeks; scheduled tasks, which the running count reads past in the
	// timer index; and running ones.
	var msgs []transport.Message
	for i := range 50_000 {
		m := msg(fmt.Sprintf("r%06d", i))
		m.Priority = i % 10
		msgs = append(msgs, m)
	}
	for i := range 10_000 {
		m := msg(fmt.Sprintf("s%06d", i))
		m.ETA = base.Add(time.Hour + time.Duration(i)*time.Millisecond)
		msgs = append(msgs, m)
	}
	enqueueT(t, s, base, msgs...)
	const running = 100
	if ds := claimT(t, s, base, "w", running); len(ds) != running {
		t.Fatalf("claimed %d", len(ds))
	}
	t.Logf("built %d tasks in %v", n+len(msgs), time.Since(start).Round(time.Millisecond))
	best := time.Hour
	for range 5 {
		t0 := time.Now()
		st, err := s.Stats(ctx, transport.StatsParams{Now: base})
		d := time.Since(t0)
		if err != nil {
			t.Fatal(err)
		}
		if c := st.Queues[0].Counts; st.Queues[0].Queue != "default" || c[transport.StateSucceeded]+st.Queues[1].Counts[transport.StateSucceeded] != n/2 ||
			c[transport.StateReady] != 50_000-running || c[transport.StateRunning] != running || c[transport.StateScheduled] != 10_000 {
			t.Fatalf("stats %+v", st.Queues)
		}
		best = min(best, d)
	}
	t.Logf("Stats over %d tasks: best of 5 %v", n+len(msgs), best)
	t0 := time.Now()
	res, err := s.Search(ctx, transport.SearchParams{States: []transport.State{transport.StateFailed}, Order: transport.NewestFirst})
	if err != nil || len(res.Tasks) != 100 {
		t.Fatalf("search = %d tasks, %v", len(res.Tasks), err)
	}
	t.Logf("Search, newest failed, first page: %v", time.Since(t0))
}
