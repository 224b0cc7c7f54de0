package docket_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/longtest"
)

// TestSoak enqueues at a fixed rate with workers running, first at 500
// tasks/s and then at 2,000/s, on each backend in turn, and samples every
// five seconds what a production deployment watches: the SQLite WAL and
// database sizes, the process's RSS and goroutines, the backlog and the
// enqueue-to-start p99. Results expire after 20 s and are pruned every 5 s,
// so retention runs within the scenario.
//
// It is a long variant (DOCKET_TEST_LONG=1: one minute at each rate, two
// per backend, .ci/run's soak step; DOCKET_TEST_LONG=soak: fifteen minutes
// at each rate), and it measures rates, so it skips under -race.
// DOCKET_SOAK_OUT names a file the samples are appended to as tab-separated
// lines.
//
// It checks: nothing lost (every acknowledged enqueue starts), no enqueue
// fails, the offered rate is reached, the workers keep up (the backlog
// stays under two seconds of arrivals), the WAL never exceeds its 64 MiB
// limit, and the database size, RSS and goroutines are flat once retention
// runs (the last third of the samples at the higher rate is not above the
// second third by more than a margin for noise).
func TestSoak(t *testing.T) {
	longtest.Require(t, "minutes of load at fixed rates")
	if raceEnabled {
		t.Skip("the soak measures rates; run it without -race")
	}
	phase := time.Minute
	if longtest.Soak() {
		phase = 15 * time.Minute
	}
	backends := []struct {
		name   string
		url    func(t *testing.T) string
		result bool // with a Redis result store
	}{
		{name: "sqlite", url: func(t *testing.T) string { return "sqlite:" + filepath.Join(t.TempDir(), "soak.db") }},
		{name: "redis", url: redisURL},
		{name: "rabbitmq+redis", url: amqpURL, result: true},
		{name: "rabbitmq", url: amqpURL},
	}
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			var opts []docket.Option
			if b.result {
				opts = append(opts, docket.ResultStore(redisURL(t)))
			}
			soakAtRates(t, b.name, b.url(t), phase, opts...)
		})
	}
}

type soakSample struct {
	at         time.Duration
	rate       int
	wal, db    int64 // bytes; -1 when the backend has no file
	rss        int64 // bytes
	goroutines int
	backlog    int64
	p99        time.Duration
	enqueued   int64
}

