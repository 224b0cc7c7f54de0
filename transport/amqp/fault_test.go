package amqp_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/amqptest"
	"github.com/docketq/docket/internal/chaos"
	"github.com/docketq/docket/internal/faulttraffic"
	"github.com/docketq/docket/internal/longtest"
	"github.com/docketq/docket/internal/probetest"
)

// item is the argument of the poison tests' slow task.
type item struct {
	N int `json:"n"`
}

// traffic runs faulttraffic's producer and worker on url while fault()
// runs. With strict (a result store keeps the task state), a handler that
// starts after its task's completion was recorded fails the test.
func traffic(t *testing.T, url string, opts []docket.Option, strict bool, fault func()) {
	t.Helper()
	faulttraffic.Run(t, faulttraffic.Config{
		URL:     url,
		Options: append(opts, docket.LeaseDuration(3*time.Second), docket.Logger(testLogger(t))),
		// RabbitMQ 3.10 can lose a quorum queue declared less than about a
		// second before the node is killed; let the topology settle first.
		Settle: 2 * time.Second,
		Wait:   90 * time.Second,
		Strict: strict,
	}, fault)
}

// modes runs f with RabbitMQ alone and with a SQLite result store, each
// under its own prefix of url. By default only the second runs; both with
// DOCKET_TEST_LONG=1.
func modes(t *testing.T, url string, f func(t *testing.T, url string, opts []docket.Option, strict bool)) {
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	t.Run("alone", func(t *testing.T) {
		longtest.Require(t, "the second mode (sqlite-store runs by default)")
		f(t, fmt.Sprintf("%s%sprefix=alone%d", url, sep, seq.Add(1)), nil, false)
	})
	t.Run("sqlite-store", func(t *testing.T) {
		f(t, fmt.Sprintf("%s%sprefix=stored%d", url, sep, seq.Add(1)), []docket.Option{docket.ResultStore("sqlite:" + filepath.Join(t.TempDir(), "state.db"))}, true)
	})
}

// RabbitMQ killed with SIGKILL and restarted mid-stream: producers get
// definite errors or success, the worker resumes without a restart, and
// every confirmed task completes.
func TestFaultBrokerRestart(t *testing.T) {
	longtest.Require(t, "boots a private RabbitMQ node twice")
	n := amqptest.StartNode(t, "", 30*time.Minute)
	modes(t, n.URL(), func(t *testing.T, url string, opts []docket.Option, strict bool) {
		traffic(t, url, opts, strict, func() {
			n.Kill()
			time.Sleep(300 * time.Millisecond)
			n.Start()
		})
	})
}

// Every connection closed by the broker, five times in a row.
func TestFaultConnectionsClosed(t *testing.T) {
	longtest.Require(t, "boots a private RabbitMQ node")
	n := amqptest.StartNode(t, "", 30*time.Minute)
	modes(t, n.URL(), func(t *testing.T, url string, opts []docket.Option, strict bool) {
		traffic(t, url, opts, strict, func() {
			for range 5 {
				n.Ctl("close_all_connections", "docket fault test")
				time.Sleep(400 * time.Millisecond)
			}
		})
	})
}

