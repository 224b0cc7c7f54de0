package docket_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/docketq/docket"
)

// A cancel that Cancel accepted is never lost: a task whose worker gives it
// back (a graceful stop releasing a prefetched task, or a handler that
// outlived the shutdown grace) or schedules a retry while the cancel is
// pending ends cancelled, and no later worker runs it.

// onCancelBackends runs fn on a fresh SQLite file and, when
// DOCKET_TEST_REDIS_URL is set, on a fresh Redis key prefix.
func onCancelBackends(t *testing.T, fn func(t *testing.T, url string)) {
	t.Run("SQLite", func(t *testing.T) {
		t.Parallel()
		fn(t, "sqlite:"+filepath.Join(t.TempDir(), "q.db"))
	})
	t.Run("Redis", func(t *testing.T) {
		t.Parallel()
		fn(t, cleanRedisURL(t))
	})
}

// cleanRedisURL returns a Redis URL with a fresh key prefix (see redisURL)
// whose keys are deleted when the test ends.
func cleanRedisURL(t *testing.T) string {
	u := redisURL(t)
	prefix := u[strings.LastIndex(u, "prefix=")+len("prefix="):]
	t.Cleanup(func() {
		opts, err := goredis.ParseURL(os.Getenv("DOCKET_TEST_REDIS_URL"))
		if err != nil {
			return
		}
		c := goredis.NewClient(opts)
		defer c.Close()
		ctx, cancel := context.WithTimeout(bg, 10*time.Second)
		defer cancel()
		iter := c.Scan(ctx, 0, "{"+prefix+"}:*", 1000).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
	})
	return u
}

