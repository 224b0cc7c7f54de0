package amqp_test

import (
	"context"
	"fmt"
	"net/url"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/amqptest"
	"github.com/docketq/docket/internal/longtest"
)

// The first enqueues of a fresh process, made by many goroutines at once,
// declare the topology (queues, dead-letter queue, delay levels, reply
// queue) concurrently: every one of them succeeds. Each round is a fresh
// process's first enqueues: 8 rounds, 30 with DOCKET_TEST_LONG=1.
func TestConcurrentFirstEnqueues(t *testing.T) {
	base := brokerURL(t)
	// More threads than cores: goroutines are also preempted between
	// the frames they send and the answers they wait for.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4 * runtime.NumCPU()))
	const goroutines, each = 16, 2
	rounds := longtest.Pick(8, 30)
	queues := make([]string, goroutines)
	for g := range queues {
		queues[g] = fmt.Sprintf("c%d", g)
	}
	for round := range rounds {
		prefix := fmt.Sprintf("conc%d-%d", time.Now().UnixNano()%1e9, seq.Add(1))
		u, err := url.Parse(base)
		if err != nil {
			t.Fatal(err)
		}
		v := u.Query()
		v.Set("prefix", prefix)
		if round%2 == 1 {
			v.Set("queue_type", "classic") // quicker to declare and delete
		}
		u.RawQuery = v.Encode()
		// Each round's topology is deleted as soon as the round ends: a
		// broker holding hundreds of idle quorum queues runs short of
		// file handles.
		cleanup := func() { amqptest.DeleteTopology(t, base, prefix, queues...) }
		t.Cleanup(cleanup)
		q, err := docket.Open(bg, u.String())
		if err != nil {
			t.Fatal(err)
		}
		task := docket.NewTask("concurrent.job", func(ctx context.Context, v int) (int, error) { return v, nil })
		start := make(chan struct{})
		errs := make(chan error, goroutines*each)
		var wg sync.WaitGroup
		for g := range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				for i := range each {
					// Every goroutine declares its own queue; in every
					// third round one of them also declares the delay
					// levels meanwhile.
					opts := []docket.TaskOption{docket.OnQueue(queues[(g+i)%goroutines])}
					if round%3 == 0 && g == goroutines-1 && i == 0 {
						opts = append(opts, docket.Countdown(time.Hour))
					}
					ctx, cancel := context.WithTimeout(bg, 60*time.Second)
					_, err := task.Enqueue(ctx, q, g, opts...)
					cancel()
					if err != nil {
						errs <- fmt.Errorf("round %d, goroutine %d, task %d: %w", round, g, i, err)
					}
				}
			}()
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if err := q.Close(); err != nil {
			t.Errorf("round %d: Close: %v", round, err)
		}
		cleanup()
		if t.Failed() {
			return
		}
	}
}
