package transporttest

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/docketq/docket/transport"
)

// Overdue lists the tasks of the asked queues that should have a message
// at a broker and are long past their time: scheduled or ready before
// Before, or running under a lease that ended before it; earliest first,
// up to the limit, and never a finished task, however many overdue tasks
// of other queues come first.
func testOverdue(t *testing.T, s transport.Transport, f Features) {
	need(t, f.Overdue && f.ClaimByID, "Overdue")
	od, ok := s.(transport.Overdue)
	if !ok {
		t.Fatalf("%T does not implement transport.Overdue", s)
	}
	enqueue(t, s, base,
		msg("a"),
		msg("b", func(m *transport.Message) { m.ETA = base.Add(time.Minute) }),
		msg("c", func(m *transport.Message) { m.Queue = "other" }),
		msg("d"), msg("e"))
	// A backlog of another queue, all past its time, ahead of them.
	var busy []transport.Message
	for i := range 300 {
		busy = append(busy, msg(fmt.Sprintf("busy%03d", i), func(m *transport.Message) {
			m.Queue, m.ETA = "busy", base.Add(-time.Hour)
		}))
	}
	enqueue(t, s, base.Add(-2*time.Hour), busy...)
	res, err := idClaimer(t, s).ClaimIDs(ctx, transport.ClaimIDsParams{Now: base, Owner: "w", LeaseUntil: base.Add(30 * time.Second), IDs: []string{"d", "e"}})
	if err != nil || len(res) != 2 || res[0].Delivery == nil || res[1].Delivery == nil {
		t.Fatalf("ClaimIDs(d, e): %+v, %v", res, err)
	}
	finish(t, s, base, transport.Outcome{Lease: res[1].Delivery.Lease(), Queue: "default", State: transport.StateSucceeded})
	overdue := func(before time.Duration, limit int, queues ...string) []string {
		t.Helper()
		got, err := od.Overdue(ctx, transport.OverdueParams{Now: base.Add(before), Before: base.Add(before), Queues: queues, Limit: limit})
		if err != nil {
			t.Fatalf("Overdue: %v", err)
		}
		var out []string
		for _, m := range got {
			if m.Name != "t.noop" || string(m.Payload) != "{}" {
				t.Fatalf("Overdue returned %+v, not the task as enqueued", m)
			}
			out = append(out, m.ID)
		}
		return out
	}
	for _, c := range []struct {
		before time.Duration
		limit  int
		queues []string
		want   []string
	}{
		{0, 10, []string{"default"}, nil},                                   // nothing is due before its own time
		{time.Second, 10, []string{"default"}, []string{"a"}},               // d's lease lives, b is not due
		{2 * time.Minute, 10, []string{"default"}, []string{"a", "d", "b"}}, // earliest first; e finished
		{2 * time.Minute, 2, []string{"default"}, []string{"a", "d"}},
		{time.Second, 10, []string{"default", "other"}, []string{"a", "c"}},
		{2 * time.Minute, 10, nil, nil},
	} {
		got := overdue(c.before, c.limit, c.queues...)
		if c.before == time.Second && len(c.queues) == 2 {
			slices.Sort(got) // a and c are due at the same time
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("Overdue(before base+%v, limit %d, queues %v) = %v, want %v", c.before, c.limit, c.queues, got, c.want)
		}
	}
}
