package orders

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/dockettest"
)

func TestPlaceOrder(t *testing.T) {
	ctx := context.Background()
	q, clock := dockettest.Open(t) // "memory:" and a fake clock
	ledger := &Ledger{}
	tasks := NewTasks(ledger)
	if err := tasks.Register(q); err != nil {
		t.Fatal(err)
	}

	order := Order{ID: "o-1", Amount: 1999}
	if err := tasks.Place(ctx, q, order); err != nil {
		t.Fatal(err)
	}
	dockettest.RequireEnqueued(t, q, tasks.Charge, order)
	dockettest.RequireEnqueued(t, q, tasks.Reminder, order)

	// Placing the same order twice charges once.
	if err := tasks.Place(ctx, q, order); !errors.Is(err, docket.ErrDuplicate) {
		t.Fatalf("second Place = %v, want ErrDuplicate", err)
	}

	// The provider is down: the charge fails and is retried a minute later.
	ledger.Down = true
	dockettest.Drain(t, q)
	if ledger.Charged("o-1") != 0 {
		t.Fatal("charged during an outage")
	}
	ledger.Down = false
	dockettest.Advance(t, q, clock, time.Minute)
	if ledger.Charged("o-1") != 1 {
		t.Fatalf("charged %d times", ledger.Charged("o-1"))
	}

	// The review reminder waits three days.
	dockettest.Advance(t, q, clock, 71*time.Hour)
	dockettest.RequireEnqueued(t, q, tasks.Reminder, order)
	dockettest.Advance(t, q, clock, time.Hour)
	dockettest.RequireNotEnqueued(t, q, tasks.Reminder)
}
