package amqp_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/amqptest"
	"github.com/docketq/docket/internal/longtest"
	_ "github.com/docketq/docket/transport/amqp"
	_ "github.com/docketq/docket/transport/redis"
	"github.com/docketq/docket/transport/transporttest"
)

// brokerURL returns DOCKET_TEST_AMQP_URL or skips the test.
func brokerURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("DOCKET_TEST_AMQP_URL")
	if u == "" {
		t.Skip("DOCKET_TEST_AMQP_URL is not set (e.g. amqp://guest:guest@127.0.0.1:5672/): skipping RabbitMQ tests")
	}
	return u
}

var seq atomic.Int64

// freshURL returns the broker URL with a prefix no other test uses, and
// deletes that prefix's queues and exchanges when the test ends.
func freshURL(t testing.TB, params string) string {
	t.Helper()
	base := brokerURL(t)
	prefix := fmt.Sprintf("t%d-%d", time.Now().UnixNano()%1e9, seq.Add(1))
	t.Cleanup(func() { amqptest.DeleteTopology(t, base, prefix, "default", "other", "mail", "poison") })
	sep := "?"
	if u, err := url.Parse(base); err == nil && u.RawQuery != "" {
		sep = "&"
	}
	s := base + sep + "prefix=" + prefix
	if params != "" {
		s += "&" + params
	}
	return s
}

func TestConformanceQuorum(t *testing.T) {
	brokerURL(t)
	transporttest.Run(t, transporttest.Backend{
		NewURL:   func(t *testing.T) string { return freshURL(t, "") },
		Features: transporttest.Features{Pushed: true},
	})
}

func TestConformanceClassic(t *testing.T) {
	brokerURL(t)
	transporttest.Run(t, transporttest.Backend{
		NewURL:   func(t *testing.T) string { return freshURL(t, "queue_type=classic") },
		Features: transporttest.Features{Priority: true, Pushed: true},
	})
}

// With a result store, the whole suite runs: unique keys, beat slots and
// lookups from any process.
func TestConformanceSQLiteStore(t *testing.T) {
	brokerURL(t)
	var stores sync.Map // broker URL -> result store URL
	transporttest.Run(t, transporttest.Backend{
		NewURL: func(t *testing.T) string {
			u := freshURL(t, "")
			stores.Store(u, "sqlite:"+filepath.Join(t.TempDir(), "state.db"))
			return u
		},
		Options: func(t *testing.T, url string) []docket.Option {
			v, _ := stores.Load(url)
			return []docket.Option{docket.ResultStore(v.(string))}
		},
		Features: transporttest.Features{Schedules: true, SharedState: true, Listing: true, Pruning: true, Admin: true, Workflows: true, Pushed: true},
	})
}

func TestConformanceRedisStore(t *testing.T) {
	brokerURL(t)
	redis := os.Getenv("DOCKET_TEST_REDIS_URL")
	if redis == "" {
		t.Skip("DOCKET_TEST_REDIS_URL is not set: skipping RabbitMQ with a Redis result store")
	}
	var stores sync.Map
	transporttest.Run(t, transporttest.Backend{
		NewURL: func(t *testing.T) string {
			u := freshURL(t, "queue_type=classic")
			stores.Store(u, redisWithPrefix(t, redis))
			return u
		},
		Options: func(t *testing.T, url string) []docket.Option {
			v, _ := stores.Load(url)
			return []docket.Option{docket.ResultStore(v.(string))}
		},
		Features: transporttest.Features{Schedules: true, SharedState: true, Priority: true, Listing: true, Pruning: true, Admin: true, Workflows: true, Pushed: true},
	})
}

// redisWithPrefix returns base with a fresh key prefix, whose keys are
// deleted when the test ends.
func redisWithPrefix(t *testing.T, base string) string {
	prefix := fmt.Sprintf("dockettest-amqp-%d-%d", os.Getpid(), seq.Add(1))
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("prefix", prefix)
	u.RawQuery = q.Encode()
	t.Cleanup(func() {
		opts, err := goredis.ParseURL(base)
		if err != nil {
			return
		}
		c := goredis.NewClient(opts)
		defer c.Close()
		keys, _ := c.Keys(bg, "{"+prefix+"}:*").Result()
		if len(keys) > 0 {
			c.Del(bg, keys...)
		}
	})
	return u.String()
}

var bg = context.Background()

// Without a result store, what needs shared state fails clearly at the
// call instead of hanging or silently doing less.
func TestAloneRefusesSharedState(t *testing.T) {
	url := freshURL(t, "")
	q, err := docket.Open(bg, url)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	task := docket.NewTask("alone.job", func(ctx context.Context, _ int) (int, error) { return 1, nil })
	q.Register(task)
	if _, err := task.Enqueue(bg, q, 1, docket.Unique("k", docket.RejectDuplicate)); !errors.Is(err, docket.ErrUnsupported) || !strings.Contains(err.Error(), "result store") {
		t.Errorf("unique key: %v", err)
	}
	if err := task.Schedule(q, "tick", docket.Every(time.Second), 1); !errors.Is(err, docket.ErrUnsupported) || !strings.Contains(err.Error(), "result store") {
		t.Errorf("schedule: %v", err)
	}
	if _, err := q.List(bg, docket.ListOptions{}); !errors.Is(err, docket.ErrUnsupported) {
		t.Errorf("list: %v", err)
	}
	if _, err := q.Info(bg, "01HZZZZZZZZZZZZZZZZZZZZZZZ"); !errors.Is(err, docket.ErrNotFound) {
		t.Errorf("info of a task another process enqueued: %v", err)
	}
	// A result store given to a transport that keeps its own state.
	if _, err := docket.Open(bg, "memory:", docket.ResultStore("memory:")); err == nil || !strings.Contains(err.Error(), "broker transports") {
		t.Errorf("result store on SQLite: %v", err)
	}
	if s := fmt.Sprint(q); strings.Contains(s, "guest:guest") {
		t.Errorf("String shows the password: %s", s)
	}
}

