// Package celerytest runs Celery 5.2 (Debian's python3-celery) beside
// docket's tests: a small Celery app (the celeryapp folder) whose broker
// and result backend are the test Redis, scripts that call or send its
// tasks, and its worker.
package celerytest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"

	goredis "github.com/redis/go-redis/v9"
)

// App is the Celery app on the test Redis.
type App struct {
	URL   string          // DOCKET_TEST_REDIS_URL: the app's broker and backend
	Redis *goredis.Client // a client on it
	dir   string
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
	return &App{URL: base, Redis: rdb, dir: filepath.Join(filepath.Dir(file), "celeryapp")}
}

// Python returns a command that runs Debian's python3 with args in the
// app's folder, with the app's broker and backend in its environment.
func (a *App) Python(args ...string) *exec.Cmd {
	cmd := exec.Command("/usr/bin/python3", args...)
	cmd.Dir = a.dir
	cmd.Env = append(os.Environ(), "CELERY_BROKER="+a.URL, "CELERY_BACKEND="+a.URL, "PYTHONDONTWRITEBYTECODE=1")
	return cmd
}

// Worker starts a Celery worker (one process, the solo pool) on queue and
// returns a function that stops it (SIGTERM to its process group, which
// Celery answers with a warm shutdown) and returns what it logged; the
// test's cleanup stops it too.
func (a *App) Worker(t testing.TB, queue string) (stop func() string) {
	t.Helper()
	w := a.Python("-m", "celery", "-A", "tasks", "worker", "-Q", queue, "-P", "solo", "-c", "1",
		"--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "warning", "-n", queue+"@localhost")
	var log syncBuffer
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
	return stop
}

// Forget deletes, after the test, the queues' lists (every priority),
// kombu's bindings, and the result records of ids.
func (a *App) Forget(t testing.TB, queues []string, ids ...string) {
	t.Cleanup(func() {
		ctx := context.Background()
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

// syncBuffer is a strings.Builder safe for a process's two pipes.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
