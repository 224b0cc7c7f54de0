package redis_test

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/docketq/docket/transport"
)

// Benchmarks of the transport's hot paths against DOCKET_TEST_REDIS_URL,
// each under its own prefix: the scripts' cost, without docket's worker
// around them. Each reports tasks/s.

func benchTransport(b *testing.B) transport.Transport {
	b.Helper()
	u, err := url.Parse(freshURL(b))
	if err != nil {
		b.Fatal(err)
	}
	tr, err := transport.Open(context.Background(), u, transport.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tr.Close() })
	return tr
}

func benchMessages(from, n int) []transport.Message {
	ms := make([]transport.Message, n)
	for i := range ms {
		ms[i] = transport.Message{ID: fmt.Sprintf("b%09d", from+i), Name: "bench.noop", Queue: "default",
			Payload: []byte("{}"), MaxAttempts: 3, ResultTTL: time.Hour}
	}
	return ms
}

// One task per Enqueue call, one caller.
func BenchmarkEnqueue(b *testing.B) {
	tr := benchTransport(b)
	ctx, now := context.Background(), time.Now()
	i := 0
	for b.Loop() {
		if _, err := tr.Enqueue(ctx, transport.EnqueueParams{Now: now, Messages: benchMessages(i, 1)}); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
}

// 100 tasks per Enqueue call.
func BenchmarkEnqueueBatch100(b *testing.B) {
	tr := benchTransport(b)
	ctx, now := context.Background(), time.Now()
	i := 0
	for b.Loop() {
		if _, err := tr.Enqueue(ctx, transport.EnqueueParams{Now: now, Messages: benchMessages(i, 100)}); err != nil {
			b.Fatal(err)
		}
		i += 100
	}
	b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "tasks/s")
}

// Drain b.N pre-enqueued tasks: claim 50 at a time, finish each batch
// (succeeded) in one call.
func BenchmarkDrain(b *testing.B) {
	benchDrain(b, transport.StateSucceeded)
}

// As BenchmarkDrain, but every first attempt fails and is retried at once
// (the retry path: an attempt record and a failure count), then succeeds.
func BenchmarkDrainRetry(b *testing.B) {
	benchDrain(b, transport.StateScheduled)
}

func benchDrain(b *testing.B, first transport.State) {
	tr := benchTransport(b)
	ctx, now := context.Background(), time.Now()
	for i := 0; i < b.N; i += 1000 {
		if _, err := tr.Enqueue(ctx, transport.EnqueueParams{Now: now, Messages: benchMessages(i, min(1000, b.N-i))}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	done := 0
	for done < b.N {
		res, err := tr.Claim(ctx, transport.ClaimParams{Now: now, Owner: "w", Queues: []string{"default"}, Limit: 50, LeaseUntil: now.Add(time.Minute)})
		if err != nil {
			b.Fatal(err)
		}
		if len(res.Deliveries) == 0 {
			b.Fatalf("claimed nothing with %d of %d done", done, b.N)
		}
		items := make([]transport.Outcome, len(res.Deliveries))
		for i, d := range res.Deliveries {
			items[i] = transport.Outcome{Lease: d.Lease(), State: transport.StateSucceeded}
			if d.Attempt == 1 && first == transport.StateScheduled {
				items[i].State, items[i].Error, items[i].RunAt = transport.StateScheduled, "boom", now
			} else {
				done++
			}
		}
		if _, err := tr.Finish(ctx, transport.FinishParams{Now: now, Items: items}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
}