func soakAtRates(t *testing.T, backend, url string, phase time.Duration, opts ...docket.Option) {
	ctx := context.Background()
	q, err := docket.Open(ctx, url, append(opts, docket.Concurrency(8), docket.PruneInterval(5*time.Second))...)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()

	const maxTasks = 3 << 20
	var started [maxTasks]atomic.Bool
	var startedN atomic.Int64
	var latMu sync.Mutex
	var lat []time.Duration
	task := docket.NewTask("soak.noop", func(_ context.Context, a [2]int64) (int64, error) {
		if started[a[0]].CompareAndSwap(false, true) {
			startedN.Add(1)
		}
		d := time.Since(time.Unix(0, a[1]))
		latMu.Lock()
		lat = append(lat, d)
		latMu.Unlock()
		return a[0], nil
	}, docket.ResultTTL(20*time.Second))
	if err := q.Register(task); err != nil {
		t.Fatal(err)
	}
	runWorkers(t, q)

	var seq, failures atomic.Int64
	var firstErr atomic.Value
	var rate atomic.Int64
	rates := []int{500, 2000}
	rate.Store(int64(rates[0]))
	stop := make(chan struct{})
	var producers sync.WaitGroup
	// Many producers, as in a web process serving concurrent requests:
	// each enqueue waits for its backend's acknowledgement.
	const nProducers = 32
	for p := range nProducers {
		producers.Add(1)
		go func() {
			defer producers.Done()
			next := time.Now()
			for {
				select {
				case <-stop:
					return
				default:
				}
				next = next.Add(time.Duration(nProducers) * time.Second / time.Duration(rate.Load()))
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
				n := seq.Add(1) - 1
				if n >= maxTasks {
					return
				}
				if _, err := task.Enqueue(ctx, q, [2]int64{n, time.Now().UnixNano()}); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("producer %d, task %d: %v", p, n, err))
					started[n].Store(true) // not acknowledged: not owed a run
					startedN.Add(1)
				}
			}
		}()
	}

	var samples []soakSample
	begin := time.Now()
	sample := func() {
		s := soakSample{at: time.Since(begin).Round(time.Second), rate: int(rate.Load()), wal: -1, db: -1,
			goroutines: runtime.NumGoroutine(), rss: rssBytes(), enqueued: seq.Load()}
		s.backlog = s.enqueued - startedN.Load()
		if path, ok := strings.CutPrefix(url, "sqlite:"); ok {
			s.wal, s.db = fileSize(path+"-wal"), fileSize(path)
		}
		latMu.Lock()
		window := lat
		lat = nil
		latMu.Unlock()
		if len(window) > 0 {
			slices.Sort(window)
			s.p99 = window[len(window)*99/100]
		}
		samples = append(samples, s)
	}
	tick := time.NewTicker(5 * time.Second)
	for _, r := range rates {
		rate.Store(int64(r))
		end := time.Now().Add(phase)
		for time.Now().Before(end) {
			<-tick.C
			sample()
		}
	}
	tick.Stop()
	close(stop)
	producers.Wait()

	// Every acknowledged task starts.
	total := seq.Load()
	if total > maxTasks {
		total = maxTasks
	}
	deadline := time.Now().Add(time.Minute)
	for startedN.Load() < total && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	sample()

	out := os.Getenv("DOCKET_SOAK_OUT")
	var w *bufio.Writer
	if out != "" {
		f, err := os.OpenFile(out, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		w = bufio.NewWriter(f)
		defer w.Flush()
	}
	for _, s := range samples {
		line := fmt.Sprintf("%s\t%s\t%d\t%s\t%s\t%.1f\t%d\t%d\t%.1f\t%d", backend, s.at, s.rate, mib(s.wal), mib(s.db),
			float64(s.rss)/(1<<20), s.goroutines, s.backlog, float64(s.p99)/float64(time.Millisecond), s.enqueued)
		t.Log(line)
		if w != nil {
			fmt.Fprintln(w, line)
		}
	}

	if n := failures.Load(); n > 0 {
		t.Errorf("%d enqueues failed; the first: %v", n, firstErr.Load())
	}
	if got := startedN.Load(); got < total {
		var missing []int64
		for n := int64(0); n < total && len(missing) < 10; n++ {
			if !started[n].Load() {
				missing = append(missing, n)
			}
		}
		t.Errorf("%d of %d acknowledged tasks never started (first: %v)", total-got, total, missing)
	}
	steady := samples[:len(samples)-1] // the last sample is after the drain
	for i, s := range steady[1:] {
		offered := float64(s.enqueued-steady[i].enqueued) / (s.at - steady[i].at).Seconds()
		if s.rate == steady[i].rate && offered < 0.9*float64(s.rate) {
			t.Errorf("at %s enqueues ran at %.0f/s, short of the %d/s the scenario offers", s.at, offered, s.rate)
		}
	}
	for _, s := range steady {
		if s.wal > 64<<20 {
			t.Errorf("at %s the WAL is %s MiB, over its 64 MiB limit", s.at, mib(s.wal))
		}
		if limit := int64(2 * s.rate); s.backlog > limit {
			t.Errorf("at %s the backlog is %d tasks at %d/s: the workers fell behind", s.at, s.backlog, s.rate)
		}
	}
	// Flat at the higher rate: the last third against the second third.
	high := steady[len(steady)/2:]
	mid, last := high[len(high)/3:2*len(high)/3], high[2*len(high)/3:]
	flat := func(what string, get func(soakSample) int64, slack int64) {
		a, b := maxOf(mid, get), maxOf(last, get)
		if b > a+a/4+slack {
			t.Errorf("%s grows: %d at most in the second third, %d in the last", what, a, b)
		}
	}
	if steady[0].db >= 0 {
		flat("database size", func(s soakSample) int64 { return s.db }, 8<<20)
	}
	flat("goroutines", func(s soakSample) int64 { return int64(s.goroutines) }, 50)
	flat("RSS", func(s soakSample) int64 { return s.rss }, 32<<20)
}

func maxOf(ss []soakSample, get func(soakSample) int64) int64 {
	var m int64
	for _, s := range ss {
		m = max(m, get(s))
	}
	return m
}

func mib(n int64) string {
	if n < 0 {
		return "-"
	}
	return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64)
}
