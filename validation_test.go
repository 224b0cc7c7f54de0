package docket_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/dockettest"
)

// Bad input fails at enqueue with ErrInvalid and a reason, and nothing is
// stored.
func TestEnqueueRefusesBadInput(t *testing.T) {
	t.Parallel()
	q, clock := dockettest.Open(t)
	send := docket.NewTask("validate.email", func(_ context.Context, e Email) (int, error) { return 0, nil })
	q.Register(send)

	many := make([]docket.TaskOption, 10000)
	for i := range many {
		many[i] = docket.Header(fmt.Sprintf("h%d", i), "v")
	}
	deep := json.RawMessage(strings.Repeat("[", 20000) + strings.Repeat("]", 20000))
	for _, c := range []struct {
		what string
		err  func() error
		want string
	}{
		{"10,000 headers", func() error { _, err := send.Enqueue(bg, q, Email{}, many...); return err }, "at most 64 headers"},
		{"At in the year 9999", func() error {
			_, err := send.Enqueue(bg, q, Email{}, docket.ETA(time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)))
			return err
		}, "100 years"},
		{"ExpiresAt in the year 9999", func() error {
			_, err := send.Enqueue(bg, q, Email{}, docket.ExpiresAt(time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)))
			return err
		}, "100 years"},
		{"nesting no decoder takes", func() error { _, err := q.EnqueueByName(bg, "validate.email", deep); return err }, "depth"},
		{"arguments of the wrong shape", func() error { _, err := q.EnqueueByName(bg, "validate.email", []int{1, 2}); return err }, "docket_test.Email"},
		{"a string for a struct", func() error {
			_, err := q.EnqueueByName(bg, "validate.email", json.RawMessage(`"ann@example.com"`))
			return err
		}, "do not decode"},
	} {
		err := c.err()
		if !errors.Is(err, docket.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want ErrInvalid saying %q", c.what, err, c.want)
		}
	}
	all, err := q.List(bg, docket.ListOptions{})
	if err != nil || len(all) != 0 {
		t.Fatalf("%d tasks stored after refused enqueues (%v)", len(all), err)
	}
	// Within bounds, the same calls pass.
	if _, err := send.Enqueue(bg, q, Email{}, docket.ETA(clock.Now().AddDate(50, 0, 0))); err != nil {
		t.Fatalf("At in 50 years: %v", err)
	}
	if _, err := q.EnqueueByName(bg, "validate.email", map[string]string{"to": "ann@example.com"}); err != nil {
		t.Fatalf("EnqueueByName with the right shape: %v", err)
	}
}
