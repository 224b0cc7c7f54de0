package redis_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/chaos"
)

// An enqueue whose reply is lost reports ErrOutcomeUnknown with the task's
// id, never an error that reads as "nothing stored"; retrying it with that
// id finds the stored task instead of storing a second one.
func TestEnqueueOutcomeUnknown(t *testing.T) {
	t.Parallel()
	base, err := url.Parse(freshURL(t))
	if err != nil {
		t.Fatal(err)
	}
	p, err := chaos.Start(base.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { p.SetMode(chaos.Pass); p.Close() }()
	through := *base
	through.Host = p.Addr()
	ctx := context.Background()
	q, err := docket.Open(ctx, through.String())
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	task := docket.NewTask("outcome.unknown", func(_ context.Context, n int) (int, error) { return n, nil })
	q.Register(task)

	// The request leaves; the network holds it, and the caller gives up.
	p.SetMode(chaos.Blackhole)
	cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = task.Enqueue(cctx, q, 7)
	cancel()
	var ou *docket.OutcomeUnknownError
	if !errors.As(err, &ou) || !errors.Is(err, docket.ErrOutcomeUnknown) || len(ou.IDs) != 1 || !strings.Contains(err.Error(), ou.IDs[0]) {
		t.Fatalf("enqueue with its reply lost: %v", err)
	}
	if errors.Is(err, docket.ErrBusy) {
		t.Fatalf("an unknown outcome reads as ErrBusy (nothing stored): %v", err)
	}
	p.SetMode(chaos.Pass) // the held request may reach Redis now
	p.ResetAll()

	// The retry, with the same id, either stores the task or finds it.
	id := ou.IDs[0]
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err = task.Enqueue(ctx, q, 7, docket.TaskID(id))
		var dup *docket.DuplicateError
		if err == nil || errors.As(err, &dup) && dup.ExistingID == id {
			break
		}
		if !errors.Is(err, docket.ErrOutcomeUnknown) || time.Now().After(deadline) {
			t.Fatalf("retry with the same id: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// One task with that id, found through a direct connection.
	direct, err := docket.Open(ctx, base.String())
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	info, err := direct.Info(ctx, id)
	if err != nil || info.ID != id {
		t.Fatalf("Info(%s) = %+v, %v", id, info, err)
	}
	all, err := direct.List(ctx, docket.ListOptions{})
	if err != nil || len(all) != 1 {
		t.Fatalf("List = %d tasks, %v; want exactly the one", len(all), err)
	}
}
