// Package orders is ordinary application code that uses docket; its test
// (orders_test.go) shows how to test such code without a broker and without
// sleeping: an in-memory queue, a fake clock and Drain.
package orders

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/docketq/docket"
)

// Order is what a customer bought.
type Order struct {
	ID     string `json:"id"`
	Amount int    `json:"amount_cents"`
}

// Ledger records charges; a stand-in for a payment provider.
type Ledger struct {
	mu      sync.Mutex
	charged map[string]int
	Down    bool // simulate an outage
}

// Charged returns how often the order was charged.
func (l *Ledger) Charged(id string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.charged[id]
}

// Tasks of the orders service, built around a ledger.
type Tasks struct {
	Charge   *docket.Task[Order, string]
	Reminder *docket.Task[Order, string]
}

// NewTasks defines the tasks; register them with Register.
func NewTasks(l *Ledger) *Tasks {
	return &Tasks{
		Charge: docket.NewTask("orders.charge", func(ctx context.Context, o Order) (string, error) {
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.Down {
				return "", errors.New("payment provider unavailable")
			}
			if l.charged == nil {
				l.charged = map[string]int{}
			}
			l.charged[o.ID]++
			return fmt.Sprintf("charged %d cents", o.Amount), nil
		}, docket.MaxRetries(5), docket.RetryBackoff(docket.Exponential{Base: time.Minute, Max: time.Hour})),
		Reminder: docket.NewTask("orders.review-reminder", func(ctx context.Context, o Order) (string, error) {
			return "asked for a review of " + o.ID, nil
		}),
	}
}

// Register registers the tasks with q.
func (t *Tasks) Register(q *docket.Queue) error { return q.Register(t.Charge, t.Reminder) }

// Place takes an order: charge now (once per order id), ask for a review in
// three days.
func (t *Tasks) Place(ctx context.Context, q *docket.Queue, o Order) error {
	if _, err := t.Charge.Enqueue(ctx, q, o, docket.Unique("charge:"+o.ID, docket.RejectDuplicate)); err != nil {
		return err
	}
	_, err := t.Reminder.Enqueue(ctx, q, o, docket.Countdown(72*time.Hour))
	return err
}
