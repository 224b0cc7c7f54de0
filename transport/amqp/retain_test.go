package amqp_test

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/transport"
	"github.com/docketq/docket/transport/amqp"
)

// waitUntil polls cond, collecting garbage before each look (the runtime
// runs the cleanups of unreachable handles after a collection), until it
// holds or 20 s passed.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		runtime.GC()
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting: %s", what)
		}
	}
}

// openAlone returns a transport of RabbitMQ alone on a fresh prefix and
// the Queue on it, closed when the test ends.
func openAlone(t *testing.T) (transport.Transport, *docket.Queue) {
	t.Helper()
	tr, err := amqp.New(bg, amqp.Config{URL: freshURL(t, "")})
	if err != nil {
		t.Fatal(err)
	}
	q, err := docket.New(tr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return tr, q
}

// With RabbitMQ alone a producer keeps a task while a handle on its result
// is reachable, and otherwise only among the last RememberTasks it
// enqueued: enqueueing many more than that, handles dropped, leaves it
// keeping no more; a handle held across them still gets its result; once
// that handle is garbage, its task is forgotten too.
func TestProducerKeepsWhatCanBeAskedFor(t *testing.T) {
	tr, q := openAlone(t)
	task := docket.NewTask("keep.double", func(ctx context.Context, n int) (int, error) { return 2 * n, nil })
	q.Register(task)
	held, err := task.Enqueue(bg, q, 21)
	if err != nil {
		t.Fatal(err)
	}
	heldID := held.ID()
	var oldID, lastID string
	args := make([]int, 1000)
	for left := amqp.RememberTasks + 2000; left > 0; left -= len(args) {
		rs, err := task.EnqueueMany(bg, q, args[:min(left, len(args))])
		if err != nil {
			t.Fatal(err)
		}
		if oldID == "" {
			oldID = rs[0].ID()
		}
		lastID = rs[len(rs)-1].ID()
	}
	waitUntil(t, "the producer to keep at most RememberTasks+1 tasks", func() bool { return amqp.Kept(tr) <= amqp.RememberTasks+1 })
	if _, err := q.Info(bg, oldID); !errors.Is(err, docket.ErrNotFound) {
		t.Fatalf("an old task without a handle: %v; want ErrNotFound", err)
	}
	for _, id := range []string{heldID, lastID} {
		if _, err := q.Info(bg, id); err != nil {
			t.Fatalf("task %s: %v; want it kept", id, err)
		}
	}

	ctx, stop := context.WithCancel(bg)
	defer stop()
	go q.Run(ctx)
	wctx, cancel := context.WithTimeout(bg, time.Minute)
	defer cancel()
	if v, err := held.Wait(wctx); err != nil || v != 42 {
		t.Fatalf("Wait on the held handle = %d, %v; want 42", v, err)
	}
	runtime.KeepAlive(held)
	held = nil
	waitUntil(t, "the task to be forgotten once its handle is garbage", func() bool {
		_, err := q.Info(bg, heldID)
		return errors.Is(err, docket.ErrNotFound)
	})
	if n := amqp.Kept(tr); n > amqp.RememberTasks {
		t.Fatalf("kept %d tasks; want at most %d", n, amqp.RememberTasks)
	}
}

// A task that ignores its result names no reply queue: a worker in
// another process runs it and reports nothing, its producer keeps nothing
// of it, and Info and Wait say so at once instead of waiting forever.
func TestIgnoreResultIsNotReported(t *testing.T) {
	url := freshURL(t, "")
	var ran atomic.Int32
	task := docket.NewTask("fire.forget", func(ctx context.Context, n int) (int, error) {
		ran.Add(1)
		return n, nil
	}, docket.IgnoreResult())
	producer, err := docket.Open(bg, url)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	worker, err := docket.Open(bg, url)
	if err != nil {
		t.Fatal(err)
	}
	defer worker.Close()
	producer.Register(task)
	worker.Register(task)
	r, err := task.Enqueue(bg, producer, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Info(bg); !errors.Is(err, docket.ErrNotFound) {
		t.Fatalf("Info: %v; want ErrNotFound", err)
	}
	ctx, stop := context.WithCancel(bg)
	defer stop()
	go worker.Run(ctx)
	for deadline := time.Now().Add(30 * time.Second); ran.Load() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the task did not run")
		}
	}
	wctx, cancel := context.WithTimeout(bg, 5*time.Second)
	defer cancel()
	if _, err := r.Wait(wctx); !errors.Is(err, docket.ErrNotFound) {
		t.Fatalf("Wait: %v; want ErrNotFound at once", err)
	}
}

// The handles Enqueue returns hold their tasks from the start: a batch
// larger than the ring of recent tasks keeps every task while its handles
// live, and a task enqueued again with the same id (the documented retry
// after ErrOutcomeUnknown) is kept while either handle lives.
func TestProducerKeepsBigBatchesAndRepeatedIDs(t *testing.T) {
	_, q := openAlone(t)
	task := docket.NewTask("keep.batch", func(ctx context.Context, n int) (int, error) { return n, nil })
	q.Register(task)
	first, err := task.Enqueue(bg, q, 1, docket.TaskID("again-1"))
	if err != nil {
		t.Fatal(err)
	}
	second, err := task.Enqueue(bg, q, 2, docket.TaskID("again-1"))
	if err != nil {
		t.Fatal(err)
	}
	runtime.KeepAlive(second)
	second = nil
	rs, err := task.EnqueueMany(bg, q, make([]int, amqp.RememberTasks+50))
	if err != nil {
		t.Fatal(err)
	}
	// The cleanups of garbage handles run after a collection, on their
	// own goroutine.
	runtime.GC()
	time.Sleep(200 * time.Millisecond)
	runtime.GC()
	time.Sleep(200 * time.Millisecond)
	for _, r := range []*docket.Result[int]{first, rs[0], rs[len(rs)-1]} {
		if _, err := r.Info(bg); err != nil {
			t.Fatalf("task %s, its handle held: %v", r.ID(), err)
		}
	}
	runtime.KeepAlive(rs)
	runtime.KeepAlive(first)
}
