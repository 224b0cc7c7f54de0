package docket_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/dockettest"
	"github.com/docketq/docket/internal/longtest"
)

var bg = context.Background()

type Email struct {
	To      string `json:"to"`
	Subject string `json:"subject"`
}

type Receipt struct {
	MessageID string `json:"message_id"`
}

func noRetryBackoff() docket.TaskOption {
	return docket.RetryBackoff(docket.Exponential{Base: time.Second, Max: time.Second})
}

// runWorkers starts q.Run and stops it when the test ends.
func runWorkers(t *testing.T, q *docket.Queue) {
	t.Helper()
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		// ErrClosed: the test closed q before this goroutine got to
		// start Run (its work was done by another worker).
		if err := <-done; err != nil && !errors.Is(err, docket.ErrClosed) {
			t.Errorf("Run: %v", err)
		}
	})
}

func waitCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(bg, 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestEnqueueRunWait(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	send := docket.NewTask("email.send", func(ctx context.Context, m Email) (Receipt, error) {
		return Receipt{MessageID: "<" + m.To + ">"}, nil
	})
	if err := q.Register(send); err != nil {
		t.Fatal(err)
	}
	runWorkers(t, q)
	res, err := send.Enqueue(bg, q, Email{To: "ann@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := res.Wait(waitCtx(t))
	if err != nil || r.MessageID != "<ann@example.com>" {
		t.Fatalf("Wait = %+v, %v", r, err)
	}
	info, err := res.Info(bg)
	if err != nil || info.State != docket.StateSucceeded || info.Attempt != 1 || string(info.Result) != `{"message_id":"<ann@example.com>"}` {
		t.Fatalf("Info = %+v, %v", info, err)
	}
	// A handle rebuilt from the id alone reads the same typed result.
	if r2, err := send.ResultOf(q, res.ID()).Wait(bg); err != nil || r2 != r {
		t.Fatalf("ResultOf.Wait = %+v, %v", r2, err)
	}
}

func TestRetriesFollowBackoffThenSucceed(t *testing.T) {
	t.Parallel()
	q, clock := dockettest.Open(t)
	var calls atomic.Int32
	flaky := docket.NewTask("flaky", func(ctx context.Context, n int) (int, error) {
		tc, _ := docket.FromContext(ctx)
		if calls.Add(1) < 3 {
			return 0, fmt.Errorf("attempt %d failed", tc.Attempt)
		}
		return n * 2, nil
	}, docket.RetryBackoff(docket.Exponential{Base: 10 * time.Second, Max: time.Minute}))
	q.Register(flaky)
	res, _ := flaky.Enqueue(bg, q, 21)
	if n := dockettest.Drain(t, q); n != 1 {
		t.Fatalf("first drain ran %d", n)
	}
	info, _ := res.Info(bg)
	if info.State != docket.StateScheduled || info.Error != "attempt 1 failed" || !info.ETA.Equal(clock.Now().Add(10*time.Second)) {
		t.Fatalf("after attempt 1: %+v", info)
	}
	if n := dockettest.Advance(t, q, clock, 9*time.Second); n != 0 {
		t.Fatal("retry ran before its backoff")
	}
	dockettest.Advance(t, q, clock, time.Second)
	info, _ = res.Info(bg)
	if info.State != docket.StateScheduled || !info.ETA.Equal(clock.Now().Add(20*time.Second)) {
		t.Fatalf("after attempt 2: %+v (backoff should double)", info)
	}
	dockettest.Advance(t, q, clock, 20*time.Second)
	if v, err := res.Wait(bg); err != nil || v != 42 {
		t.Fatalf("Wait = %v, %v", v, err)
	}
}

func TestRetriesExhausted(t *testing.T) {
	t.Parallel()
	q, clock := dockettest.Open(t)
	var calls atomic.Int32
	fail := docket.NewTask("always.fails", func(ctx context.Context, _ struct{}) (int, error) {
		calls.Add(1)
		return 0, errors.New("nope")
	}, docket.MaxRetries(2), noRetryBackoff())
	q.Register(fail)
	res, _ := fail.Enqueue(bg, q, struct{}{})
	for range 5 {
		dockettest.Advance(t, q, clock, 2*time.Second)
	}
	_, err := res.Wait(bg)
	var te *docket.TaskError
	if !errors.Is(err, docket.ErrTaskFailed) || !errors.As(err, &te) || te.Attempt != 3 || te.Message != "nope" {
		t.Fatalf("Wait error = %v", err)
	}
	if calls.Load() != 3 {
		t.Fatalf("handler ran %d times, want 3 (MaxRetries 2)", calls.Load())
	}
}

func TestRetryAfterAndPermanent(t *testing.T) {
	t.Parallel()
	q, clock := dockettest.Open(t)
	snooze := docket.NewTask("snooze", func(ctx context.Context, _ int) (string, error) {
		if tc, _ := docket.FromContext(ctx); tc.Attempt == 1 {
			return "", docket.RetryAfter(time.Hour)
		}
		return "woke", nil
	})
	perm := docket.NewTask("perm", func(ctx context.Context, _ int) (string, error) {
		return "", docket.Permanent(errors.New("bad input"))
	}, docket.MaxRetries(10))
	q.Register(snooze, perm)
	r1, _ := snooze.Enqueue(bg, q, 1)
	r2, _ := perm.Enqueue(bg, q, 1)
	dockettest.Drain(t, q)
	if info, _ := r1.Info(bg); info.State != docket.StateScheduled || !info.ETA.Equal(clock.Now().Add(time.Hour)) {
		t.Fatalf("RetryAfter: %+v", info)
	}
	if _, err := r2.Wait(bg); !errors.Is(err, docket.ErrTaskFailed) || !strings.Contains(err.Error(), "bad input") {
		t.Fatalf("Permanent: %v", err)
	}
	if info, _ := r2.Info(bg); info.Attempt != 1 {
		t.Fatalf("Permanent error was retried: %d attempts", info.Attempt)
	}
	dockettest.Advance(t, q, clock, time.Hour)
	if v, err := r1.Wait(bg); v != "woke" || err != nil {
		t.Fatalf("after the hour: %q %v", v, err)
	}
}

func TestPanicsAreRecoveredWithStack(t *testing.T) {
	t.Parallel()
	q, clock := dockettest.Open(t)
	kinds := map[string]func(){
		"value":     func() { panic("boom") },
		"nil-map":   func() { var m map[string]int; m["x"] = 1 },
		"index":     func() { s := []int{}; _ = s[len(s)+1] },
		"error":     func() { panic(errors.New("an error value")) },
		"nil-panic": func() { panic(nil) },
	}
	p := docket.NewTask("panics", func(ctx context.Context, kind string) (int, error) {
		kinds[kind]()
		return 1, nil
	}, docket.MaxRetries(1), noRetryBackoff())
	q.Register(p)
	results := map[string]*docket.Result[int]{}
	for kind := range kinds {
		results[kind], _ = p.Enqueue(bg, q, kind)
	}
	dockettest.Drain(t, q)
	dockettest.Advance(t, q, clock, 2*time.Second)
	for kind, r := range results {
		_, err := r.Wait(bg)
		if !errors.Is(err, docket.ErrTaskFailed) || !strings.Contains(err.Error(), "panic") || !strings.Contains(err.Error(), "goroutine") {
			t.Errorf("%s: Wait = %v; want a failure with the stack", kind, err)
		}
		if info, _ := r.Info(bg); info.Attempt != 2 {
			t.Errorf("%s: %d attempts, want a retry after the panic", kind, info.Attempt)
		}
	}
}

func TestTimeoutCancelsHandler(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	slow := docket.NewTask("slow", func(ctx context.Context, _ int) (int, error) {
		<-ctx.Done()
		return 0, ctx.Err()
	}, docket.Timeout(20*time.Millisecond), docket.MaxRetries(0))
	q.Register(slow)
	r, _ := slow.Enqueue(bg, q, 1)
	dockettest.Drain(t, q)
	_, err := r.Wait(bg)
	if !errors.Is(err, docket.ErrTaskFailed) || !strings.Contains(err.Error(), "timed out after 20ms") {
		t.Fatalf("Wait = %v", err)
	}
}

func TestCancel(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	started := make(chan string, 1)
	block := docket.NewTask("block", func(ctx context.Context, _ int) (int, error) {
		tc, _ := docket.FromContext(ctx)
		started <- tc.ID
		<-ctx.Done()
		return 0, ctx.Err()
	})
	q.Register(block)
	later, _ := block.Enqueue(bg, q, 1, docket.Countdown(time.Hour))
	if err := later.Cancel(bg); err != nil {
		t.Fatal(err)
	}
	if _, err := later.Wait(bg); !errors.Is(err, docket.ErrTaskCancelled) {
		t.Fatalf("cancelled before start: %v", err)
	}
	runWorkers(t, q)
	running, _ := block.Enqueue(bg, q, 2)
	<-started
	if err := running.Cancel(bg); err != nil {
		t.Fatal(err)
	}
	if _, err := running.Wait(waitCtx(t)); !errors.Is(err, docket.ErrTaskCancelled) {
		t.Fatalf("cancelled while running: %v", err)
	}
	if err := running.Cancel(bg); err != nil {
		t.Fatalf("cancel of a finished task: %v", err)
	}
	if err := q.Cancel(bg, "01NOSUCHTASK"); !errors.Is(err, docket.ErrNotFound) {
		t.Fatalf("cancel of a missing task: %v", err)
	}
}

func TestUniqueAndCustomID(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	report := docket.NewTask("report", func(ctx context.Context, n int) (int, error) { return n, nil })
	q.Register(report)
	a, err := report.Enqueue(bg, q, 1, docket.Unique("report:7", docket.RejectDuplicate))
	if err != nil {
		t.Fatal(err)
	}
	_, err = report.Enqueue(bg, q, 2, docket.Unique("report:7", docket.RejectDuplicate))
	var dup *docket.DuplicateError
	if !errors.Is(err, docket.ErrDuplicate) || !errors.As(err, &dup) || dup.ExistingID != a.ID() {
		t.Fatalf("second unique enqueue: %v", err)
	}
	b, err := report.Enqueue(bg, q, 3, docket.Unique("report:7", docket.ReturnExisting))
	if err != nil || b.ID() != a.ID() {
		t.Fatalf("ReturnExisting: %v %v", b, err)
	}
	dockettest.Drain(t, q)
	if c, err := report.Enqueue(bg, q, 4, docket.Unique("report:7", docket.RejectDuplicate)); err != nil || c.ID() == a.ID() {
		t.Fatalf("key not freed after the task finished: %v", err)
	}
	if _, err := report.Enqueue(bg, q, 5, docket.TaskID("order-1")); err != nil {
		t.Fatal(err)
	}
	if _, err := report.Enqueue(bg, q, 5, docket.TaskID("order-1")); !errors.Is(err, docket.ErrDuplicate) {
		t.Fatalf("duplicate id: %v", err)
	}
	r, err := report.Enqueue(bg, q, 5, docket.TaskID("order-1"), docket.Unique("order-1", docket.ReturnExisting))
	if err != nil || r.ID() != "order-1" {
		t.Fatalf("idempotent enqueue by id: %v %v", r, err)
	}
}

// Bad input gets a typed error and writes nothing.
func TestValidation(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t, docket.MaxPayloadSize(64))
	ok := docket.NewTask("ok", func(ctx context.Context, v any) (int, error) { return 0, nil })
	if err := q.Register(ok); err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		opts []docket.TaskOption
		args any
		want error
	}{
		"negative countdown":    {[]docket.TaskOption{docket.Countdown(-time.Second)}, 1, docket.ErrInvalid},
		"overflowing countdown": {[]docket.TaskOption{docket.Countdown(math.MaxInt64)}, 1, docket.ErrInvalid},
		"zero ETA":              {[]docket.TaskOption{docket.ETA(time.Time{})}, 1, docket.ErrInvalid},
		"far ETA":               {[]docket.TaskOption{docket.ETA(time.Date(12000, 1, 1, 0, 0, 0, 0, time.UTC))}, 1, docket.ErrInvalid},
		"negative retries":      {[]docket.TaskOption{docket.MaxRetries(-1)}, 1, docket.ErrInvalid},
		"priority 10":           {[]docket.TaskOption{docket.Priority(10)}, 1, docket.ErrInvalid},
		"negative timeout":      {[]docket.TaskOption{docket.Timeout(-time.Second)}, 1, docket.ErrInvalid},
		"zero expiry":           {[]docket.TaskOption{docket.Expires(0)}, 1, docket.ErrInvalid},
		"expiry before ETA":     {[]docket.TaskOption{docket.Countdown(time.Hour), docket.Expires(time.Minute)}, 1, docket.ErrInvalid},
		"bad queue":             {[]docket.TaskOption{docket.OnQueue("emails; DROP")}, 1, docket.ErrInvalid},
		"empty queue":           {[]docket.TaskOption{docket.OnQueue("")}, 1, docket.ErrInvalid},
		"bad id":                {[]docket.TaskOption{docket.TaskID("a b")}, 1, docket.ErrInvalid},
		"NUL unique key":        {[]docket.TaskOption{docket.Unique("a\x00b", docket.RejectDuplicate)}, 1, docket.ErrInvalid},
		"empty unique key":      {[]docket.TaskOption{docket.Unique("", docket.RejectDuplicate)}, 1, docket.ErrInvalid},
		"bad header key":        {[]docket.TaskOption{docket.Header("x y", "1")}, 1, docket.ErrInvalid},
		"bad backoff":           {[]docket.TaskOption{docket.RetryBackoff(docket.Exponential{Base: -1})}, 1, docket.ErrInvalid},
		"custom backoff":        {[]docket.TaskOption{docket.RetryBackoff(docket.BackoffFunc(func(int, error) time.Duration { return 0 }))}, 1, docket.ErrInvalid},
		"unencodable args":      {nil, make(chan int), docket.ErrInvalid},
		"NaN args":              {nil, math.NaN(), docket.ErrInvalid},
		"oversized args":        {nil, strings.Repeat("x", 100), docket.ErrTooLarge},
		"invalid raw JSON":      {nil, json.RawMessage(`{"a":`), docket.ErrInvalid},
	}
	for name, c := range cases {
		if _, err := q.EnqueueByName(bg, "ok", c.args, c.opts...); !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", name, err, c.want)
		}
	}
	for _, name := range []string{"", "a b", "-lead", "x'); DROP TABLE docket_tasks;--", "%", "_x", "naïve", strings.Repeat("n", 129), strings.Repeat("n", 10<<10), "a\x00b", "*", "[a]", "{x}", "a}:b"} {
		var ve *docket.ValidationError
		if err := q.Register(docket.NewTask(name, func(context.Context, int) (int, error) { return 0, nil })); !errors.As(err, &ve) {
			t.Errorf("Register(%q) = %v, want *ValidationError", name, err)
		}
		if _, err := q.EnqueueByName(bg, name, 1); !errors.Is(err, docket.ErrInvalid) {
			t.Errorf("EnqueueByName(%q) = %v", name, err)
		}
	}
	if _, err := q.EnqueueByName(bg, "not.registered", 1); !errors.Is(err, docket.ErrUnknownTask) {
		t.Errorf("unknown name: %v", err)
	}
	if err := q.Register(docket.NewTask[int, int]("nil.handler", nil)); !errors.Is(err, docket.ErrInvalid) {
		t.Errorf("nil handler: %v", err)
	}
	if err := q.Register(docket.NewTask("ok", func(context.Context, int) (int, error) { return 0, nil })); !errors.Is(err, docket.ErrInvalid) {
		t.Errorf("second task under one name: %v", err)
	}
	if err := q.Register(docket.NewTask("defaults", func(context.Context, int) (int, error) { return 0, nil }, docket.MaxRetries(-3))); !errors.Is(err, docket.ErrInvalid) {
		t.Errorf("invalid default: %v", err)
	}
	if _, err := docket.Open(bg, "memory:", docket.Concurrency(0)); !errors.Is(err, docket.ErrInvalid) {
		t.Errorf("Concurrency(0): %v", err)
	}
	if all, err := q.List(bg, docket.ListOptions{}); err != nil || len(all) != 0 {
		t.Fatalf("invalid input wrote %d tasks (%v)", len(all), err)
	}
	// Free-form values are stored verbatim, quotes and all.
	q2, _ := dockettest.Open(t)
	q2.Register(ok)
	odd := `x'); DROP TABLE docket_tasks;-- %_"\` + strings.Repeat("v", 10<<10)
	r, err := q2.EnqueueByName(bg, "ok", odd, docket.Header("note", odd), docket.Unique(odd[:500], docket.RejectDuplicate))
	if err != nil {
		t.Fatal(err)
	}
	info, _ := r.Info(bg)
	var args string
	json.Unmarshal(info.Args, &args)
	if args != odd || info.Headers["note"] != odd || info.UniqueKey != odd[:500] {
		t.Fatal("free-form values were not stored verbatim")
	}
}

// A task name nobody in this worker registered ends failed with a reason.
func TestUnregisteredNameFromStorage(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "q.db")
	producer, err := docket.Open(bg, "sqlite:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	only := docket.NewTask("only.in.producer", func(context.Context, int) (int, error) { return 1, nil })
	producer.Register(only)
	r, _ := only.Enqueue(bg, producer, 1)

	worker, _ := docket.Open(bg, path)
	defer worker.Close()
	worker.Register(docket.NewTask("other", func(context.Context, int) (int, error) { return 1, nil }))
	if n, err := worker.Drain(bg); err != nil || n != 1 {
		t.Fatalf("Drain = %d, %v", n, err)
	}
	_, err = r.Wait(bg)
	if !errors.Is(err, docket.ErrTaskFailed) || !strings.Contains(err.Error(), "not registered") {
		t.Fatalf("Wait = %v", err)
	}
}

func TestEnqueueByNameAndArgs(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	add := docket.NewTask("tasks.add", func(ctx context.Context, a []int) (int, error) { return a[0] + a[1], nil })
	q.Register(add)
	r, err := q.EnqueueByName(bg, "tasks.add", docket.Args{2, 3})
	if err != nil {
		t.Fatal(err)
	}
	r2, _ := q.EnqueueByName(bg, "tasks.add", json.RawMessage(`[40, 2]`))
	dockettest.Drain(t, q)
	if v, err := r.Wait(bg); err != nil || string(v) != "5" {
		t.Fatalf("untyped result %s, %v", v, err)
	}
	if v, _ := add.ResultOf(q, r2.ID()).Wait(bg); v != 42 {
		t.Fatalf("typed view of an untyped enqueue: %v", v)
	}
}

func TestEnqueueManyIsAtomic(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	sq := docket.NewTask("square", func(ctx context.Context, n int) (int, error) { return n * n, nil })
	q.Register(sq)
	rs, err := sq.EnqueueMany(bg, q, []int{1, 2, 3, 4})
	if err != nil || len(rs) != 4 {
		t.Fatal(err)
	}
	dockettest.Drain(t, q)
	for i, r := range rs {
		if v, _ := r.Wait(bg); v != (i+1)*(i+1) {
			t.Fatalf("result %d = %d", i, v)
		}
	}
	if _, err := sq.EnqueueMany(bg, q, []int{1, 2}, docket.TaskID("same")); !errors.Is(err, docket.ErrInvalid) {
		t.Fatalf("one id for a batch: %v", err)
	}
	if _, err := sq.EnqueueMany(bg, q, []int{1, math.MaxInt}, docket.Priority(docket.MaxPriority)); err != nil {
		t.Fatal(err)
	}
}

func TestTransactionalEnqueue(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "app.db")
	q, err := docket.Open(bg, "sqlite:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	welcome := docket.NewTask("welcome", func(ctx context.Context, user string) (string, error) { return "hi " + user, nil })
	q.Register(welcome)
	db, err := q.DB()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE users (name TEXT PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	signup := func(name string, commit bool) *docket.Result[string] {
		tx, err := db.BeginTx(bg, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		if _, err := tx.Exec(`INSERT INTO users VALUES (?)`, name); err != nil {
			t.Fatal(err)
		}
		r, err := welcome.Enqueue(bg, q.Tx(tx), name)
		if err != nil {
			t.Fatal(err)
		}
		if commit {
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		}
		return r
	}
	runWorkers(t, q)
	ann := signup("ann", true)
	bob := signup("bob", false)
	if v, err := ann.Wait(waitCtx(t)); err != nil || v != "hi ann" {
		t.Fatalf("committed: %q %v", v, err)
	}
	if _, err := bob.Wait(bg); !errors.Is(err, docket.ErrNotFound) {
		t.Fatalf("rolled back: %v", err)
	}
}

func TestExpiredTaskNeverRuns(t *testing.T) {
	t.Parallel()
	q, clock := dockettest.Open(t)
	var ran atomic.Bool
	task := docket.NewTask("late", func(ctx context.Context, _ int) (int, error) { ran.Store(true); return 0, nil })
	q.Register(task)
	r, _ := task.Enqueue(bg, q, 1, docket.Countdown(time.Minute), docket.Expires(2*time.Minute))
	dockettest.Advance(t, q, clock, 5*time.Minute)
	if _, err := r.Wait(bg); !errors.Is(err, docket.ErrTaskExpired) || ran.Load() {
		t.Fatalf("Wait = %v, ran = %v", err, ran.Load())
	}
}

func TestHandlerSeesTaskContext(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	got := make(chan docket.TaskContext, 1)
	task := docket.NewTask("ctx.info", func(ctx context.Context, _ int) (int, error) {
		tc, ok := docket.FromContext(ctx)
		if !ok {
			return 0, errors.New("no task in ctx")
		}
		got <- tc
		return 0, nil
	}, docket.OnQueue("special"), docket.MaxRetries(4))
	q.Register(task)
	r, _ := task.Enqueue(bg, q, 1, docket.Header("trace", "t-1"))
	dockettest.Drain(t, q)
	tc := <-got
	if tc.ID != r.ID() || tc.Name != "ctx.info" || tc.Queue != "special" || tc.Attempt != 1 || tc.MaxRetries != 4 || tc.Headers["trace"] != "t-1" {
		t.Fatalf("TaskContext = %+v", tc)
	}
	if _, ok := docket.FromContext(bg); ok {
		t.Fatal("FromContext outside a handler")
	}
}

func TestWaitErrors(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	task := docket.NewTask("never.runs", func(ctx context.Context, _ int) (int, error) { return 0, nil })
	q.Register(task)
	r, _ := task.Enqueue(bg, q, 1)
	ctx, cancel := context.WithTimeout(bg, 20*time.Millisecond)
	defer cancel()
	if _, err := r.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait past ctx: %v", err)
	}
	if _, err := task.ResultOf(q, "01NOSUCH").Wait(bg); !errors.Is(err, docket.ErrNotFound) {
		t.Fatalf("Wait on a missing id: %v", err)
	}
}

func TestResultTTLPrunes(t *testing.T) {
	t.Parallel()
	q, clock := dockettest.Open(t, docket.PruneInterval(5*time.Millisecond))
	task := docket.NewTask("short.lived", func(ctx context.Context, _ int) (int, error) { return 7, nil }, docket.ResultTTL(time.Hour))
	q.Register(task)
	r, _ := task.Enqueue(bg, q, 1)
	keep, _ := task.Enqueue(bg, q, 2, docket.ResultTTL(3*time.Hour))
	dockettest.Drain(t, q)
	clock.Advance(2 * time.Hour)
	runWorkers(t, q)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := r.Info(bg); errors.Is(err, docket.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("finished task was not pruned after its TTL")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if v, err := keep.Wait(bg); err != nil || v != 7 {
		t.Fatalf("task within its TTL: %v %v", v, err)
	}
}

func TestOpenURLs(t *testing.T) {
	dir := t.TempDir()
	if _, err := docket.Open(bg, "nosuch://x"); err == nil || !strings.Contains(err.Error(), "nosuch") {
		t.Fatalf("unknown scheme: %v", err)
	}
	for _, u := range []string{"amqp://guest:S3CR3T@localhost:1/", "redis://:S3CR3T@localhost:1/0"} {
		ctx, cancel := context.WithTimeout(bg, 3*time.Second)
		_, err := docket.Open(ctx, u)
		cancel()
		if err == nil || strings.Contains(err.Error(), "S3CR3T") {
			t.Fatalf("error leaks the password or is missing: %v", err)
		}
	}
	for _, u := range []string{filepath.Join(dir, "bare.db"), "sqlite:" + filepath.Join(dir, "url.db"), "sqlite://" + filepath.Join(dir, "abs.db"), "memory:", "sqlite::memory:"} {
		q, err := docket.Open(bg, u)
		if err != nil {
			t.Fatalf("Open(%q): %v", u, err)
		}
		q.Close()
	}
	// "" is ./docket.db; the environment is read only when the program
	// passes it.
	t.Setenv("DOCKET_URL", "sqlite:"+filepath.Join(dir, "env.db"))
	t.Chdir(dir)
	q, err := docket.Open(bg, "")
	if err != nil {
		t.Fatal(err)
	}
	q.Close()
	if _, err := os.Stat(filepath.Join(dir, "docket.db")); err != nil {
		t.Fatalf(`Open("") did not open ./docket.db: %v`, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "env.db")); err == nil {
		t.Fatal(`Open("") read $DOCKET_URL`)
	}
	q.Close() // twice is fine
	if _, err := docket.NewTask("x", func(context.Context, int) (int, error) { return 0, nil }).Enqueue(bg, q, 1); !errors.Is(err, docket.ErrClosed) {
		t.Fatalf("enqueue after Close: %v", err)
	}
}

// A worker holds at most Concurrency+Prefetch tasks; with slow tasks the
// adaptive prefetch holds one waiting task, not the whole cap.
func TestPrefetchBound(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t, docket.Concurrency(3), docket.Prefetch(10))
	release := make(chan struct{})
	var running, peak atomic.Int32
	task := docket.NewTask("hold", func(ctx context.Context, _ int) (int, error) {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-release
		running.Add(-1)
		return 0, nil
	})
	q.Register(task)
	task.EnqueueMany(bg, q, make([]int, 50))
	runWorkers(t, q)
	deadline := time.Now().Add(10 * time.Second)
	for running.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // let the fetcher claim all it would
	held, _ := q.List(bg, docket.ListOptions{States: []docket.State{docket.StateRunning}})
	if len(held) != 4 {
		t.Fatalf("%d tasks leased while 3 handlers are blocked; want 3 running + 1 prefetched", len(held))
	}
	close(release)
	for time.Now().Before(deadline) {
		left, _ := q.List(bg, docket.ListOptions{States: []docket.State{docket.StateReady, docket.StateRunning}})
		if len(left) == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if peak.Load() > 3 {
		t.Fatalf("%d handlers ran at once, Concurrency is 3", peak.Load())
	}
}

func TestTaskConcurrencyLimit(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t, docket.Concurrency(8), docket.TaskConcurrency("limited", 2))
	var running, peak atomic.Int32
	limited := docket.NewTask("limited", func(ctx context.Context, _ int) (int, error) {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(5 * time.Millisecond)
		running.Add(-1)
		return 0, nil
	})
	free := docket.NewTask("free", func(ctx context.Context, _ int) (int, error) { return 0, nil })
	q.Register(limited, free)
	rs, _ := limited.EnqueueMany(bg, q, make([]int, 30))
	fs, _ := free.EnqueueMany(bg, q, make([]int, 30))
	runWorkers(t, q)
	for _, r := range append(rs, fs...) {
		if _, err := r.Wait(waitCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
	if p := peak.Load(); p > 2 || p < 1 {
		t.Fatalf("peak concurrency of the limited task = %d, limit 2", p)
	}
}

func TestTaskRateLimit(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t, docket.TaskRateLimit("rated", 50, 5))
	var mu sync.Mutex
	var starts []time.Time
	rated := docket.NewTask("rated", func(ctx context.Context, _ int) (int, error) {
		mu.Lock()
		starts = append(starts, time.Now())
		mu.Unlock()
		return 0, nil
	})
	q.Register(rated)
	rs, _ := rated.EnqueueMany(bg, q, make([]int, 30))
	runWorkers(t, q)
	for _, r := range rs {
		if _, err := r.Wait(waitCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
	// 30 starts at 50/s with a burst of 5 need at least 25/50 s.
	if span := starts[len(starts)-1].Sub(starts[0]); span < 450*time.Millisecond {
		t.Fatalf("30 starts took %v; the rate limit allows no less than 500ms", span)
	}
}

// Graceful shutdown: running tasks finish within the grace period; tasks
// still running after it are cancelled and released without consuming an
// attempt; tasks held but not started are released at once.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t, docket.Concurrency(2), docket.Prefetch(2), docket.ShutdownGrace(200*time.Millisecond))
	started := make(chan int, 10)
	task := docket.NewTask("work", func(ctx context.Context, ms int) (int, error) {
		started <- ms
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
			return ms, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	})
	q.Register(task)
	quick, _ := task.Enqueue(bg, q, 50)
	slow, _ := task.Enqueue(bg, q, 10_000)
	rest, _ := task.EnqueueMany(bg, q, []int{1, 1, 1})
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error)
	go func() { done <- q.Run(ctx) }()
	<-started
	<-started
	cancel()
	t0 := time.Now()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if el := time.Since(t0); el > 5*time.Second {
		t.Fatalf("shutdown took %v", el)
	}
	if info, _ := quick.Info(bg); info.State != docket.StateSucceeded {
		t.Fatalf("task that finished within the grace: %v", info.State)
	}
	info, _ := slow.Info(bg)
	if info.State != docket.StateReady || info.Attempt != 0 {
		t.Fatalf("task cut off by shutdown: state %v attempt %d; want ready with the attempt given back", info.State, info.Attempt)
	}
	for _, r := range rest {
		if info, _ := r.Info(bg); info.State != docket.StateReady || info.Attempt != 0 {
			t.Fatalf("held task: %v attempt %d", info.State, info.Attempt)
		}
	}
	running, _ := q.List(bg, docket.ListOptions{States: []docket.State{docket.StateRunning}})
	if len(running) != 0 {
		t.Fatalf("%d tasks still leased after Run returned", len(running))
	}
}

// A handler that ignores its ctx cannot hold up shutdown, and its late
// result is fenced out.
func TestShutdownWithHandlerIgnoringCtx(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t, docket.ShutdownGrace(50*time.Millisecond), docket.LeaseDuration(300*time.Millisecond))
	started, unblock := make(chan struct{}), make(chan struct{})
	task := docket.NewTask("stubborn", func(ctx context.Context, _ int) (string, error) {
		close(started)
		<-unblock // ignores ctx
		return "late", nil
	})
	q.Register(task)
	r, _ := task.Enqueue(bg, q, 1)
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error)
	go func() { done <- q.Run(ctx) }()
	<-started
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return while a handler ignored its ctx")
	}
	close(unblock)
	time.Sleep(20 * time.Millisecond)
	if info, _ := r.Info(bg); info.State != docket.StateReady || info.Attempt != 0 {
		t.Fatalf("after the zombie returned: %v attempt %d", info.State, info.Attempt)
	}
}

func TestShutdownMethod(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	started := make(chan struct{}, 1)
	task := docket.NewTask("sd", func(ctx context.Context, _ int) (int, error) {
		started <- struct{}{}
		<-ctx.Done()
		return 0, ctx.Err()
	})
	q.Register(task)
	task.Enqueue(bg, q, 1)
	done := make(chan error)
	go func() { done <- q.Run(bg) }()
	<-started
	ctx, cancel := context.WithTimeout(bg, 30*time.Millisecond)
	defer cancel()
	if err := q.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want the deadline (handler needed cancelling)", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Run may start again after a stop.
	ctx2, cancel2 := context.WithCancel(bg)
	cancel2()
	if err := q.Run(ctx2); err != nil {
		t.Fatal(err)
	}
}

func TestRunRequiresTasks(t *testing.T) {
	q, _ := dockettest.Open(t)
	if err := q.Run(bg); err == nil {
		t.Fatal("Run without registered tasks")
	}
}

// A lease is kept alive by heartbeats while a handler runs longer than it.
func TestHeartbeatKeepsLease(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "q.db")
	q, err := docket.Open(bg, path, docket.LeaseDuration(600*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	var calls atomic.Int32
	long := docket.NewTask("long", func(ctx context.Context, _ int) (int, error) {
		calls.Add(1)
		time.Sleep(2 * time.Second)
		return 1, nil
	})
	q.Register(long)
	r, _ := long.Enqueue(bg, q, 1)
	runWorkers(t, q)
	// A second worker on the same file would rescue a lapsed lease.
	other, err := docket.Open(bg, path, docket.LeaseDuration(600*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	other.Register(long)
	runWorkers(t, other)
	if _, err := r.Wait(waitCtx(t)); err != nil {
		t.Fatal(err)
	}
	if info, _ := r.Info(bg); info.Attempt != 1 || calls.Load() != 1 {
		t.Fatalf("attempts %d, handler calls %d: the lease lapsed while running", info.Attempt, calls.Load())
	}
}

// 3,000 tasks (20,000 with DOCKET_TEST_LONG=1, 100,000 with
// DOCKET_TEST_LONG=soak) enqueued from 8
// goroutines while 16 workers run them: each succeeds exactly once, none is
// lost or left unfinished.
func TestManyTasksConcurrently(t *testing.T) {
	n := longtest.Pick(3_000, 20_000)
	if longtest.Soak() {
		n = 100_000
	}
	if testing.Short() {
		n = 2_000
	}
	q, err := docket.Open(bg, "sqlite:"+filepath.Join(t.TempDir(), "q.db"), docket.Concurrency(16))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	counts := make([]atomic.Int32, n)
	task := docket.NewTask("count", func(ctx context.Context, i int) (int, error) {
		counts[i].Add(1)
		return i, nil
	}, docket.IgnoreResult())
	q.Register(task)
	runWorkers(t, q)
	var wg sync.WaitGroup
	const producers = 8
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := p; i < n; i += producers {
				if _, err := task.Enqueue(bg, q, i); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		left, err := q.List(bg, docket.ListOptions{States: []docket.State{docket.StateScheduled, docket.StateReady, docket.StateRunning}, Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("tasks left unfinished")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i := range counts {
		if c := counts[i].Load(); c != 1 {
			t.Fatalf("task %d ran %d times", i, c)
		}
	}
	done, _ := q.List(bg, docket.ListOptions{States: []docket.State{docket.StateSucceeded}, Limit: n + 1})
	if len(done) != n {
		t.Fatalf("%d tasks succeeded, want %d", len(done), n)
	}
}

// Queues with weights: a worker picks the heavier queue proportionally more
// often, and still serves the lighter one.
func TestQueueWeights(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t, docket.Concurrency(1), docket.Prefetch(0), docket.Queues(map[string]int{"high": 9, "low": 1}))
	var mu sync.Mutex
	var order []string
	task := docket.NewTask("weighted", func(ctx context.Context, _ int) (int, error) {
		tc, _ := docket.FromContext(ctx)
		mu.Lock()
		order = append(order, tc.Queue)
		mu.Unlock()
		return 0, nil
	})
	q.Register(task)
	high, _ := task.EnqueueMany(bg, q, make([]int, 200), docket.OnQueue("high"))
	low, _ := task.EnqueueMany(bg, q, make([]int, 200), docket.OnQueue("low"))
	runWorkers(t, q)
	for _, r := range append(high, low...) {
		if _, err := r.Wait(waitCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	first := order[:100]
	nHigh := 0
	for _, name := range first {
		if name == "high" {
			nHigh++
		}
	}
	// Expected 90 of 100; fewer than 70 or all 100 has odds below 1e-6.
	if nHigh < 70 || nHigh == 100 {
		t.Fatalf("%d of the first 100 tasks came from the weight-9 queue", nHigh)
	}
}
