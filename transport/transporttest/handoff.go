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
	finish := func(id string, h *transport.Handoff) *transport.Delivery {
		t.Helper()
		got, err := claimer.ClaimIDs(ctx, transport.ClaimIDsParams{Now: now, Owner: "w", LeaseUntil: now.Add(time.Minute), IDs: []string{id}})
		if err != nil || got[0].Delivery == nil {
			t.Fatalf("ClaimIDs(%s) = %+v, %v", id, got, err)
		}
		dl := got[0].Delivery
		if h != nil {
			h.Owner, h.LeaseUntil = "next-owner", now.Add(time.Minute)
		}
		res, err := s.Finish(ctx, transport.FinishParams{Now: now, Handoff: h, Items: []transport.Outcome{{
			Lease: dl.Lease(), Queue: dl.Queue, Flow: dl.FlowID(), State: transport.StateSucceeded, Result: []byte("2"),
		}}})
		if err != nil || res[0].Lost {
			t.Fatalf("Finish(%s) = %+v, %v", id, res, err)
		}
		return res[0].Next
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
	if n := finish(c[0], nil); n != nil {
		t.Errorf("without a Handoff: %+v", n)
	}
}
