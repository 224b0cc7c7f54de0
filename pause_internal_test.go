package docket

import (
	"context"
	"slices"
	"testing"
	"time"
)

// A running worker notices a pause by itself (pauseLoop) and stops
// starting the queue's tasks, while other queues run; a resume restarts
// them.
func TestPauseReachesRunningWorker(t *testing.T) {
	ctx := context.Background()
	q, err := Open(ctx, "memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	ran := make(chan int, 10)
	task := NewTask("p.task", func(ctx context.Context, n int) (int, error) { ran <- n; return n, nil })
	other := NewTask("p.other", func(ctx context.Context, n int) (int, error) { return n, nil }, OnQueue("other"))
	q.Register(task, other)
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- q.Run(wctx) }()
	defer func() { stop(); <-done }()

	r1, _ := task.Enqueue(ctx, q, 1)
	if _, err := r1.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	<-ran
	if err := q.PauseQueue(ctx, DefaultQueue); err != nil {
		t.Fatal(err)
	}
	var r2 *Result[int]
	w := q.running()
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Contains(w.pausedNow(), DefaultQueue) {
		if time.Now().After(deadline) {
			t.Fatal("the running worker did not notice the pause")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A task of the other queue runs before and after the paused one is
	// enqueued: the claim that took the first began after the pause was
	// read, and the one that took the second after the paused task was
	// enqueued.
	for i, n := range []int{3, 4} {
		o, _ := other.Enqueue(ctx, q, n)
		if _, err := o.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			r2, _ = task.Enqueue(ctx, q, 2)
		}
	}
	select {
	case n := <-ran:
		t.Fatalf("task %d of the paused queue ran", n)
	default:
	}
	if in, _ := r2.Info(ctx); in.State != StateReady {
		t.Fatalf("paused task is %v, want ready", in.State)
	}
	if err := q.ResumeQueue(ctx, DefaultQueue); err != nil {
		t.Fatal(err)
	}
	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := r2.Wait(wait); err != nil {
		t.Fatalf("after resume: %v", err)
	}
}
