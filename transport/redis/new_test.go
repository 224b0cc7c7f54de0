package redis_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/redistest"
	"github.com/docketq/docket/transport/redis"
)

// callersClient returns a go-redis client on the test server, made the
// way an application makes its own and closed when the test ends, and a
// fresh key prefix whose keys are deleted then.
func callersClient(t *testing.T) (*goredis.Client, string) {
	t.Helper()
	base := serverURL(t)
	opts, err := goredis.ParseURL(base)
	if err != nil {
		t.Fatal(err)
	}
	rdb := goredis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	prefix := fmt.Sprintf("dockettest-new-%d-%d", os.Getpid(), time.Now().UnixNano())
	t.Cleanup(func() { redistest.DeletePrefix(base, prefix) })
	return rdb, prefix
}

// A Queue built with docket.New on the application's own client runs the
// quickstart's kinds of tasks (a result waited for, retries, a task due
// later), and closing it leaves the client open.
func TestNewOnCallersClient(t *testing.T) {
	t.Parallel()
	rdb, prefix := callersClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tr, err := redis.New(ctx, rdb, redis.Options{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	q, err := docket.New(tr, docket.Concurrency(4))
	if err != nil {
		tr.Close()
		t.Fatal(err)
	}
	defer q.Close()

	add := docket.NewTask("math.add", func(_ context.Context, xy [2]int) (int, error) { return xy[0] + xy[1], nil })
	var flakyCalls atomic.Int32
	flaky := docket.NewTask("report.flaky", func(ctx context.Context, name string) (string, error) {
		tc, _ := docket.FromContext(ctx)
		if flakyCalls.Add(1) <= 2 {
			return "", fmt.Errorf("upstream timeout (attempt %d)", tc.Attempt)
		}
		return fmt.Sprintf("%s after %d attempts", name, tc.Attempt), nil
	}, docket.RetryBackoff(docket.Exponential{Base: 50 * time.Millisecond, Max: 200 * time.Millisecond}))
	ranAt := make(chan time.Time, 4)
	later := docket.NewTask("mail.later", func(_ context.Context, to string) (string, error) {
		ranAt <- time.Now()
		return "sent to " + to, nil
	})
	if err := q.Register(add, flaky, later); err != nil {
		t.Fatal(err)
	}
	wctx, stopWorkers := context.WithCancel(ctx)
	defer stopWorkers()
	stopped := make(chan error, 1)
	go func() { stopped <- q.Run(wctx) }()

	sum, err := add.Enqueue(ctx, q, [2]int{2, 3})
	if err != nil {
		t.Fatal(err)
	}
	report, err := flaky.Enqueue(ctx, q, "weekly")
	if err != nil {
		t.Fatal(err)
	}
	eta := time.Now().Add(1500 * time.Millisecond)
	mail, err := later.Enqueue(ctx, q, "ann@example.com", docket.ETA(eta))
	if err != nil {
		t.Fatal(err)
	}

	if v, err := sum.Wait(ctx); err != nil || v != 5 {
		t.Fatalf("math.add(2, 3) = %d, %v; want 5", v, err)
	}
	if v, err := report.Wait(ctx); err != nil || v != "weekly after 3 attempts" {
		t.Fatalf("report.flaky = %q, %v; want success on the third attempt", v, err)
	}
	if info, err := report.Info(ctx); err != nil || info.State != docket.StateSucceeded || info.Attempt != 3 {
		t.Fatalf("report.flaky info = %+v, %v; want succeeded after 3 attempts", info, err)
	}
	if v, err := mail.Wait(ctx); err != nil || v != "sent to ann@example.com" {
		t.Fatalf("mail.later = %q, %v", v, err)
	}
	if at := <-ranAt; at.Before(eta.Truncate(time.Millisecond)) {
		t.Fatalf("mail.later ran at %v, before its ETA %v", at, eta)
	}
	if n := len(ranAt); n != 0 {
		t.Fatalf("mail.later ran %d more times", n)
	}

	stopWorkers()
	if err := <-stopped; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := q.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// The client is the application's: still open, and the task is still
	// there to read through it.
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING on the caller's client after Queue.Close: %v", err)
	}
	if n, err := rdb.Exists(ctx, "{"+prefix+"}:t:"+sum.ID()).Result(); err != nil || n != 1 {
		t.Fatalf("the task's key through the caller's client: %d, %v", n, err)
	}
}

// New refuses bad input before any I/O: a nil client and a prefix that
// would break the hash slot.
func TestNewRefusesBadInput(t *testing.T) {
	ctx := context.Background()
	if _, err := redis.New(ctx, nil, redis.Options{}); !errors.Is(err, docket.ErrInvalid) {
		t.Fatalf("New(nil client) = %v; want ErrInvalid", err)
	}
	var typedNil *goredis.Client
	if _, err := redis.New(ctx, typedNil, redis.Options{}); !errors.Is(err, docket.ErrInvalid) {
		t.Fatalf("New(nil *Client) = %v; want ErrInvalid", err)
	}
	rdb := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1"}) // never dialled
	defer rdb.Close()
	for _, p := range []string{"a{b}", "x*", "a:b", strings.Repeat("p", 65)} {
		if _, err := redis.New(ctx, rdb, redis.Options{Prefix: p}); !errors.Is(err, docket.ErrInvalid) {
			t.Errorf("New with prefix %q = %v; want ErrInvalid", p, err)
		}
	}
	// Replicas: WAIT must reach the connection that wrote, and the client
	// must wait for its reply longer than WAIT waits.
	cluster := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}})
	defer cluster.Close()
	if _, err := redis.New(ctx, cluster, redis.Options{Replicas: 1}); !errors.Is(err, docket.ErrUnsupported) {
		t.Errorf("New(cluster client, Replicas 1) = %v; want ErrUnsupported", err)
	}
	short := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1", ReadTimeout: time.Second})
	defer short.Close()
	if _, err := redis.New(ctx, short, redis.Options{Replicas: 1, ReplicaTimeout: 2 * time.Second}); !errors.Is(err, docket.ErrInvalid) {
		t.Errorf("New(read timeout 1s, replica timeout 2s) = %v; want ErrInvalid", err)
	}
	if _, err := redis.New(ctx, rdb, redis.Options{Replicas: -1}); !errors.Is(err, docket.ErrInvalid) {
		t.Errorf("New(Replicas -1) = %v; want ErrInvalid", err)
	}
}

// URL parameters neither docket nor go-redis knows are refused, as are
// bad values of docket's own.
func TestURLRefusesUnknownParameters(t *testing.T) {
	ctx := context.Background()
	for _, u := range []string{
		"redis://127.0.0.1:1/0?prefx=jobs",
		"redis://127.0.0.1:1/0?strict=maybe",
		"redis://127.0.0.1:1/0?prefix=a%7Bb%7D",
		"redis://127.0.0.1:1/0?replicas=one",
		"redis://127.0.0.1:1/0?replicas=-1",
		"redis://127.0.0.1:1/0?replicas=1&replica_timeout=soon",
		"redis://127.0.0.1:1/0?replica_timeout=-2s",
		"redis://127.0.0.1:1/0?master_name=docket&addr=nohostport",
	} {
		q, err := docket.Open(ctx, u)
		if err == nil {
			q.Close()
			t.Fatalf("Open(%s) succeeded", u)
		}
		if !errors.Is(err, docket.ErrInvalid) {
			t.Errorf("Open(%s) = %v; want ErrInvalid", u, err)
		}
	}
}
