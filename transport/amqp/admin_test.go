package amqp_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/docketq/docket"
)

// RabbitMQ alone counts each queue's ready messages from the broker, and
// refuses the rest of the operations API with an error naming the result
// store.
func TestAloneStatsFromBroker(t *testing.T) {
	ctx := context.Background()
	u := freshURL(t, "")
	q, err := docket.Open(ctx, u, docket.Queues(map[string]int{"default": 1, "mail": 1}))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	for i := range 3 {
		if _, err := q.EnqueueJSON(ctx, "t.any", []byte(`{}`)); err != nil {
			t.Fatal(i, err)
		}
	}
	st, err := q.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]int64{}
	for _, qs := range st.Queues {
		got[qs.Name] = qs.Counts
	}
	if got["default"]["ready"] != 3 || got["mail"]["ready"] != 0 || len(got["default"]) != 1 {
		t.Fatalf("stats = %v; want 3 ready in default, 0 in mail, and no other count", got)
	}
	_, err = q.Search(ctx, docket.SearchOptions{})
	if !errors.Is(err, docket.ErrUnsupported) || !strings.Contains(err.Error(), "result store") {
		t.Fatalf("Search alone: %v; want ErrUnsupported naming the result store", err)
	}
}
