package docket

import (
	"context"
	"testing"
	"time"

	"github.com/docketq/docket/transport"
)

// A step the backend handed to a worker that began to stop meanwhile goes
// back at once, its attempt not consumed, and the room reserved for it is
// freed.
func TestHandoffAtStopGoesBack(t *testing.T) {
	ctx := context.Background()
	q, err := Open(ctx, "memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	add := NewTask("h.add", func(ctx context.Context, n int) (int, error) { return n + 1, nil })
	if err := q.Register(add); err != nil {
		t.Fatal(err)
	}
	wf, err := EnqueueFlow(ctx, q, Then(Step(add, 1), add))
	if err != nil {
		t.Fatal(err)
	}
	w := newWorker(q)
	now := time.Now()
	res, err := q.t.Claim(ctx, transport.ClaimParams{Now: now, Owner: w.owner, Queues: []string{DefaultQueue}, Limit: 10, LeaseUntil: now.Add(time.Minute)})
	if err != nil || len(res.Deliveries) != 1 {
		t.Fatalf("Claim = %+v, %v", res, err)
	}
	d := res.Deliveries[0]
	items := []transport.Outcome{{Lease: d.Lease(), Queue: d.Queue, Flow: d.FlowID(), State: transport.StateSucceeded, Result: []byte("2")}}
	w.held = 1 // the finished step's place, passed on to the next
	h := w.reserveHandoff([]finishReq{{out: items[0], passed: true}})
	if h == nil || h.Limit != 1 || w.heldCount() != 1 {
		t.Fatalf("reserveHandoff = %+v, held %d; want room for one step", h, w.heldCount())
	}
	h.LeaseUntil = now.Add(time.Minute)
	out, err := q.t.Finish(ctx, transport.FinishParams{Now: now, Items: items, Handoff: h})
	if err != nil || out[0].Next == nil || out[0].Next.ID != wf.ID() {
		t.Fatalf("Finish = %+v, %v; want the next step handed over", out, err)
	}
	w.mu.Lock()
	w.workClosed = true // the stop sequence began during the write
	w.mu.Unlock()
	w.takeHandoffs(h, out)
	if n := w.heldCount(); n != 0 || len(w.work) != 0 {
		t.Errorf("held %d, %d waiting to run; want nothing", n, len(w.work))
	}
	in, err := q.t.Get(ctx, transport.GetParams{Now: time.Now(), ID: wf.ID()})
	if err != nil || in.State != transport.StateReady || in.Attempt != 0 {
		t.Fatalf("the handed step: %v after %d attempts, %v; want ready, no attempt used", in.State, in.Attempt, err)
	}
}