// A connection cut (reset) and one silently blackholed through a proxy:
// the heartbeat notices the silent one, and both recover.
func TestFaultConnectionCutAndBlackholed(t *testing.T) {
	base := brokerURL(t)
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := chaos.Start(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	u.Host = proxy.Addr()
	u.RawQuery = "heartbeat=2"
	modes(t, u.String(), func(t *testing.T, url string, opts []docket.Option, strict bool) {
		t.Cleanup(func() { amqptest.DeleteTopology(t, base, prefixOf(url), "default", "other", "mail", "poison") })
		traffic(t, url, opts, strict, func() {
			proxy.ResetAll()
			time.Sleep(time.Second)
			proxy.SetMode(chaos.Blackhole)
			time.Sleep(10 * time.Second) // well past the 2s heartbeats
			proxy.SetMode(chaos.Pass)
			proxy.ResetAll()
		})
	})
}

// A memory alarm blocks publishers: Enqueue ends with its ctx instead of
// hanging, workers keep acknowledging, and everything resumes when the
// alarm clears.
func TestFaultMemoryAlarm(t *testing.T) {
	longtest.Require(t, "boots a private RabbitMQ node")
	n := amqptest.StartNode(t, "", 30*time.Minute)
	q, err := docket.Open(bg, n.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	task := docket.NewTask("alarm.echo", func(ctx context.Context, v int) (int, error) { return v, nil })
	q.Register(task)
	ctx, stop := context.WithCancel(bg)
	defer stop()
	go q.Run(ctx)
	before, err := task.Enqueue(bg, q, 1)
	if err != nil {
		t.Fatal(err)
	}
	n.Ctl("set_vm_memory_high_watermark", "0.000001")
	time.Sleep(time.Second)
	cctx, cancel := context.WithTimeout(bg, 2*time.Second)
	t0 := time.Now()
	_, err = task.Enqueue(cctx, q, 2)
	cancel()
	if err == nil {
		t.Fatal("Enqueue succeeded while the broker blocked publishers")
	}
	if d := time.Since(t0); d > 4*time.Second {
		t.Fatalf("Enqueue returned after %v, past its 2s ctx", d)
	}
	t.Logf("while alarmed: %v", err)
	n.Ctl("set_vm_memory_high_watermark", "0.4")
	wctx, wcancel := context.WithTimeout(bg, 30*time.Second)
	defer wcancel()
	if v, err := before.Wait(wctx); err != nil || v != 1 {
		t.Fatalf("task enqueued before the alarm: %v, %v", v, err)
	}
	after, err := task.Enqueue(wctx, q, 3)
	if err != nil {
		t.Fatalf("Enqueue after the alarm cleared: %v", err)
	}
	if v, err := after.Wait(wctx); err != nil || v != 3 {
		t.Fatalf("task enqueued after the alarm: %v, %v", v, err)
	}
}

// A handler running past RabbitMQ's consumer_timeout: the broker closes
// the channel. Alone, that is a lost lease: the handler's ctx is cancelled
// and the task runs again as its next attempt. With a result store, the
// lease is the store's: the handler finishes its attempt, and the copy the
// broker redelivers is settled by the store.
func TestConsumerTimeout(t *testing.T) {
	n := amqptest.StartNode(t, "", 2*time.Second)
	modes(t, n.URL(), func(t *testing.T, url string, opts []docket.Option, strict bool) {
		q, err := docket.Open(bg, url, append(opts, docket.Logger(testLogger(t)))...)
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		causes := make(chan error, 4)
		task := docket.NewTask("slow.job", func(ctx context.Context, _ int) (int, error) {
			tc, _ := docket.FromContext(ctx)
			if tc.Attempt > 1 {
				return tc.Attempt, nil
			}
			select {
			case <-ctx.Done():
				causes <- context.Cause(ctx)
				return 0, ctx.Err()
			case <-time.After(6 * time.Second):
				causes <- nil
				return tc.Attempt, nil
			}
		})
		q.Register(task)
		ctx, stop := context.WithCancel(bg)
		defer stop()
		go q.Run(ctx)
		r, err := task.Enqueue(bg, q, 1)
		if err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(bg, 60*time.Second)
		defer cancel()
		v, err := r.Wait(wctx)
		if err != nil {
			t.Fatal(err)
		}
		cause := <-causes
		if strict {
			if v != 1 || cause != nil {
				t.Fatalf("with a store: attempt %d succeeded, first run ended by %v; want attempt 1, uninterrupted", v, cause)
			}
			return
		}
		if v != 2 || cause == nil || !strings.Contains(cause.Error(), "lease lost") {
			t.Fatalf("alone: attempt %d succeeded, first run ended by %v; want attempt 2 after a lost lease", v, cause)
		}
	})
}

func prefixOf(raw string) string {
	u, _ := url.Parse(raw)
	return u.Query().Get("prefix")
}

// testLogger logs through t, so that docket's warnings show with a failure.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(logWriter{t}, nil))
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// Readiness follows a private node that is killed and restarted;
// liveness stays true.
func TestReadinessFollowsTheServer(t *testing.T) {
	n := amqptest.StartNode(t, "", 30*time.Minute)
	stop := func() {
		// RabbitMQ 3.10 can lose a quorum queue declared less than about
		// a second before the node is killed (it comes back with no
		// leader, and every consume on it fails): let it settle first.
		time.Sleep(2 * time.Second)
		n.Kill()
	}
	probetest.FollowServer(t, n.URL(), []docket.Option{docket.Logger(testLogger(t))}, stop, n.Start)
}
