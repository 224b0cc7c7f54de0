package docket_test

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/longtest"
	"github.com/docketq/docket/store/sqlite"
	"github.com/docketq/docket/transport"
)

// timedStore times each write of a bulk action.
type timedStore struct {
	*sqlite.Store
	mu    sync.Mutex
	spans []time.Duration
}

func (s *timedStore) Act(ctx context.Context, p transport.ActParams) (transport.ActResult, error) {
	t0 := time.Now()
	res, err := s.Store.Act(ctx, p)
	s.mu.Lock()
	s.spans = append(s.spans, time.Since(t0))
	s.mu.Unlock()
	return res, err
}

// A bulk retry by filter on SQLite works in bounded batches: each write
// changes at most 100 tasks, and the memory it holds does not grow with
// the number of tasks (2,000; 20,000 with DOCKET_TEST_LONG=1 and 100,000
// with DOCKET_TEST_LONG=soak). The figures are
// logged: the longest write is how long workers can wait for the writer.
func TestBulkRetryIsBounded(t *testing.T) {
	n := longtest.Pick(2_000, 20_000)
	if longtest.Soak() {
		n = 100_000
	}
	ctx := context.Background()
	st, err := sqlite.Open(ctx, sqlite.Options{Path: t.TempDir() + "/bulk.db"})
	if err != nil {
		t.Fatal(err)
	}
	ts := &timedStore{Store: st}
	q, err := docket.New(ts)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	// n tasks that expired before they started: a retry applies to them.
	now := time.Now()
	for i := 0; i < n; i += 1000 {
		msgs := make([]transport.Message, 0, 1000)
		for j := i; j < min(n, i+1000); j++ {
			msgs = append(msgs, transport.Message{ID: fmt.Sprintf("b%07d", j), Name: "bulk", Queue: "default", Payload: []byte(`{"n":1}`),
				MaxAttempts: 1, ResultTTL: time.Hour, Created: now, Expires: now.Add(-time.Millisecond)})
		}
		if _, err := st.Enqueue(ctx, transport.EnqueueParams{Now: now, Messages: msgs}); err != nil {
			t.Fatal(err)
		}
	}
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapAlloc, ms.HeapAlloc
	calls := 0
	t0 := time.Now()
	res, err := q.Act(ctx, docket.ActionRetry, docket.Target{Filter: &docket.Filter{States: []string{"expired"}}, Progress: func(_, _ int) {
		calls++
		if calls%10 == 0 {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc)
		}
	}})
	took := time.Since(t0)
	if err != nil || res.Changed != n {
		t.Fatalf("retry = %+v, %v; want %d changed", res, err, n)
	}
	page, err := q.Search(ctx, docket.SearchOptions{Filter: docket.Filter{States: []string{"expired"}}, Limit: 1})
	if err != nil || len(page.Tasks) != 0 {
		t.Fatalf("expired tasks left: %+v, %v", page, err)
	}
	spans := slices.Clone(ts.spans)
	slices.Sort(spans)
	growth := int64(peak) - int64(base)
	t.Logf("%d tasks retried in %s, %d writes; write p50 %s, max %s; heap growth at most %.1f MiB",
		n, took.Round(time.Millisecond), len(spans), spans[len(spans)/2].Round(10*time.Microsecond), spans[len(spans)-1].Round(10*time.Microsecond), float64(growth)/(1<<20))
	if len(spans) < n/100 {
		t.Errorf("%d writes for %d tasks: batches larger than 100", len(spans), n)
	}
	if growth > 16<<20 {
		t.Errorf("heap grew %d MiB while retrying %d tasks: memory grows with the count", growth>>20, n)
	}
}
