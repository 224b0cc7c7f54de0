package docket_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/dockettest"
	"github.com/docketq/docket/health"
)

// events collects a Queue's events.
type events struct {
	mu  sync.Mutex
	all []docket.Event
}

func (e *events) add(ev docket.Event) {
	e.mu.Lock()
	e.all = append(e.all, ev)
	e.mu.Unlock()
}

func (e *events) kinds(id string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, ev := range e.all {
		if ev.ID == id {
			out = append(out, ev.Kind.String())
		}
	}
	return out
}

func TestMiddlewareOrderContextAndArgs(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var trail []string
	note := func(s string) { mu.Lock(); trail = append(trail, s); mu.Unlock() }
	type tenantKey struct{}
	named := func(name string) docket.Middleware {
		return func(next docket.Handler) docket.Handler {
			return func(ctx context.Context, j *docket.Job) (json.RawMessage, error) {
				note(name + ">")
				r, err := next(ctx, j)
				note("<" + name)
				return r, err
			}
		}
	}
	tenant := func(next docket.Handler) docket.Handler {
		return func(ctx context.Context, j *docket.Job) (json.RawMessage, error) {
			// A middleware may rewrite the arguments and extend ctx.
			j.Args = bytes.ReplaceAll(j.Args, []byte("secret"), []byte("plain"))
			return next(context.WithValue(ctx, tenantKey{}, j.Headers["tenant"]), j)
		}
	}
	var seen docket.Job
	spy := func(next docket.Handler) docket.Handler {
		return func(ctx context.Context, j *docket.Job) (json.RawMessage, error) {
			seen = *j
			return next(ctx, j)
		}
	}
	q, clock := dockettest.Open(t, docket.Use(named("q1"), named("q2"), tenant))
	echo := docket.NewTask("echo", func(ctx context.Context, s string) (string, error) {
		note("handler")
		tc, _ := docket.FromContext(ctx)
		return s + "@" + ctx.Value(tenantKey{}).(string) + "#" + tc.Name, nil
	}, docket.WithMiddleware(named("t1"), spy))
	if err := q.Register(echo); err != nil {
		t.Fatal(err)
	}
	res, err := echo.Enqueue(bg, q, "secret", docket.Header("tenant", "acme"), docket.Countdown(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	enqueuedAt := clock.Now()
	dockettest.Advance(t, q, clock, time.Minute)
	got, err := res.Wait(waitCtx(t))
	if err != nil || got != "plain@acme#echo" {
		t.Fatalf("Wait = %q, %v", got, err)
	}
	want := []string{"q1>", "q2>", "t1>", "handler", "<t1", "<q2", "<q1"}
	if !slices.Equal(trail, want) {
		t.Fatalf("order %v, want %v", trail, want)
	}
	if seen.ID != res.ID() || seen.Name != "echo" || seen.Queue != "default" || seen.Attempt != 1 ||
		string(seen.Args) != `"plain"` || seen.Headers["tenant"] != "acme" ||
		!seen.Created.Equal(enqueuedAt) || !seen.ETA.Equal(enqueuedAt.Add(time.Minute)) ||
		!seen.Due().Equal(seen.ETA) || !seen.Started.Equal(clock.Now()) {
		t.Fatalf("job %+v (enqueued %v, now %v)", seen, enqueuedAt, clock.Now())
	}
}

func TestMiddlewareErrorsAndPanics(t *testing.T) {
	t.Parallel()
	var ev events
	refuse := func(next docket.Handler) docket.Handler {
		return func(ctx context.Context, j *docket.Job) (json.RawMessage, error) {
			if j.Headers["deny"] != "" {
				return nil, docket.Permanent(errors.New("denied by policy"))
			}
			if j.Headers["panic"] != "" {
				panic("middleware broke")
			}
			return next(ctx, j)
		}
	}
	q, _ := dockettest.Open(t, docket.Use(refuse), docket.OnEvent(ev.add))
	ran := 0
	task := docket.NewTask("t", func(ctx context.Context, n int) (int, error) { ran++; return n, nil })
	if err := q.Register(task); err != nil {
		t.Fatal(err)
	}
	denied, _ := task.Enqueue(bg, q, 1, docket.Header("deny", "1"))
	panicked, _ := task.Enqueue(bg, q, 2, docket.Header("panic", "1"), docket.MaxRetries(0))
	dockettest.Drain(t, q)
	if ran != 0 {
		t.Fatalf("handler ran %d times behind a middleware that refused", ran)
	}
	in, _ := denied.Info(bg)
	if in.State != docket.StateFailed || !strings.Contains(in.Error, "denied by policy") || in.Attempt != 1 {
		t.Fatalf("denied: %v %q attempt %d", in.State, in.Error, in.Attempt)
	}
	in, _ = panicked.Info(bg)
	if in.State != docket.StateFailed || !strings.Contains(in.Error, "middleware broke") || !strings.Contains(in.Error, "goroutine") {
		t.Fatalf("panicked: %v %q", in.State, in.Error)
	}
	if k := ev.kinds(denied.ID()); !slices.Equal(k, []string{"enqueued", "failed"}) {
		t.Fatalf("events of the denied task: %v", k)
	}
}

func TestWithMiddlewareIsATaskDefault(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	task := docket.NewTask("t", func(ctx context.Context, n int) (int, error) { return n, nil })
	if err := q.Register(task); err != nil {
		t.Fatal(err)
	}
	noop := func(next docket.Handler) docket.Handler { return next }
	_, err := task.Enqueue(bg, q, 1, docket.WithMiddleware(noop))
	if !errors.Is(err, docket.ErrInvalid) || !strings.Contains(err.Error(), "task default") {
		t.Fatalf("WithMiddleware at enqueue: %v, want a validation error", err)
	}
	bad := docket.NewTask("bad", func(ctx context.Context, n int) (int, error) { return n, nil }, docket.WithMiddleware(nil))
	if err := q.Register(bad); !errors.Is(err, docket.ErrInvalid) {
		t.Fatalf("nil middleware: %v", err)
	}
	if _, err := docket.Open(bg, "memory:", docket.Use(nil)); !errors.Is(err, docket.ErrInvalid) {
		t.Fatalf("Use(nil): %v", err)
	}
	if _, err := docket.Open(bg, "memory:", docket.UseEnqueue(nil)); !errors.Is(err, docket.ErrInvalid) {
		t.Fatalf("UseEnqueue(nil): %v", err)
	}
	if _, err := docket.Open(bg, "memory:", docket.OnEvent(nil)); !errors.Is(err, docket.ErrInvalid) {
		t.Fatalf("OnEvent(nil): %v", err)
	}
}

func TestEnqueueMiddlewareAddsHeaders(t *testing.T) {
	t.Parallel()
	var calls []docket.Enqueueing
	stamp := func(next docket.EnqueueFunc) docket.EnqueueFunc {
		return func(ctx context.Context, e *docket.Enqueueing) error {
			e.Headers["traceparent"] = "00-" + e.Name
			err := next(ctx, e)
			calls = append(calls, *e)
			return err
		}
	}
	huge := func(next docket.EnqueueFunc) docket.EnqueueFunc {
		return func(ctx context.Context, e *docket.Enqueueing) error {
			if e.Queue == "huge" {
				e.Headers["big"] = strings.Repeat("x", 20<<10)
			}
			return next(ctx, e)
		}
	}
	q, _ := dockettest.Open(t, docket.UseEnqueue(stamp, huge))
	var got []string
	task := docket.NewTask("t", func(ctx context.Context, n int) (int, error) {
		tc, _ := docket.FromContext(ctx)
		got = append(got, tc.Headers["traceparent"]+"/"+tc.Headers["own"])
		return n, nil
	}, docket.Header("own", "default"))
	if err := q.Register(task); err != nil {
		t.Fatal(err)
	}
	rs, err := task.EnqueueMany(bg, q, []int{1, 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := task.Enqueue(bg, q, 3, docket.OnQueue("huge")); !errors.Is(err, docket.ErrTooLarge) {
		t.Fatalf("a middleware's oversized header: %v, want ErrTooLarge", err)
	}
	dockettest.Drain(t, q)
	if !slices.Equal(got, []string{"00-t/default", "00-t/default"}) {
		t.Fatalf("handler saw headers %v", got)
	}
	if len(calls) != 2 || len(calls[0].IDs) != 2 || calls[0].IDs[0] != rs[0].ID() || calls[0].InTx {
		t.Fatalf("middleware calls %+v", calls)
	}
	// The task default's map is not changed by a middleware.
	again := docket.NewTask("t2", func(ctx context.Context, n int) (int, error) { return n, nil }, docket.Header("own", "x"))
	if err := q.Register(again); err != nil {
		t.Fatal(err)
	}
	r, _ := again.Enqueue(bg, q, 1)
	in, _ := r.Info(bg)
	if in.Headers["traceparent"] != "00-t2" || len(in.Headers) != 2 {
		t.Fatalf("headers stored %v", in.Headers)
	}
}

func TestEventsOfEachOutcome(t *testing.T) {
	t.Parallel()
	var ev events
	q, clock := dockettest.Open(t, docket.OnEvent(ev.add))
	task := docket.NewTask("t", func(ctx context.Context, mode string) (string, error) {
		switch mode {
		case "fail":
			return "", errors.New("boom")
		case "flaky":
			if tc, _ := docket.FromContext(ctx); tc.Attempt == 1 {
				return "", errors.New("once")
			}
		}
		return mode, nil
	}, docket.MaxRetries(1), noRetryBackoff())
	if err := q.Register(task); err != nil {
		t.Fatal(err)
	}
	ok, _ := task.Enqueue(bg, q, "ok")
	flaky, _ := task.Enqueue(bg, q, "flaky")
	fail, _ := task.Enqueue(bg, q, "fail")
	late, _ := task.Enqueue(bg, q, "late", docket.Countdown(time.Minute), docket.Expires(2*time.Minute))
	dockettest.Drain(t, q)
	clock.Advance(time.Hour)
	dockettest.Drain(t, q)
	for _, c := range []struct {
		id   string
		want []string
	}{
		{ok.ID(), []string{"enqueued", "succeeded"}},
		{flaky.ID(), []string{"enqueued", "retried", "succeeded"}},
		{fail.ID(), []string{"enqueued", "retried", "failed"}},
		{late.ID(), []string{"enqueued", "expired"}},
	} {
		if got := ev.kinds(c.id); !slices.Equal(got, c.want) {
			t.Errorf("events of %s: %v, want %v", c.id, got, c.want)
		}
	}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	for _, e := range ev.all {
		if e.Name != "t" || e.Queue != "default" {
			t.Errorf("event without its task's name and queue: %+v", e)
		}
		switch e.Kind {
		case docket.EventRetried:
			if e.Attempt != 1 || e.Error == "" || e.RetryAt.IsZero() || e.Started.IsZero() {
				t.Errorf("retried: %+v", e)
			}
		case docket.EventFailed:
			if e.Attempt != 2 || e.Error != "boom" {
				t.Errorf("failed: %+v", e)
			}
		}
	}
}

func TestLogLinesCarryTheTask(t *testing.T) {
	t.Parallel()
	var buf syncBuffer
	logger := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	q, _ := dockettest.Open(t, docket.Logger(logger))
	task := docket.NewTask("mail.send", func(ctx context.Context, n int) (int, error) {
		slog.New(docket.TaskLogHandler(logger.Handler())).InfoContext(ctx, "sending")
		if n == 0 {
			return 0, docket.Permanent(errors.New("no recipient"))
		}
		return n, nil
	}, docket.OnQueue("mail"))
	if err := q.Register(task); err != nil {
		t.Fatal(err)
	}
	good, _ := task.Enqueue(bg, q, 1)
	bad, _ := task.Enqueue(bg, q, 0)
	dockettest.Drain(t, q)
	type line struct {
		Msg   string `json:"msg"`
		Level string `json:"level"`
		Task  struct {
			ID, Name, Queue string
			Attempt         int
		} `json:"task"`
	}
	var lines []line
	for _, raw := range bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n")) {
		var l line
		if err := json.Unmarshal(raw, &l); err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		lines = append(lines, l)
	}
	// At Info, a success logs nothing of docket's own: the handler's two
	// lines and the final failure.
	if len(lines) != 3 {
		t.Fatalf("log lines: %s", buf.Bytes())
	}
	for i, want := range []struct{ msg, level, id string }{
		{"sending", "INFO", good.ID()}, {"sending", "INFO", bad.ID()}, {"docket: task failed", "ERROR", bad.ID()},
	} {
		l := lines[i]
		if l.Msg != want.msg || l.Level != want.level || l.Task.ID != want.id || l.Task.Name != "mail.send" || l.Task.Queue != "mail" || l.Task.Attempt != 1 {
			t.Errorf("line %d: %+v, want %+v", i, l, want)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

func TestHealthHandlers(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	if err := q.Ping(bg); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	get := func(h http.Handler) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
		return rec.Code, rec.Body.String()
	}
	live, ready := health.Live(q), health.Ready(q, time.Second)
	// A producer (nothing registered) is ready once the backend answers.
	if code, body := get(ready); code != 200 || body != "ok\n" {
		t.Fatalf("producer readiness: %d %q", code, body)
	}
	task := docket.NewTask("t", func(ctx context.Context, n int) (int, error) { return n, nil })
	if err := q.Register(task); err != nil {
		t.Fatal(err)
	}
	if code, body := get(ready); code != 503 || !strings.Contains(body, "worker is not running") {
		t.Fatalf("readiness of a worker not started: %d %q", code, body)
	}
	if code, _ := get(live); code != 200 {
		t.Fatalf("liveness without a worker: %d", code)
	}
	runWorkers(t, q)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if busy, total := q.Slots(); total == 10 && busy == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the worker never started")
		}
		time.Sleep(time.Millisecond)
	}
	if code, body := get(ready); code != 200 {
		t.Fatalf("readiness of a running worker: %d %q", code, body)
	}
	if code, body := get(live); code != 200 {
		t.Fatalf("liveness of a running worker: %d %q", code, body)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if code, body := get(ready); code != 503 || !strings.Contains(body, "closed") {
		t.Fatalf("readiness after Close: %d %q", code, body)
	}
}

func TestEnqueueMiddlewareMustStore(t *testing.T) {
	t.Parallel()
	drop := func(next docket.EnqueueFunc) docket.EnqueueFunc {
		return func(ctx context.Context, e *docket.Enqueueing) error { return nil }
	}
	var ev events
	q, _ := dockettest.Open(t, docket.UseEnqueue(drop), docket.OnEvent(ev.add))
	task := docket.NewTask("t", func(ctx context.Context, n int) (int, error) { return n, nil })
	if err := q.Register(task); err != nil {
		t.Fatal(err)
	}
	if _, err := task.Enqueue(bg, q, 1); !errors.Is(err, docket.ErrInvalid) || !strings.Contains(err.Error(), "without calling next") {
		t.Fatalf("a middleware that stored nothing: %v, want ErrInvalid", err)
	}
	if _, err := q.EnqueueJSON(bg, "t", json.RawMessage(`1`)); !errors.Is(err, docket.ErrInvalid) {
		t.Fatalf("EnqueueJSON through it: %v", err)
	}
	if n := dockettest.Drain(t, q); n != 0 || len(ev.all) != 0 {
		t.Fatalf("ran %d tasks, events %v: nothing should exist", n, ev.all)
	}
}

// A middleware that answers for the handler is held to the handler's
// rules: its result must be JSON within MaxResultSize.
func TestMiddlewareResultIsChecked(t *testing.T) {
	t.Parallel()
	answer := func(next docket.Handler) docket.Handler {
		return func(ctx context.Context, j *docket.Job) (json.RawMessage, error) {
			switch j.Headers["answer"] {
			case "big":
				return json.RawMessage(`"` + strings.Repeat("x", 100) + `"`), nil
			case "garbage":
				return json.RawMessage(`not json`), nil
			case "cached":
				return json.RawMessage(`42`), nil
			}
			return next(ctx, j)
		}
	}
	q, _ := dockettest.Open(t, docket.Use(answer), docket.MaxResultSize(50))
	task := docket.NewTask("t", func(ctx context.Context, n int) (int, error) { return n, nil })
	if err := q.Register(task); err != nil {
		t.Fatal(err)
	}
	big, _ := task.Enqueue(bg, q, 1, docket.Header("answer", "big"))
	garbage, _ := task.Enqueue(bg, q, 1, docket.Header("answer", "garbage"))
	cached, _ := task.Enqueue(bg, q, 1, docket.Header("answer", "cached"))
	dockettest.Drain(t, q)
	if in, _ := big.Info(bg); in.State != docket.StateFailed || !strings.Contains(in.Error, "exceed the limit of 50 bytes") || in.Attempt != 1 {
		t.Errorf("an oversized result: %v %q after %d attempts", in.State, in.Error, in.Attempt)
	}
	if in, _ := garbage.Info(bg); in.State != docket.StateFailed || !strings.Contains(in.Error, "not JSON") {
		t.Errorf("a result that is not JSON: %v %q", in.State, in.Error)
	}
	if n, err := cached.Wait(waitCtx(t)); err != nil || n != 42 {
		t.Errorf("a middleware's valid answer: %v, %v", n, err)
	}
}
