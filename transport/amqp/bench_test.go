package amqp_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/docketq/docket"
)

// BenchmarkDrain measures draining pre-enqueued no-op tasks with RabbitMQ
// alone, producer and worker on one Queue, at docket's default prefetch:
// delivery, the handler, the outcome recorded and the ack. b.N is the
// number of tasks. bench/ compares the same work with a plain amqp091-go
// loop at the same prefetch, also with the producer in another process.
func BenchmarkDrain(b *testing.B) {
	for _, conc := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("conc%d", conc), func(b *testing.B) {
			url := freshURL(b, "")
			q, err := docket.Open(bg, url, docket.Concurrency(conc))
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close()
			task := docket.NewTask("bench.noop", func(ctx context.Context, _ int) (int, error) { return 0, nil })
			q.Register(task)
			args := make([]int, 1000)
			var last *docket.Result[int]
			for left := b.N; left > 0; left -= len(args) {
				rs, err := task.EnqueueMany(bg, q, args[:min(left, len(args))])
				if err != nil {
					b.Fatal(err)
				}
				last = rs[len(rs)-1]
			}
			b.ResetTimer()
			t0 := time.Now()
			ctx, stop := context.WithCancel(bg)
			done := make(chan error, 1)
			go func() { done <- q.Run(ctx) }()
			wctx, cancel := context.WithTimeout(bg, 10*time.Minute)
			defer cancel()
			if _, err := last.Wait(wctx); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/time.Since(t0).Seconds(), "tasks/s")
			stop()
			<-done
		})
	}
}
