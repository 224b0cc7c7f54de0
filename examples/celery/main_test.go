package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/docketq/docket/internal/celerytest"
)

// The example end to end against Celery 5.2 on the test Redis: the shop's
// Celery worker, this program, and the shop placing an order.
func TestShop(t *testing.T) {
	app := celerytest.New(t).In("app", "shop")
	app.Forget(t, []string{queue, shopQueue})
	t.Setenv("CELERY_RESULT_EXPIRES", "120") // the ids are the shop's: let the records expire
	stopCelery := app.Worker(t, shopQueue)

	ctx, cancel := context.WithCancel(context.Background())
	var out celerytest.Buffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, app.DocketURL("default_queue="+shopQueue), &out) }()
	defer func() {
		cancel()
		if err := <-done; err != nil && ctx.Err() == nil {
			t.Error(err)
		}
	}()

	order, err := app.Python("order.py", "42").CombinedOutput()
	if err != nil {
		t.Fatalf("order.py: %v\n%s\nCelery's worker said:\n%s", err, order, stopCelery())
	}
	for _, want := range []string{
		`rendered by Go: {"email": "ada@example.com", "number": "INV-000042", "total": "420.00 EUR"}`,
		`rendered by Go, mailed by Python: {"sent_to": "ada@example.com", "subject": "Invoice INV-000042"}`,
	} {
		if !strings.Contains(string(order), want) {
			t.Errorf("order.py printed:\n%s\nwant a line %s", order, want)
		}
	}
	want := "mail.send ran on Celery: Invoice INV-000007 to grace@example.com"
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(out.String(), want); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the Go side printed:\n%s\nwant %s", out.String(), want)
		}
	}
}
