package celery_test

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/celerytest"
	"github.com/docketq/docket/internal/chaos"
)

// When the connection to RabbitMQ breaks, what it carried goes back to
// the queue: the running task's handler is told its lease is lost (its
// outcome is not written) and the task runs again on the new connection;
// a task held for its countdown runs once, at its time, from the copy
// RabbitMQ delivers again, not also from the stale one.
func TestConnectionLossOnRabbitMQ(t *testing.T) {
	app := celerytest.NewAMQP(t, false)
	ctx := context.Background()
	u, err := url.Parse(app.Broker)
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := chaos.Start(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	queue := fmt.Sprintf("docket-celery-cut-%d", time.Now().UnixNano())
	app.Forget(t, []string{queue})
	through := *u
	through.Host = proxy.Addr()
	q, err := docket.Open(ctx, "celery+"+through.String()+"?result_expires=600&backend="+url.QueryEscape(app.URL), docket.Queues(map[string]int{queue: 1}))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()

	var mu sync.Mutex
	runs := map[string]int{}
	count := func(ctx context.Context) string {
		tc, _ := docket.FromContext(ctx)
		mu.Lock()
		defer mu.Unlock()
		runs[tc.ID]++
		return tc.ID
	}
	started := make(chan string, 10)
	release := make(chan struct{})
	slow := docket.NewTask("tasks.slow", func(ctx context.Context, _ []any) (string, error) {
		started <- count(ctx)
		select {
		case <-release:
			return "done", nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}, docket.OnQueue(queue))
	later := docket.NewTask("tasks.later", func(ctx context.Context, _ []any) (string, error) {
		count(ctx)
		return "later", nil
	}, docket.OnQueue(queue))
	if err := q.Register(slow, later); err != nil {
		t.Fatal(err)
	}
	run(t, q)
	a, err := slow.Enqueue(ctx, q, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := later.Enqueue(ctx, q, nil, docket.Countdown(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	waitStart := func() {
		t.Helper()
		select {
		case <-started:
		case <-time.After(30 * time.Second):
			t.Fatal("the slow task did not start")
		}
	}
	waitStart()
	// Let the worker take the countdown's task from its consumer and hold
	// it, so that the cut leaves a stale copy here.
	time.Sleep(time.Second)
	proxy.ResetAll()
	waitStart() // again, on the new connection
	close(release)
	wait, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if v, err := a.Wait(wait); err != nil || v != "done" {
		t.Fatalf("the slow task: %q, %v", v, err)
	}
	if v, err := b.Wait(wait); err != nil || v != "later" {
		t.Fatalf("the task held for its countdown: %q, %v", v, err)
	}
	time.Sleep(2 * time.Second) // a second copy would run by now (an idle worker claims every second)
	mu.Lock()
	defer mu.Unlock()
	if runs[a.ID()] != 2 || runs[b.ID()] != 1 {
		t.Errorf("runs: the slow task %d (want 2: cut, then again), the countdown's %d (want 1)", runs[a.ID()], runs[b.ID()])
	}
	app.Forget(t, nil, a.ID(), b.ID())
}