func openCancelQueue(t *testing.T, url string, opts ...docket.Option) *docket.Queue {
	t.Helper()
	q, err := docket.Open(bg, url, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

// startRun starts q.Run; stop cancels its ctx and waits (generously) for it
// to return.
func startRun(t *testing.T, q *docket.Queue) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("Run did not return within 30s of its ctx ending")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// runCounter counts handler runs per task id.
type runCounter struct {
	mu   sync.Mutex
	runs map[string]int
}

func (c *runCounter) add(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.runs == nil {
		c.runs = map[string]int{}
	}
	c.runs[id]++
	return c.runs[id]
}

func (c *runCounter) get(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.runs[id]
}

func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// waitState polls id's state until it is want.
func waitState(t *testing.T, q *docket.Queue, id string, want docket.State) *docket.TaskInfo {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		info, err := q.Info(bg, id)
		if err == nil && info.State == want {
			return info
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s: state %v (err %v) after 30s; want %v", id, info.State, err, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkCancelled asserts that id ended cancelled, and that waiting for it
// says so.
func checkCancelled(t *testing.T, q *docket.Queue, id string, why string) {
	t.Helper()
	info, err := q.Info(bg, id)
	if err != nil {
		t.Fatalf("Info(%s): %v", id, err)
	}
	if info.State != docket.StateCancelled || !strings.Contains(info.Error, "cancel") {
		t.Errorf("%s: state %v, error %q; want cancelled, with an error saying so", why, info.State, info.Error)
	}
}

// Way (a): Concurrency(1), Prefetch: while one handler runs, the other task
// waits claimed in the worker's prefetch buffer. It is cancelled there;
// the worker stops and releases it; the next worker must not run it.
func TestCancelSurvivesReleaseOfPrefetchedTask(t *testing.T) {
	t.Parallel()
	onCancelBackends(t, func(t *testing.T, url string) {
		var runs runCounter
		started := make(chan string, 4)
		var first sync.Once
		task := docket.NewTask("cancel.prefetched", func(ctx context.Context, n int) (int, error) {
			tc, _ := docket.FromContext(ctx)
			runs.add(tc.ID)
			started <- tc.ID
			block := false
			first.Do(func() { block = true })
			if block {
				// The first handler holds the only slot until shutdown.
				<-ctx.Done()
				return 0, ctx.Err()
			}
			return n, nil
		})
		q := openCancelQueue(t, url, docket.Concurrency(1), docket.Prefetch(4), docket.ShutdownGrace(100*time.Millisecond))
		q.Register(task)
		rs, err := task.EnqueueMany(bg, q, []int{1, 2})
		if err != nil {
			t.Fatal(err)
		}
		stop := startRun(t, q)
		running := recv(t, started, "the first handler to start")
		held := rs[0]
		if held.ID() == running {
			held = rs[1]
		}
		// The other task is claimed (prefetched) but cannot start.
		waitState(t, q, held.ID(), docket.StateRunning)
		if err := held.Cancel(bg); err != nil {
			t.Fatalf("Cancel: %v", err)
		}
		if info, err := held.Info(bg); err != nil || !info.CancelRequested {
			t.Fatalf("after Cancel of a prefetched task: %+v, %v", info, err)
		}
		stop()
		checkCancelled(t, q, held.ID(), "prefetched task cancelled, then released by a graceful stop")

		// A new worker runs the released task that was not cancelled, and
		// not the cancelled one.
		q2 := openCancelQueue(t, url, docket.Concurrency(1))
		q2.Register(task)
		startRun(t, q2)
		for _, r := range rs {
			if r.ID() == held.ID() {
				continue
			}
			if _, err := r.Wait(waitCtx(t)); err != nil {
				t.Fatalf("the task released without a cancel: %v", err)
			}
		}
		if _, err := held.Wait(waitCtx(t)); !errors.Is(err, docket.ErrTaskCancelled) {
			t.Fatalf("Wait on the cancelled task = %v; want ErrTaskCancelled", err)
		}
		if n := runs.get(held.ID()); n != 0 {
			t.Fatalf("the cancelled task ran %d times", n)
		}
	})
}

// Way (b): a handler that ignores its ctx outlives ShutdownGrace and is
// released by the stopping worker; a cancel accepted before the release
// (while the worker stops, or just before) ends the task cancelled, and
// the handler's late success is fenced out.
func TestCancelSurvivesReleaseOfStubbornHandler(t *testing.T) {
	t.Parallel()
	for _, order := range []string{"StopThenCancel", "CancelThenStop"} {
		t.Run(order, func(t *testing.T) {
			t.Parallel()
			onCancelBackends(t, func(t *testing.T, url string) {
				var runs runCounter
				started := make(chan string, 4)
				unblock := make(chan struct{})
				t.Cleanup(func() {
					select {
					case <-unblock:
					default:
						close(unblock)
					}
				})
				task := docket.NewTask("cancel.stubborn", func(ctx context.Context, n int) (int, error) {
					tc, _ := docket.FromContext(ctx)
					runs.add(tc.ID)
					started <- tc.ID
					if n == 1 {
						<-unblock // ignores ctx
					}
					return n, nil
				})
				// Released at about ShutdownGrace + LeaseDuration/3 after
				// the stop begins.
				q := openCancelQueue(t, url, docket.ShutdownGrace(500*time.Millisecond), docket.LeaseDuration(1500*time.Millisecond))
				q.Register(task)
				r, err := task.Enqueue(bg, q, 1)
				if err != nil {
					t.Fatal(err)
				}
				stop := startRun(t, q)
				recv(t, started, "the handler to start")
				cancel := func() {
					if err := r.Cancel(bg); err != nil {
						t.Fatalf("Cancel: %v", err)
					}
					if info, _ := r.Info(bg); info == nil || info.State != docket.StateRunning || !info.CancelRequested {
						// The release came first: the cancel then found
						// the task waiting and cancelled it at once.
						t.Logf("the cancel landed after the release: %+v", info)
					}
				}
				if order == "CancelThenStop" {
					cancel()
					stop()
				} else {
					stopped := make(chan struct{})
					go func() { stop(); close(stopped) }()
					cancel()
					recv(t, stopped, "Run to return")
				}
				checkCancelled(t, q, r.ID(), "cancel accepted while a stopping worker's handler ignored its ctx")
				close(unblock) // the late success is fenced out
				sentinel, err := task.Enqueue(bg, q, 2)
				if err != nil {
					t.Fatal(err)
				}
				q2 := openCancelQueue(t, url)
				q2.Register(task)
				startRun(t, q2)
				if _, err := sentinel.Wait(waitCtx(t)); err != nil {
					t.Fatal(err)
				}
				if _, err := r.Wait(waitCtx(t)); !errors.Is(err, docket.ErrTaskCancelled) {
					t.Fatalf("Wait on the cancelled task = %v; want ErrTaskCancelled", err)
				}
				if n := runs.get(r.ID()); n != 1 {
					t.Fatalf("the cancelled task ran %d times, want 1 (the attempt that was released)", n)
				}
			})
		})
	}
}

// A failed attempt whose task was cancelled from another process before
// the worker heard of it is not retried: the task ends cancelled, with the
// attempt's error in the reason.
func TestCancelSurvivesRetry(t *testing.T) {
	t.Parallel()
	onCancelBackends(t, func(t *testing.T, url string) {
		var runs runCounter
		started := make(chan string, 4)
		cancelled := make(chan struct{})
		task := docket.NewTask("cancel.retry", func(ctx context.Context, n int) (int, error) {
			tc, _ := docket.FromContext(ctx)
			runs.add(tc.ID)
			if n == 1 && tc.Attempt == 1 {
				started <- tc.ID
				<-cancelled
				return 0, errors.New("flaky dependency")
			}
			return n, nil
		}, docket.MaxRetries(3), docket.RetryBackoff(docket.Exponential{Base: 10 * time.Millisecond, Max: 10 * time.Millisecond}))
		producer := openCancelQueue(t, url)
		producer.Register(task)
		// The worker hears of other processes' writes only after a minute
		// (on SQLite), so its handler fails before it learns of the cancel.
		worker := openCancelQueue(t, url, docket.PollInterval(time.Minute))
		worker.Register(task)
		r, err := task.Enqueue(bg, producer, 1)
		if err != nil {
			t.Fatal(err)
		}
		startRun(t, worker)
		recv(t, started, "the first attempt to start")
		if err := r.Cancel(bg); err != nil {
			t.Fatalf("Cancel: %v", err)
		}
		close(cancelled)
		if _, err := r.Wait(waitCtx(t)); !errors.Is(err, docket.ErrTaskCancelled) {
			t.Fatalf("Wait = %v; want ErrTaskCancelled", err)
		}
		info, err := r.Info(bg)
		if err != nil {
			t.Fatal(err)
		}
		if info.Attempt != 1 || !strings.Contains(info.Error, "flaky dependency") {
			t.Errorf("after a failed attempt with a cancel pending: attempt %d, error %q", info.Attempt, info.Error)
		}
		sentinel, err := task.Enqueue(bg, producer, 2)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sentinel.Wait(waitCtx(t)); err != nil {
			t.Fatal(err)
		}
		if n := runs.get(r.ID()); n != 1 {
			t.Fatalf("the cancelled task ran %d times", n)
		}
	})
}
