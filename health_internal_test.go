package docket

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// A loop that stops coming round makes the worker wedged once twice the
// loop's call bound has passed, and not before.
func TestCheckLiveFindsAStaleLoop(t *testing.T) {
	q, err := Open(context.Background(), "memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Register(NewTask("t", func(ctx context.Context, n int) (int, error) { return n, nil })); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- q.Run(ctx) }()
	defer func() { cancel(); <-ran }()
	var w *worker
	for deadline := time.Now().Add(time.Minute); w == nil; time.Sleep(time.Millisecond) {
		if w = q.running(); w == nil && time.Now().After(deadline) {
			t.Fatal("Run did not start")
		}
	}
	if err := q.CheckLive(); err != nil {
		t.Fatalf("a worker that just started: %v", err)
	}
	limit := 2 * w.loopCall()
	if err := w.wedged(time.Now().Add(limit / 2)); err != nil {
		t.Fatalf("within the bound: %v", err)
	}
	err = w.wedged(time.Now().Add(limit + time.Minute))
	if !errors.Is(err, ErrWedged) || !strings.Contains(err.Error(), "has not come round") {
		t.Fatalf("past the bound: %v, want ErrWedged", err)
	}
}
