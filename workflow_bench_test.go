package docket_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/redistest"
)

var benchAdd = docket.NewTask("bench.add1", func(ctx context.Context, n int) (int, error) { return n + 1, nil })

var benchSum = docket.NewTask("bench.sum", func(ctx context.Context, ns []int) (int, error) {
	s := 0
	for _, n := range ns {
		s += n
	}
	return s, nil
})

// flowBenchQueue is a running Queue with the workflow benchmarks' tasks:
// on a SQLite file, or on Redis (DOCKET_TEST_REDIS_URL) when
// DOCKET_BENCH_BACKEND=redis.
func flowBenchQueue(b *testing.B, opts ...docket.Option) *docket.Queue {
	b.Helper()
	var q *docket.Queue
	if os.Getenv("DOCKET_BENCH_BACKEND") == "redis" {
		base := os.Getenv("DOCKET_TEST_REDIS_URL")
		if base == "" {
			b.Skip("DOCKET_BENCH_BACKEND=redis needs DOCKET_TEST_REDIS_URL")
		}
		prefix := fmt.Sprintf("docketbench-%d-%d", os.Getpid(), time.Now().UnixNano())
		sep := "?"
		if strings.Contains(base, "?") {
			sep = "&"
		}
		var err error
		if q, err = docket.Open(context.Background(), base+sep+"prefix="+prefix, opts...); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { q.Close(); redistest.DeletePrefix(base, prefix) })
	} else {
		q = benchQueue(b, opts...)
	}
	if err := q.Register(benchAdd, benchSum); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
	return q
}

// A chain of 1,000 steps, each taking the previous result: one step runs
// at a time, so it is compared with 1,000 independent tasks run one at a
// time (BenchmarkSequential1000, Concurrency(1)). The ratio of the two is
// the cost of passing results along a chain.
func BenchmarkChain1000(b *testing.B) {
	q := flowBenchQueue(b)
	ctx := context.Background()
	flow := docket.Step(benchAdd, 0)
	for range 999 {
		flow = docket.Then(flow, benchAdd)
	}
	for b.Loop() {
		wf, err := docket.EnqueueFlow(ctx, q, flow)
		if err != nil {
			b.Fatal(err)
		}
		if n, err := wf.Wait(ctx); err != nil || n != 1000 {
			b.Fatalf("chain = %d, %v", n, err)
		}
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "steps/s")
}

// 1,000 independent tasks enqueued at once and run one at a time: the
// baseline of BenchmarkChain1000.
func BenchmarkSequential1000(b *testing.B) { benchIndependent(b, 1) }

// Eight chains of 125 steps at once on eight slots, against 1,000
// independent tasks on eight slots (BenchmarkIndependent1000): what chains
// cost a busy worker, whose writes each carry several chains' steps.
func BenchmarkChains8x125(b *testing.B) {
	q := flowBenchQueue(b, docket.Concurrency(8))
	ctx := context.Background()
	flow := docket.Step(benchAdd, 0)
	for range 124 {
		flow = docket.Then(flow, benchAdd)
	}
	for b.Loop() {
		wfs := make([]*docket.Workflow[int], 8)
		for i := range wfs {
			wf, err := docket.EnqueueFlow(ctx, q, flow)
			if err != nil {
				b.Fatal(err)
			}
			wfs[i] = wf
		}
		for _, wf := range wfs {
			if n, err := wf.Wait(ctx); err != nil || n != 125 {
				b.Fatalf("chain = %d, %v", n, err)
			}
		}
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "steps/s")
}

// 1,000 independent tasks enqueued at once and run on eight slots: the
// baseline of BenchmarkChains8x125.
func BenchmarkIndependent1000(b *testing.B) { benchIndependent(b, 8) }

// benchIndependent enqueues 1,000 independent tasks at once and waits for
// each, on conc slots.
func benchIndependent(b *testing.B, conc int) {
	q := flowBenchQueue(b, docket.Concurrency(conc))
	ctx := context.Background()
	args := make([]int, 1000)
	for b.Loop() {
		rs, err := benchAdd.EnqueueMany(ctx, q, args)
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range rs {
			if _, err := r.Wait(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "steps/s")
}

// A chord of n members and a body that sums them: ns/member should not
// grow with n (each member's end does a constant amount of work; the
// body's arguments are gathered once).
func BenchmarkChord(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			q := flowBenchQueue(b, docket.Concurrency(8))
			ctx := context.Background()
			members := make([]docket.Flow[int], n)
			for i := range members {
				members[i] = docket.Step(benchAdd, i)
			}
			flow := docket.Then(docket.Group(members...), benchSum)
			want := n * (n + 1) / 2
			for b.Loop() {
				wf, err := docket.EnqueueFlow(ctx, q, flow)
				if err != nil {
					b.Fatal(err)
				}
				if s, err := wf.Wait(ctx); err != nil || s != want {
					b.Fatalf("chord = %d, %v; want %d", s, err, want)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/member")
		})
	}
}
