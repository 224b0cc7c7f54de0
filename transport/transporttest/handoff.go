package transporttest

import (
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/docketq/docket/transport"
)

// flowStep is a workflow step's message for the contract tests.
func flowStep(id, flow, next, queue, name string, slot, waits int, mode transport.FlowMode) transport.Message {
	return transport.Message{
		ID: id, Name: name, Queue: queue, Payload: []byte("1"), MaxAttempts: 1, ResultTTL: time.Hour,
		Flow: &transport.FlowStep{ID: flow, Next: next, Slot: slot, Waits: waits, Mode: mode},
	}
}

// A success's Finish leases the step it made ready to the Handoff's
// owner, in the same write, within the Handoff's bounds: its queues, its
// excluded names and its limit; past a group's gathering step to the
// chord's body.
func testHandoff(t *testing.T, s transport.Transport, f Features) {
	need(t, f.Handoff && f.Workflows && f.ClaimByID, "Handoff")
	claimer := idClaimer(t, s)
	now := base
	ids := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = ulid.Make().String()
		}
		return out
	}
	// A chain a -> b -> c, b in queue "other"; a chain d -> e; a chord of
	// m1 and m2 gathered by g, whose body is f.
	c := ids(3)
	d := ids(2)
	m := ids(4) // body, gather, member 1, member 2
	msgs := []transport.Message{
		flowStep(c[0], c[0], "", "default", "last", -1, 1, 0),
		flowStep(c[1], c[0], c[0], "other", "mid", -1, 1, 0),
		flowStep(c[2], c[0], c[1], "default", "first", -1, 0, 0),
		flowStep(d[0], d[0], "", "default", "last", -1, 1, 0),
		flowStep(d[1], d[0], d[0], "default", "first", -1, 0, 0),
		flowStep(m[0], m[0], "", "default", "body", -1, 1, 0),
		flowStep(m[1], m[0], m[0], "default", "docket.group", -1, 2, transport.FlowArray|transport.FlowPass),
		flowStep(m[2], m[0], m[1], "default", "member", 0, 0, 0),
		flowStep(m[3], m[0], m[1], "default", "member", 1, 0, 0),
	}
	if _, err := s.Enqueue(ctx, transport.EnqueueParams{Now: now, Messages: msgs}); err != nil {
		t.Fatal(err)
	}
	// finishAll claims ids and records their outcomes in one Finish.
	finishAll := func(h *transport.Handoff, ids []string, states ...transport.State) []transport.FinishResult {
		t.Helper()
		got, err := claimer.ClaimIDs(ctx, transport.ClaimIDsParams{Now: now, Owner: "w", LeaseUntil: now.Add(time.Minute), IDs: ids})
		if err != nil {
			t.Fatalf("ClaimIDs(%v): %v", ids, err)
		}
		var items []transport.Outcome
		for i, g := range got {
			if g.Delivery == nil {
				t.Fatalf("ClaimIDs(%s) = %+v", ids[i], g)
			}
			dl := g.Delivery
			items = append(items, transport.Outcome{Lease: dl.Lease(), Queue: dl.Queue, Flow: dl.FlowID(), State: states[i], Result: []byte("2")})
		}
		if h != nil {
			h.Owner, h.LeaseUntil = "next-owner", now.Add(time.Minute)
		}
		res, err := s.Finish(ctx, transport.FinishParams{Now: now, Handoff: h, Items: items})
		if err != nil {
			t.Fatalf("Finish(%v) = %+v, %v", ids, res, err)
		}
		for i, r := range res {
			if r.Lost {
				t.Fatalf("Finish(%s) lost", ids[i])
			}
		}
		return res
	}
	var last transport.FinishResult
	finish := func(id string, h *transport.Handoff) *transport.Delivery {
		t.Helper()
		last = finishAll(h, []string{id}, transport.StateSucceeded)[0]
		return last.Next
	}
	state := func(id string) transport.State {
		t.Helper()
		in, err := s.Get(ctx, transport.GetParams{Now: now, ID: id})
		if err != nil {
			t.Fatal(err)
		}
		return in.State
	}

	if n := finish(c[2], &transport.Handoff{Queues: []string{"default"}, Limit: 1}); n != nil || state(c[1]) != transport.StateReady {
		t.Errorf("a step of a queue the Handoff leaves out: handed %+v, state %v; want left ready", n, state(c[1]))
	}
	if last.FlowEnded {
		t.Errorf("FlowEnded after a first step's success; its workflow goes on")
	}
	if n := finish(c[1], &transport.Handoff{Queues: []string{"default"}, Exclude: []string{"last"}, Limit: 1}); n != nil || state(c[0]) != transport.StateReady {
		t.Errorf("a step of an excluded name: handed %+v, state %v; want left ready", n, state(c[0]))
	}
	if n := finish(d[1], &transport.Handoff{Queues: []string{"default"}, Limit: 0}); n != nil || state(d[0]) != transport.StateReady {
		t.Errorf("with a limit of 0: handed %+v; want nothing", n)
	}
	if n := finish(m[2], &transport.Handoff{Queues: []string{"default"}, Limit: 1}); n != nil || state(m[0]) != transport.StateWaiting {
		t.Errorf("a member before the last: handed %+v, body %v; want the body waiting", n, state(m[0]))
	}
	n := finish(m[3], &transport.Handoff{Queues: []string{"default"}, Limit: 1})
	switch {
	case n == nil || n.ID != m[0]:
		t.Fatalf("the last member's end handed %+v; want the chord's body", n)
	case n.Owner != "next-owner" || n.Attempt != 1 || string(n.Payload) != "[2,2]" || n.FlowID() != m[0]:
		t.Errorf("handed body = owner %q attempt %d payload %s flow %q", n.Owner, n.Attempt, n.Payload, n.FlowID())
	case state(m[0]) != transport.StateRunning:
		t.Errorf("handed body is %v, want running", state(m[0]))
	}
	// Without a Handoff nothing is leased (the default).
	if n := finish(c[0], nil); n != nil || !last.FlowEnded {
		t.Errorf("without a Handoff: %+v, FlowEnded %v; want nothing handed, the workflow ended", n, last.FlowEnded)
	}

	// A success and a failure of one workflow in one Finish: the step
	// the success made ready was cancelled by the failure, and is not
	// handed over. Its workflow: members a (then a2) and b, gathered by
	// the body.
	w := ids(4) // body, a2, a, b
	msgs = []transport.Message{
		flowStep(w[0], w[0], "", "default", "body", -1, 2, transport.FlowArray),
		flowStep(w[1], w[0], w[0], "default", "a2", 0, 1, 0),
		flowStep(w[2], w[0], w[1], "default", "a", -1, 0, 0),
		flowStep(w[3], w[0], w[0], "default", "b", 1, 0, 0),
	}
	if _, err := s.Enqueue(ctx, transport.EnqueueParams{Now: now, Messages: msgs}); err != nil {
		t.Fatal(err)
	}
	res := finishAll(&transport.Handoff{Queues: []string{"default"}, Limit: 2}, []string{w[2], w[3]}, transport.StateSucceeded, transport.StateFailed)
	if res[0].Next != nil || state(w[1]) != transport.StateCancelled || state(w[0]) != transport.StateFailed {
		t.Errorf("a success before a failure of its workflow in one Finish: handed %+v, next %v, workflow %v; want nothing handed, cancelled, failed",
			res[0].Next, state(w[1]), state(w[0]))
	}
}
