package amqp

import (
	"strings"
	"testing"
	"time"

	"github.com/docketq/docket/transport"
)

// With RabbitMQ alone, a retry or release of a task whose cancel this
// process received ends it cancelled instead of publishing it again; other
// outcomes, and tasks nobody cancelled, are left as they are.
func TestPendingCancelEndsRetryAndRelease(t *testing.T) {
	now := time.Now()
	tr := &alone{broker: &broker{revoked: map[string]time.Time{"rel": now.Add(time.Hour), "retry": now.Add(time.Hour), "ok": now.Add(time.Hour)}}}
	items := []transport.Outcome{
		{Lease: transport.Lease{ID: "rel", Attempt: 1, Owner: "w"}, State: transport.StateReady},
		{Lease: transport.Lease{ID: "retry", Attempt: 2, Owner: "w"}, State: transport.StateScheduled, RunAt: now.Add(time.Minute), Error: "boom"},
		{Lease: transport.Lease{ID: "ok", Attempt: 1, Owner: "w"}, State: transport.StateSucceeded, Result: []byte("1")},
		{Lease: transport.Lease{ID: "other", Attempt: 1, Owner: "w"}, State: transport.StateReady},
	}
	orig := append([]transport.Outcome(nil), items...)
	got := tr.withPendingCancels(items)
	for i := range items {
		if items[i].State != orig[i].State || items[i].Error != orig[i].Error {
			t.Fatalf("the caller's outcomes were modified: %+v", items[i])
		}
	}
	if o := got[0]; o.State != transport.StateCancelled || o.Error != cancelledAtRelease || o.Lease != orig[0].Lease {
		t.Errorf("release with a cancel pending: %+v", o)
	}
	if o := got[1]; o.State != transport.StateCancelled || !o.RunAt.IsZero() || !strings.Contains(o.Error, "cancelled") || !strings.Contains(o.Error, "boom") {
		t.Errorf("retry with a cancel pending: %+v", o)
	}
	if o := got[2]; o.State != transport.StateSucceeded || string(o.Result) != "1" {
		t.Errorf("success with a cancel pending: %+v", o)
	}
	if o := got[3]; o.State != transport.StateReady || o.Error != "" {
		t.Errorf("release without a cancel: %+v", o)
	}
	if got := tr.withPendingCancels(orig[2:]); &got[0] != &orig[2] {
		t.Error("outcomes needing no change were copied")
	}
}
