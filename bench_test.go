package docket_test

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docketq/docket"
)

// Benchmarks of the hot paths on a SQLite file (WAL, synchronous=NORMAL).
// Each reports tasks/s; compare runs with benchstat. The side-by-side
// comparison with other queues lives in bench/.

type noArgs struct{}

var noop = docket.NewTask("bench.noop", func(ctx context.Context, _ noArgs) (struct{}, error) { return struct{}{}, nil }, docket.IgnoreResult())

func benchQueue(b *testing.B, opts ...docket.Option) *docket.Queue {
	b.Helper()
	q, err := docket.Open(context.Background(), "sqlite:"+filepath.Join(b.TempDir(), "bench.db"), opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { q.Close() })
	if err := q.Register(noop); err != nil {
		b.Fatal(err)
	}
	return q
}

// One goroutine; each Enqueue returns after its own commit.
func BenchmarkEnqueue(b *testing.B) {
	q := benchQueue(b)
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		if _, err := noop.Enqueue(ctx, q, noArgs{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
}

// Eight goroutines enqueueing at once share commits (group commit).
func BenchmarkEnqueueParallel8(b *testing.B) {
	q := benchQueue(b)
	ctx := context.Background()
	b.SetParallelism(max(1, 8/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := noop.Enqueue(ctx, q, noArgs{}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
}

// One call, 1,000 tasks, one transaction.
func BenchmarkEnqueueBatch1000(b *testing.B) {
	q := benchQueue(b)
	ctx := context.Background()
	args := make([]noArgs, 1000)
	b.ResetTimer()
	for b.Loop() {
		if _, err := noop.EnqueueMany(ctx, q, args); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "tasks/s")
}

// Drain 50,000 pre-enqueued no-op tasks with Concurrency(8): claim, run,
// record each outcome.
func BenchmarkDrain50kConcurrency8(b *testing.B) { benchDrain(b, 50_000, 8) }

func benchDrain(b *testing.B, n, conc int) { benchDrainOpts(b, n, conc) }

func benchDrainOpts(b *testing.B, n, conc int, opts ...docket.Option) {
	ctx := context.Background()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		q, err := docket.Open(ctx, "sqlite:"+filepath.Join(b.TempDir(), fmt.Sprintf("drain%d.db", i)), append([]docket.Option{docket.Concurrency(conc)}, opts...)...)
		if err != nil {
			b.Fatal(err)
		}
		var ran atomic.Int64
		done := make(chan struct{})
		count := docket.NewTask("bench.count", func(ctx context.Context, _ noArgs) (struct{}, error) {
			if ran.Add(1) == int64(n) {
				close(done)
			}
			return struct{}{}, nil
		}, docket.IgnoreResult())
		q.Register(count)
		args := make([]noArgs, 1000)
		for range n / 1000 {
			if _, err := count.EnqueueMany(ctx, q, args); err != nil {
				b.Fatal(err)
			}
		}
		runCtx, stop := context.WithCancel(ctx)
		stopped := make(chan error)
		b.StartTimer()
		t0 := time.Now()
		go func() { stopped <- q.Run(runCtx) }()
		<-done
		stop()
		if err := <-stopped; err != nil {
			b.Fatal(err)
		}
		total += time.Since(t0)
		b.StopTimer()
		left, _ := q.List(ctx, docket.ListOptions{States: []docket.State{docket.StateReady, docket.StateRunning}, Limit: 1})
		if len(left) != 0 {
			b.Fatal("tasks left unfinished")
		}
		q.Close()
	}
	b.ReportMetric(float64(n*b.N)/total.Seconds(), "tasks/s")
}

// Enqueue one task and Wait for its result, with workers in the same
// process: the in-process round trip.
func BenchmarkEnqueueWait(b *testing.B) {
	q := benchQueue(b, docket.Concurrency(4))
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go q.Run(ctx)
	b.ResetTimer()
	for b.Loop() {
		r, err := noop.Enqueue(ctx, q, noArgs{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := r.Wait(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/roundtrip")
}

// Drain 50,000 pre-enqueued no-op tasks with Concurrency(64).
func BenchmarkDrain50kConcurrency64(b *testing.B) { benchDrain(b, 50_000, 64) }

// Drain50kConcurrency8 with a no-op middleware and an event hook, for the
// cost of the observability seam itself (compare with the plain drain:
// without middleware the handler is called directly).
func BenchmarkDrain50kConcurrency8Middleware(b *testing.B) {
	var events atomic.Int64
	pass := func(next docket.Handler) docket.Handler { return next }
	benchDrainOpts(b, 50_000, 8, docket.Use(pass), docket.OnEvent(func(docket.Event) { events.Add(1) }))
}