// With a result store, a message is published before its task is
// recorded. A message whose task the store refused (here: a unique key
// already held) finds no task when delivered, is retried for a few seconds
// in case its producer is still recording it, and is then dropped: it
// never runs.
func TestUnrecordedMessageNeverRuns(t *testing.T) {
	url := freshURL(t, "")
	q, err := docket.Open(bg, url, docket.ResultStore("sqlite:"+filepath.Join(t.TempDir(), "state.db")))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	var mu sync.Mutex
	ran := map[int]int{}
	task := docket.NewTask("unrecorded.job", func(ctx context.Context, v int) (int, error) {
		mu.Lock()
		ran[v]++
		mu.Unlock()
		return v, nil
	})
	q.Register(task)
	a, err := task.Enqueue(bg, q, 1, docket.Unique("k", docket.RejectDuplicate))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := task.Enqueue(bg, q, 2, docket.Unique("k", docket.RejectDuplicate)); !errors.Is(err, docket.ErrDuplicate) {
		t.Fatalf("second unique enqueue: %v", err)
	}
	ctx, stop := context.WithCancel(bg)
	defer stop()
	go q.Run(ctx)
	wctx, cancel := context.WithTimeout(bg, 30*time.Second)
	defer cancel()
	if v, err := a.Wait(wctx); err != nil || v != 1 {
		t.Fatalf("Wait = %v, %v", v, err)
	}
	// The refused task's message is kept unacknowledged and asked about
	// for a minute, then given up; it never runs (the long variant waits
	// past the minute).
	time.Sleep(longtest.Pick(3*time.Second, 65*time.Second))
	mu.Lock()
	defer mu.Unlock()
	if ran[1] != 1 || ran[2] != 0 {
		t.Fatalf("runs: %v; want the recorded task once and the refused one never", ran)
	}
}

// A refused login and an unreachable broker: clear errors without the
// password.
func TestConnectErrorsHidePassword(t *testing.T) {
	u, err := url.Parse(brokerURL(t))
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword("guest", "s3cret-wrong")
	ctx, cancel := context.WithTimeout(bg, 20*time.Second)
	defer cancel()
	_, err = docket.Open(ctx, u.String())
	if err == nil || strings.Contains(err.Error(), "s3cret-wrong") {
		t.Fatalf("wrong password: %v", err)
	}
	u.Host = fmt.Sprintf("127.0.0.1:%d", amqptest.FreePort(t))
	_, err = docket.Open(ctx, u.String())
	if err == nil || strings.Contains(err.Error(), "s3cret-wrong") {
		t.Fatalf("unreachable broker: %v", err)
	}
}

// Countdowns that cross several delay levels start on time: never early,
// and late only by the broker's hops.
func TestCountdownsOnTime(t *testing.T) {
	url := freshURL(t, "")
	q, err := docket.Open(bg, url)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	var mu sync.Mutex
	started := map[int]time.Time{}
	task := docket.NewTask("countdown.job", func(ctx context.Context, ms int) (int, error) {
		mu.Lock()
		started[ms] = time.Now()
		mu.Unlock()
		return ms, nil
	})
	q.Register(task)
	ctx, stop := context.WithCancel(bg)
	defer stop()
	go q.Run(ctx)
	// The first delayed enqueue declares the 32 delay queues (about 0.5 s,
	// more on a loaded machine); that one-time cost is not what is measured.
	if _, err := task.Enqueue(bg, q, 0, docket.Countdown(time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	// 37 = 32+4+1, 300 = 256+32+8+4, 1500 = 1024+256+128+64+16+8+4, 2900.
	delays := []int{37, 300, 1500, 2900}
	enqueued := map[int]time.Time{}
	var rs []*docket.Result[int]
	for _, ms := range delays {
		enqueued[ms] = time.Now()
		r, err := task.Enqueue(bg, q, ms, docket.Countdown(time.Duration(ms)*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	wctx, cancel := context.WithTimeout(bg, 30*time.Second)
	defer cancel()
	for _, r := range rs {
		if _, err := r.Wait(wctx); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, ms := range delays {
		late := started[ms].Sub(enqueued[ms]) - time.Duration(ms)*time.Millisecond
		t.Logf("countdown %dms: started %v after its time", ms, late.Round(time.Millisecond))
		if late < 0 || late > time.Second {
			t.Errorf("countdown %dms started %v after its time; want within [0, 1s]", ms, late)
		}
	}
}
