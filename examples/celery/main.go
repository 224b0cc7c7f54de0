// Command celery is a Go worker for the tasks of a Python Celery app,
// sharing its queue and results: the shop in ./app renders invoices here
// (invoices.render, routed by the shop to the queue shop.go), and this
// program calls the shop's own mail.send, which a Celery worker runs on
// the queue shop, and waits for its result. Each side's worker takes only
// its own queue: a Celery worker fails a task it does not know, and so
// does docket's.
//
//	cd examples/celery/app && python3 -m celery -A shop worker -Q shop  # the shop's worker
//	go run ./examples/celery                                             # Go's worker
//	cd examples/celery/app && python3 order.py 42                        # the shop places an order
//
// DOCKET_URL names the broker (default
// celery+redis://127.0.0.1:6379/0?default_queue=shop, as the shop's
// defaults: default_queue is where a chain's next step goes when it names
// no queue, the shop's task_default_queue); for RabbitMQ use
// celery+amqp://guest:guest@127.0.0.1:5672/?backend=redis://127.0.0.1:6379/0&default_queue=shop
// and set the shop's CELERY_BROKER to amqp://guest:guest@127.0.0.1:5672/.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/docketq/docket"
	_ "github.com/docketq/docket/transport/celery"
)

// The shop's queues: its own (task_default_queue), and the one it routes
// invoices.* to, which this program works on.
const (
	shopQueue = "shop"
	queue     = "shop.go"
)

// Order is what the shop sends: Celery kwargs map onto a struct.
type Order struct {
	ID    int    `json:"order_id"`
	Email string `json:"email"`
}

// Invoice is what the Go worker returns, and what mail.send takes.
type Invoice struct {
	Number string `json:"number"`
	Email  string `json:"email"`
	Total  string `json:"total"`
}

// Sent is mail.send's result.
type Sent struct {
	To      string `json:"sent_to"`
	Subject string `json:"subject"`
}

var (
	renderInvoice = docket.NewTask("invoices.render", func(ctx context.Context, o Order) (Invoice, error) {
		if o.ID <= 0 {
			return Invoice{}, docket.Permanent(fmt.Errorf("no order %d", o.ID))
		}
		return Invoice{Number: fmt.Sprintf("INV-%06d", o.ID), Email: o.Email, Total: fmt.Sprintf("%d.00 EUR", 10*o.ID)}, nil
	}, docket.OnQueue(queue))

	// sendMail runs on the shop's Celery worker: known here by name and
	// types. Its one positional argument is the invoice.
	sendMail = docket.Remote[[1]Invoice, Sent]("mail.send", docket.OnQueue(shopQueue))
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	url := os.Getenv("DOCKET_URL")
	if url == "" {
		url = "celery+redis://127.0.0.1:6379/0?default_queue=" + shopQueue
	}
	if err := run(ctx, url, os.Stdout); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// run works on the shop's queue until ctx ends, after calling mail.send
// once and printing what the shop's worker answered.
func run(ctx context.Context, url string, out io.Writer) error {
	q, err := docket.Open(ctx, url, docket.Queues(map[string]int{queue: 1}))
	if err != nil {
		return err
	}
	defer q.Close()
	if err := q.Register(renderInvoice, sendMail); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	fmt.Fprintf(out, "docket works on the Celery queue %q (%s)\n", queue, q.URL())

	res, err := sendMail.Enqueue(ctx, q, [1]Invoice{{Number: "INV-000007", Email: "grace@example.com", Total: "70.00 EUR"}})
	if err != nil {
		return err
	}
	wait, cancel := context.WithTimeout(ctx, 30*time.Second)
	sent, err := res.Wait(wait)
	cancel()
	switch {
	case err == nil:
		fmt.Fprintf(out, "mail.send ran on Celery: %s to %s\n", sent.Subject, sent.To)
	case ctx.Err() == nil:
		fmt.Fprintf(out, "mail.send: no answer (%v); is the shop's Celery worker running?\n", err)
	}
	return <-done
}
