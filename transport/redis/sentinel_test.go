package redis_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/faulttraffic"
	"github.com/docketq/docket/internal/longtest"
	"github.com/docketq/docket/internal/redistest"
)

// Redis with Sentinel: the primary SIGKILLed mid-stream and the replica
// promoted, once (twice in the long variant). With replicas=1 every write docket acknowledges is on
// the replica before the acknowledgement, so nothing acknowledged is lost;
// without it (DOCKET_TEST_LONG=1) the loss is counted: Redis replicates
// asynchronously, and what the replica had not received when the primary
// died is gone.
func TestFaultSentinelFailover(t *testing.T) {
	t.Parallel()
	serverURL(t) // broker tests are opt-in
	g := redistest.StartSentinels(t)
	run := func(t *testing.T, params string, allowLoss bool) faulttraffic.Report {
		return faulttraffic.Run(t, faulttraffic.Config{
			URL:       g.URL(params),
			Options:   []docket.Option{docket.LeaseDuration(2 * time.Second)},
			Settle:    500 * time.Millisecond,
			Wait:      90 * time.Second,
			Strict:    true,
			AllowLoss: allowLoss,
		}, func() {
			g.Failover()
			if longtest.Enabled() {
				time.Sleep(time.Second)
				g.Failover()
			}
		})
	}
	t.Run("replicas=1", func(t *testing.T) {
		run(t, "prefix=durable&replicas=1", false)
	})
	t.Run("async", func(t *testing.T) {
		longtest.Require(t, "the loss of asynchronous replication, measured")
		rep := run(t, "prefix=async", true)
		t.Logf("asynchronous replication: %d of %d acknowledged enqueues lost over two failovers", rep.Lost, rep.Acked)
	})
}

// What replicas=1 costs an enqueue: one task per call from one goroutine
// on a private primary with one replica, each call waiting for its own
// write, with and without WAIT.
func BenchmarkEnqueueReplicas(b *testing.B) {
	serverURL(b)
	// appendfsync everysec, as production servers run, so that the
	// difference is the replica's acknowledgement, not an fsync.
	primary := redistest.StartServer(b, "--appendfsync", "everysec")
	redistest.StartServer(b, "--appendfsync", "everysec", "--replicaof", "127.0.0.1", strconv.Itoa(primary.Port))
	for _, n := range []int{0, 1} {
		b.Run(fmt.Sprintf("replicas=%d", n), func(b *testing.B) {
			u := fmt.Sprintf("redis://%s/0?prefix=bench%d&replicas=%d", primary.Addr(), n, n)
			q, err := docket.Open(context.Background(), u)
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close()
			task := docket.NewTask("bench.noop", func(ctx context.Context, _ struct{}) (struct{}, error) { return struct{}{}, nil }, docket.IgnoreResult())
			if err := q.Register(task); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if _, err := task.Enqueue(context.Background(), q, struct{}{}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
		})
	}
}

// With replicas=1 and no replica in sync, docket acknowledges nothing: an
// enqueue fails with ErrOutcomeUnknown once replica_timeout has passed,
// and the task it wrote to the primary is there to be found by its id.
func TestReplicasUnconfirmedIsOutcomeUnknown(t *testing.T) {
	t.Parallel()
	serverURL(t)
	s := redistest.StartServer(t)
	ctx := context.Background()
	base := fmt.Sprintf("redis://%s/0?prefix=lonely", s.Addr())
	q, err := docket.Open(ctx, base+"&replicas=1&replica_timeout=200ms")
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	task := docket.NewTask("lonely.noop", func(ctx context.Context, _ struct{}) (struct{}, error) { return struct{}{}, nil })
	if err := q.Register(task); err != nil {
		t.Fatal(err)
	}
	_, err = task.Enqueue(ctx, q, struct{}{})
	var unknown *docket.OutcomeUnknownError
	if !errors.As(err, &unknown) || !errors.Is(err, docket.ErrOutcomeUnknown) || len(unknown.IDs) != 1 {
		t.Fatalf("Enqueue without a replica = %v; want an *OutcomeUnknownError", err)
	}
	plain, err := docket.Open(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if in, err := plain.Info(ctx, unknown.IDs[0]); err != nil || in.State != docket.StateReady {
		t.Fatalf("the unconfirmed task: %+v, %v; want it stored, ready", in, err)
	}
}
