// Package probetest checks the health probes of a worker whose backend
// goes away and comes back: the broker tests of Redis and RabbitMQ run it
// against a private server they stop and start.
package probetest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/health"
)

// FollowServer runs a worker on url and checks that readiness is true,
// turns false after stop() and true again after start(), while liveness
// stays true throughout. It logs how long each change took to show.
func FollowServer(t *testing.T, url string, opts []docket.Option, stop, start func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	q, err := docket.Open(ctx, url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	task := docket.NewTask("probe.noop", func(ctx context.Context, n int) (int, error) { return n, nil })
	if err := q.Register(task); err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- q.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-ran; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	ready, live := health.Ready(q, time.Second), health.Live(q)
	code := func(h http.Handler) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
		return rec.Code, rec.Body.String()
	}
	// await polls readiness until it answers want; liveness must answer
	// 200 on every poll. The bound is generous: the figure that matters is
	// logged, and a loaded machine must not fail the test. A restarted
	// RabbitMQ node under load can take over a minute to answer a consume
	// on a quorum queue it is still recovering, and docket counts as
	// connected only once its consumers are back.
	await := func(what string, want int) {
		t.Helper()
		began := time.Now()
		for {
			if c, body := code(live); c != http.StatusOK {
				t.Fatalf("%s: liveness answered %d %q", what, c, body)
			}
			c, body := code(ready)
			if c == want {
				t.Logf("%s: readiness answered %d after %s (%q)", what, c, time.Since(began).Round(time.Millisecond), body)
				return
			}
			if time.Since(began) > 5*time.Minute {
				t.Fatalf("%s: readiness still answers %d %q after five minutes", what, c, body)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	await("started", http.StatusOK)
	stop()
	await("server stopped", http.StatusServiceUnavailable)
	start()
	await("server back", http.StatusOK)
	// The worker still works.
	res, err := task.Enqueue(ctx, q, 7)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	defer wcancel()
	if n, err := res.Wait(wctx); err != nil || n != 7 {
		t.Fatalf("a task after the server came back: %v, %v", n, err)
	}
}
