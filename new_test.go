package docket_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/store/sqlite"
	"github.com/docketq/docket/transport"
)

// minimal exposes only the required methods of a backend: no schedules,
// listing, retention, notifications or transactions.
type minimal struct{ transport.Transport }

func TestNewWithMinimalBackend(t *testing.T) {
	t.Parallel()
	s, err := sqlite.Open(bg, sqlite.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	q, err := docket.New(minimal{s})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	add := docket.NewTask("add", func(_ context.Context, a [2]int) (int, error) { return a[0] + a[1], nil })
	if err := q.Register(add); err != nil {
		t.Fatal(err)
	}
	err = add.Schedule(q, "tick", docket.Every(time.Minute), [2]int{1, 2})
	if !errors.Is(err, docket.ErrUnsupported) {
		t.Fatalf("Schedule on a backend without schedules: %v, want ErrUnsupported", err)
	}
	if _, err := q.List(bg, docket.ListOptions{}); !errors.Is(err, docket.ErrUnsupported) {
		t.Fatalf("List: %v, want ErrUnsupported", err)
	}
	r, err := add.Enqueue(bg, q, [2]int{2, 3})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := q.Drain(bg); n != 1 || err != nil {
		t.Fatalf("Drain = %d, %v; want 1 task run", n, err)
	}
	if v, err := r.Wait(bg); v != 5 || err != nil {
		t.Fatalf("Wait = %v, %v", v, err)
	}
	// Run works too, woken by the Queue's own writes.
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	r, err = add.Enqueue(bg, q, [2]int{4, 5})
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(bg, 30*time.Second)
	defer wcancel()
	if v, err := r.Wait(wctx); v != 9 || err != nil {
		t.Fatalf("Wait under Run = %v, %v", v, err)
	}
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
}

func TestNewRefusesResultStoreOption(t *testing.T) {
	t.Parallel()
	s, err := sqlite.Open(bg, sqlite.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := docket.New(s, docket.ResultStore("memory:")); !errors.Is(err, docket.ErrInvalid) {
		t.Fatalf("New with ResultStore: %v", err)
	}
	if _, err := docket.New(nil); !errors.Is(err, docket.ErrInvalid) {
		t.Fatalf("New(nil): %v", err)
	}
}
