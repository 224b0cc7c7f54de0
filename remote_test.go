package docket_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/docketq/docket"
)

// A Remote task is enqueued and waited for like any other; Register makes
// it known to EnqueueByName (arguments checked against its types), and a
// worker here that is given one fails it as not registered.
func TestRemoteTask(t *testing.T) {
	ctx := context.Background()
	q, err := docket.Open(ctx, "memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	add := docket.Remote[[]int, int]("py.add", docket.OnQueue("python"))
	if _, err := q.EnqueueByName(ctx, "py.add", []int{1}); err == nil {
		t.Fatal("EnqueueByName of a Remote task before Register succeeded")
	}
	if err := q.Register(add); err != nil {
		t.Fatal(err)
	}
	if _, err := q.EnqueueByName(ctx, "py.add", "not a list"); !errors.Is(err, docket.ErrInvalid) {
		t.Errorf("EnqueueByName with arguments of the wrong type: %v, want ErrInvalid", err)
	}
	res, err := add.Enqueue(ctx, q, []int{2, 3})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := q.Drain(ctx); err != nil || n != 1 {
		t.Fatalf("Drain: %d attempts, %v", n, err)
	}
	_, err = res.Wait(ctx)
	var te *docket.TaskError
	if !errors.As(err, &te) || te.State != docket.StateFailed || !strings.Contains(te.Message, "not registered") {
		t.Errorf("a Remote task run here: %v, want failed as not registered", err)
	}
	if err := q.Register(docket.Remote[int, int]("bad name!")); !errors.Is(err, docket.ErrInvalid) {
		t.Errorf("Register of a Remote task with a bad name: %v", err)
	}
}
