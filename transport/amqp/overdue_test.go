package amqp_test

import (
	"context"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/docketq/docket/transport"
	"github.com/docketq/docket/transport/amqp"
)

// A task the result store holds as ready but RabbitMQ no longer holds (a
// message lost by the broker: here, recorded in the store and never
// published) is published again once it is overdue, but only while its
// queue holds no ready message; it then runs once.
func TestLostTaskPublishedAgain(t *testing.T) {
	g := &gatedStore{}
	tr := openGiveUp(t, g)
	ctx := context.Background()
	// A worker consumes the queue; nothing is there yet.
	claimUntil(t, tr, func(res transport.ClaimResult) bool { return len(res.Deliveries) == 0 })
	lost := newMsg(ulid.Make().String())
	old := time.Now().Add(-2 * time.Minute)
	if _, err := g.Store.Enqueue(ctx, transport.EnqueueParams{Now: old, Messages: []transport.Message{lost}}); err != nil {
		t.Fatal(err)
	}
	// A backlog in the queue (more than the worker's prefetch): nothing
	// is taken for lost.
	var waiting []transport.Message
	for range 40 {
		waiting = append(waiting, newMsg(ulid.Make().String()))
	}
	if _, err := tr.Enqueue(ctx, transport.EnqueueParams{Now: time.Now(), Messages: waiting}); err != nil {
		t.Fatal(err)
	}
	if n, err := amqp.ResendOverdue(ctx, tr, time.Minute); err != nil || n != 0 {
		t.Fatalf("with ready messages in the queue: %d published again, %v; want 0", n, err)
	}
	// The queue drained: the lost task is found, unless it is overdue by
	// less than asked.
	var ids []string
	for _, m := range waiting {
		ids = append(ids, m.ID)
	}
	runAll(t, tr, ids...)
	if n, err := amqp.ResendOverdue(ctx, tr, 3*time.Minute); err != nil || n != 0 {
		t.Fatalf("a task overdue by less than the limit: %d published again, %v; want 0", n, err)
	}
	if n, err := amqp.ResendOverdue(ctx, tr, time.Minute); err != nil || n != 1 {
		t.Fatalf("an idle queue: %d published again, %v; want 1", n, err)
	}
	runAll(t, tr, lost.ID)
	if n, err := amqp.ResendOverdue(ctx, tr, time.Minute); err != nil || n != 0 {
		t.Fatalf("after it ran: %d published again, %v; want 0", n, err)
	}
}

// runAll claims until each task of ids was delivered, as its first
// attempt, and records their successes; no other task may be delivered.
func runAll(t *testing.T, tr transport.Transport, ids ...string) {
	t.Helper()
	left := map[string]bool{}
	for _, id := range ids {
		left[id] = true
	}
	for deadline := time.Now().Add(30 * time.Second); len(left) > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d tasks not delivered within 30 s", len(left))
		}
		now := time.Now()
		res, err := tr.Claim(context.Background(), transport.ClaimParams{Now: now, Owner: "w", Queues: []string{"default"}, Limit: 10, LeaseUntil: now.Add(time.Minute)})
		if err != nil {
			t.Fatalf("Claim: %v", err)
		}
		var outs []transport.Outcome
		for _, d := range res.Deliveries {
			if !left[d.ID] || d.Attempt != 1 {
				t.Fatalf("delivered %s as attempt %d, not one of the tasks left to run", d.ID, d.Attempt)
			}
			delete(left, d.ID)
			outs = append(outs, transport.Outcome{Lease: d.Lease(), Queue: d.Queue, State: transport.StateSucceeded})
		}
		if len(outs) > 0 {
			if _, err := tr.Finish(context.Background(), transport.FinishParams{Now: now, Items: outs}); err != nil {
				t.Fatal(err)
			}
		}
	}
}
