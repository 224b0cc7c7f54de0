package amqp_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/store/sqlite"
	"github.com/docketq/docket/transport"
)

var flowAdd = docket.NewTask("flow.add1", func(ctx context.Context, n int) (int, error) { return n + 1, nil })

// A step that a join made ready while no process could publish it (the
// process that ended its predecessor died in between) stays in the
// result store's outbox, and the next process to start publishes it.
func TestFlowOutboxPublishedByTheNextProcess(t *testing.T) {
	ctx := context.Background()
	u := freshURL(t, "")
	path := filepath.Join(t.TempDir(), "state.db")
	open := func() *docket.Queue {
		q, err := docket.Open(ctx, u, docket.ResultStore("sqlite:"+path))
		if err != nil {
			t.Fatal(err)
		}
		if err := q.Register(flowAdd); err != nil {
			t.Fatal(err)
		}
		return q
	}

	q1 := open()
	wf, err := docket.EnqueueFlow(ctx, q1, docket.Then(docket.Step(flowAdd, 1), flowAdd))
	if err != nil {
		t.Fatal(err)
	}
	steps, err := wf.Info(ctx)
	if err != nil || len(steps) != 2 {
		t.Fatalf("Info = %+v, %v", steps, err)
	}
	q1.Close()
	first := steps[0]
	if first.Waits != 0 {
		first = steps[1]
	}

	// The first step ends in the store alone, as its worker's last write.
	s, err := sqlite.Open(ctx, sqlite.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	got, err := s.ClaimIDs(ctx, transport.ClaimIDsParams{Now: now, Owner: "gone", LeaseUntil: now.Add(time.Minute), IDs: []string{first.ID}})
	if err != nil || got[0].Delivery == nil {
		t.Fatalf("ClaimIDs = %+v, %v", got, err)
	}
	d := got[0].Delivery
	res, err := s.Finish(ctx, transport.FinishParams{Now: now, Items: []transport.Outcome{{
		Lease: d.Lease(), Queue: d.Queue, Flow: d.FlowID(), State: transport.StateSucceeded, Result: []byte("2"),
	}}})
	if err != nil || res[0].Lost {
		t.Fatalf("Finish = %+v, %v", res, err)
	}
	out, err := s.Outbox(ctx, transport.OutboxParams{Now: now, Limit: 10})
	if err != nil || len(out) != 1 || out[0].ID != wf.ID() || string(out[0].Payload) != "2" {
		t.Fatalf("Outbox = %+v, %v; want the last step, with the first one's result", out, err)
	}
	s.Close()

	q2 := open()
	defer q2.Close()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- q2.Run(runCtx) }()
	defer func() { stop(); <-done }()
	waitCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	n, err := docket.WorkflowOf[int](q2, wf.ID()).Wait(waitCtx)
	if err != nil || n != 3 {
		t.Fatalf("Wait = %d, %v; want 3", n, err)
	}
	s2, err := sqlite.Open(ctx, sqlite.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if out, err := s2.Outbox(ctx, transport.OutboxParams{Now: time.Now(), Limit: 10}); err != nil || len(out) != 0 {
		t.Errorf("Outbox after the run = %+v, %v; want empty", out, err)
	}
}
