// Package celerytest runs Celery 5.2 (Debian's python3-celery) beside
// docket's tests: a small Celery app (the celeryapp folder) whose broker
// and result backend are the test Redis, scripts that call or send its
// tasks, and its worker.
package celerytest

import (
	"context"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	goredis "github.com/redis/go-redis/v9"
)

// App is the Celery app on the test brokers.
type App struct {
	URL     string          // DOCKET_TEST_REDIS_URL
	Broker  string          // the app's broker: URL, or DOCKET_TEST_AMQP_URL
	Backend string          // the app's result backend: URL, or rpc://
	Redis   *goredis.Client // a client on URL
	dir     string          // the app's folder
	module  string          // the app's module, for celery -A
}

// New returns the app on DOCKET_TEST_REDIS_URL. It skips without the URL;
// without Celery it skips, or fails under CI, which installs it.
func New(t testing.TB) *App {
	t.Helper()
	base := os.Getenv("DOCKET_TEST_REDIS_URL")
	if base == "" {
		t.Skip("DOCKET_TEST_REDIS_URL is not set; skipping the tests against Celery")
	}
	if err := exec.Command("/usr/bin/python3", "-c", "import celery, redis").Run(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("Celery is not installed (apt-get install python3-celery python3-redis): %v", err)
		}
		t.Skipf("Celery is not installed (apt-get install python3-celery python3-redis): %v", err)
	}
	opts, err := goredis.ParseURL(base)
	if err != nil {
		t.Fatal(err)
	}
	rdb := goredis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	_, file, _, _ := runtime.Caller(0)
	return &App{URL: base, Broker: base, Backend: base, Redis: rdb, dir: filepath.Join(filepath.Dir(file), "celeryapp"), module: "tasks"}
}

// NewAMQP returns the app on DOCKET_TEST_AMQP_URL as its broker, with the
// Redis result backend, or Celery's rpc backend when rpc is set. It skips
// without the URLs, as New does.
func NewAMQP(t testing.TB, rpc bool) *App {
	t.Helper()
	amqpURL := os.Getenv("DOCKET_TEST_AMQP_URL")
	if amqpURL == "" {
		t.Skip("DOCKET_TEST_AMQP_URL is not set; skipping the tests against Celery on RabbitMQ")
	}
	a := New(t)
	a.Broker = amqpURL
	if rpc {
		a.Backend = "rpc://"
	}
	return a
}

// Python returns a command that runs Debian's python3 with args in the
// app's folder, with the app's broker and backend in its environment.
func (a *App) Python(args ...string) *exec.Cmd {
	cmd := exec.Command("/usr/bin/python3", args...)
	cmd.Dir = a.dir
	cmd.Env = append(os.Environ(), "CELERY_BROKER="+a.Broker, "CELERY_BACKEND="+a.Backend, "PYTHONDONTWRITEBYTECODE=1")
	return cmd
}

// Worker starts a Celery worker (one process, the solo pool) on queue,
// waits until it says it is ready (consuming), and returns a function
// that stops it (SIGTERM to its process group, which Celery answers with
// a warm shutdown) and returns what it logged; the test's cleanup stops
// it too.
func (a *App) Worker(t testing.TB, queue string) (stop func() string) {
	t.Helper()
	w := a.Python("-m", "celery", "-A", a.module, "worker", "-Q", queue, "-P", "solo", "-c", "1",
		"--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "info", "-n", queue+"@localhost")
	var log Buffer
	w.Stdout, w.Stderr = &log, &log
	w.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop = func() string {
		once.Do(func() {
			syscall.Kill(-w.Process.Pid, syscall.SIGTERM)
			w.Wait()
		})
		return log.String()
	}
	t.Cleanup(func() { stop() })
	for deadline := time.Now().Add(time.Minute); !strings.Contains(log.String(), " ready."); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the Celery worker did not say it was ready within a minute:\n%s", stop())
		}
	}
	return stop
}

// In returns the app whose module is in dir instead (a path relative to
// the test's package, such as an example's).
func (a *App) In(dir, module string) *App {
	b := *a
	b.dir, _ = filepath.Abs(dir)
	b.module = module
	return &b
}

// DocketURL is the URL a docket Queue opens to share the app's queues and
// results, with the URL parameters params (such as "default_queue=q").
// The records docket writes expire after ten minutes, as the app's own do
// after an hour, so that tests leave nothing for long.
func (a *App) DocketURL(params ...string) string {
	params = append([]string{"result_expires=600"}, params...)
	if a.Broker == a.URL {
		return "celery+" + a.URL + "?" + strings.Join(params, "&")
	}
	return "celery+" + a.Broker + "?backend=" + url.QueryEscape(a.Backend) + "&" + strings.Join(params, "&")
}

// Forget deletes, after the test, the queues (on Redis their lists of
// every priority and kombu's bindings; on RabbitMQ the queues and their
// exchanges), and the result records of ids.
func (a *App) Forget(t testing.TB, queues []string, ids ...string) {
	t.Cleanup(func() {
		ctx := context.Background()
		if a.Broker != a.URL {
			if conn, err := amqp.Dial(a.Broker); err == nil {
				if ch, err := conn.Channel(); err == nil {
					for _, q := range queues {
						ch.QueueDelete(q, false, false, false)
						ch.ExchangeDelete(q, false, false)
					}
				}
				conn.Close()
			}
		}
		var keys []string
		for _, q := range queues {
			keys = append(keys, "_kombu.binding."+q, q, q+"\x06\x163", q+"\x06\x166", q+"\x06\x169")
		}
		for _, id := range ids {
			keys = append(keys, "celery-task-meta-"+id)
		}
		for len(keys) > 0 {
			n := min(len(keys), 500)
			a.Redis.Unlink(ctx, keys[:n]...)
			keys = keys[n:]
		}
	})
}

// Buffer is a strings.Builder safe for concurrent writers (a process's
// two pipes, a program under test and its goroutines).
type Buffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
