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
	"sync/atomic"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/longtest"
)

// Load tests. By default they run short variants (10,000 pending tasks;
// six seconds at 500 tasks/s); DOCKET_TEST_LONG=1 runs the long ones
// (100,000; one minute), DOCKET_TEST_LONG=soak the soak lengths (1,000,000;
// ten minutes). See internal/longtest.

func soak() bool { return longtest.Soak() }

func rssBytes() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func heapInuse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

func fileSize(paths ...string) int64 {
	var n int64
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// A deep backlog: reopening is quick, a worker's memory does not grow with
// the backlog, and claiming from the head costs about the same as from a
// short queue (the claim plan is an index search; TestQueryPlans checks it).
func TestLoadDeepBacklog(t *testing.T) {
	depth := longtest.Pick(10_000, 100_000)
	if soak() {
		depth = 1_000_000
	}
	if testing.Short() {
		t.Skip("fills a large queue; skipped with -short")
	}
	path := filepath.Join(t.TempDir(), "deep.db")
	q, err := docket.Open(bg, path)
	if err != nil {
		t.Fatal(err)
	}
	var ran atomic.Int64
	count := docket.NewTask("deep.count", func(ctx context.Context, _ noArgs) (struct{}, error) {
		ran.Add(1)
		return struct{}{}, nil
	}, docket.IgnoreResult())
	q.Register(count)
	claimCost := func(q *docket.Queue, n int) time.Duration {
		ran.Store(0)
		ctx, stop := context.WithCancel(bg)
		done := make(chan struct{})
		t0 := time.Now()
		go func() { q.Run(ctx); close(done) }()
		for ran.Load() < int64(n) {
			time.Sleep(time.Millisecond)
		}
		el := time.Since(t0)
		stop()
		<-done
		return el / time.Duration(n)
	}
	batch := make([]noArgs, 1000)
	for range 3 {
		count.EnqueueMany(bg, q, batch)
	}
	shallow := claimCost(q, 2000)
	t0 := time.Now()
	for i := 0; i < depth; i += len(batch) {
		if _, err := count.EnqueueMany(bg, q, batch); err != nil {
			t.Fatal(err)
		}
	}
	fill := time.Since(t0)
	q.Close()

	heap0 := heapInuse()
	t0 = time.Now()
	q, err = docket.Open(bg, path)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	startup := time.Since(t0)
	q.Register(count)
	deep := claimCost(q, 2000)
	heap1 := heapInuse()
	t.Logf("%d pending (filled in %v, %.0f tasks/s); reopen %v; claim+run+record per task: %v at ~1k deep, %v at %d deep (×%.2f); heap in use %d MB -> %d MB; file %d MB",
		depth, fill.Round(time.Millisecond), float64(depth)/fill.Seconds(), startup.Round(time.Millisecond),
		shallow, deep, depth, float64(deep)/float64(shallow), heap0>>20, heap1>>20, fileSize(path, path+"-wal")>>20)
	if startup > 5*time.Second {
		t.Errorf("reopening a %d-deep queue took %v", depth, startup)
	}
	if grow := int64(heap1) - int64(heap0); grow > 32<<20 {
		t.Errorf("heap grew by %d MB while working a %d-deep backlog", grow>>20, depth)
	}
}

// Sustained load: 500 tasks/s with workers keeping up, for six seconds
// (20 s with DOCKET_TEST_LONG=1, ten minutes with DOCKET_TEST_LONG=soak). Afterwards, goroutines, heap, RSS and the WAL are
// back to steady state, and the file shrinks back once retention has
// pruned the finished tasks.
func TestSoakSustainedLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("seconds of sustained load; skipped with -short")
	}
	length := longtest.Pick(6*time.Second, 20*time.Second)
	if soak() {
		length = 10 * time.Minute
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "soak.db")
	q, err := docket.Open(bg, path, docket.Concurrency(8), docket.PruneInterval(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	var lat []time.Duration
	latCh := make(chan time.Duration, 1024)
	task := docket.NewTask("soak.work", func(ctx context.Context, sent int64) (struct{}, error) {
		latCh <- time.Since(time.Unix(0, sent))
		return struct{}{}, nil
	}, docket.ResultTTL(2*time.Second), docket.IgnoreResult())
	q.Register(task)
	empty := fileSize(path, path+"-wal")
	runWorkers(t, q)
	stop := make(chan struct{})
	produced := make(chan int)
	go func() {
		tick := time.NewTicker(2 * time.Millisecond) // 500/s
		defer tick.Stop()
		n := 0
		for {
			select {
			case <-stop:
				produced <- n
				return
			case <-tick.C:
				if _, err := task.Enqueue(bg, q, time.Now().UnixNano()); err != nil {
					t.Error(err)
				}
				n++
			}
		}
	}()
	type sample struct {
		goroutines int
		heap       uint64
		rss        int64
		p50, p99   time.Duration
	}
	var samples []sample
	window := length / 6
	t0 := time.Now()
	for time.Since(t0) < length {
		deadline := time.Now().Add(window)
		lat = lat[:0]
		for time.Now().Before(deadline) {
			select {
			case d := <-latCh:
				lat = append(lat, d)
			case <-time.After(10 * time.Millisecond):
			}
		}
		slices.Sort(lat)
		s := sample{runtime.NumGoroutine(), heapInuse(), rssBytes(), 0, 0}
		if len(lat) > 0 {
			s.p50, s.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
		}
		samples = append(samples, s)
	}
	close(stop)
	n := <-produced
	go func() {
		for range latCh {
		}
	}()
	// Let the last tasks finish, their results expire and the pruner run.
	waitSettled(t, q, time.Minute)
	time.Sleep(4 * time.Second)
	db, _ := q.DB()
	db.Exec("PRAGMA wal_checkpoint(TRUNCATE)")
	after := sample{runtime.NumGoroutine(), heapInuse(), rssBytes(), 0, 0}
	left, _ := q.List(bg, docket.ListOptions{Limit: 1000})
	end := fileSize(path, path+"-wal")
	var lines []string
	for i, s := range samples {
		lines = append(lines, fmt.Sprintf("window %d: goroutines %d heap %d KB rss %d MB p50 %v p99 %v", i, s.goroutines, s.heap>>10, s.rss>>20, s.p50, s.p99))
	}
	t.Logf("%d tasks in %v\n%s\nafter: goroutines %d heap %d KB rss %d MB; file %d KB empty, %d KB after retention; %d rows left",
		n, length, strings.Join(lines, "\n"), after.goroutines, after.heap>>10, after.rss>>20, empty>>10, end>>10, len(left))
	warm := samples[1]
	if after.goroutines > warm.goroutines+5 {
		t.Errorf("goroutines grew: %d during load, %d after", warm.goroutines, after.goroutines)
	}
	last := samples[len(samples)-1]
	if last.heap > 2*warm.heap+8<<20 {
		t.Errorf("heap grew under steady load: %d KB -> %d KB", warm.heap>>10, last.heap>>10)
	}
	if last.rss > warm.rss*3/2+16<<20 {
		t.Errorf("RSS grew under steady load: %d MB -> %d MB", warm.rss>>20, last.rss>>20)
	}
	if len(left) != 0 {
		t.Errorf("%d finished tasks outlived their result TTL", len(left))
	}
	if end > empty+256<<10 {
		t.Errorf("file did not shrink back after retention: %d KB empty, %d KB now", empty>>10, end>>10)
	}
}
