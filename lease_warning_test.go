package docket_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/longtest"
)

// warnings records docket's "lease lost" log lines.
type warnings struct {
	slog.Handler
	mu   sync.Mutex
	seen []lostLease
}

type lostLease struct {
	id      string
	attempt int
	msg     string
}

func (h *warnings) Enabled(context.Context, slog.Level) bool { return true }

func (h *warnings) Handle(_ context.Context, r slog.Record) error {
	if !strings.Contains(r.Message, "lease lost") {
		return nil
	}
	l := lostLease{msg: r.Message}
	l.id, l.attempt = taskOf(r)
	h.mu.Lock()
	h.seen = append(h.seen, l)
	h.mu.Unlock()
	return nil
}

// taskOf reads the task a log line is about: docket's lines carry the
// group task (id, name, queue, attempt).
func taskOf(r slog.Record) (id string, attempt int) {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key != "task" || a.Value.Kind() != slog.KindGroup {
			return true
		}
		for _, g := range a.Value.Group() {
			switch g.Key {
			case "id":
				id = g.Value.String()
			case "attempt":
				attempt = int(g.Value.Int64())
			}
		}
		return false
	})
	return id, attempt
}

// A "lease lost" warning means a lease was lost: never one for an attempt
// whose outcome was recorded. With short leases renewals keep crossing the
// completions; a warned attempt must not be the one that finished the task.
// 1,000 tasks (3,000 with DOCKET_TEST_LONG=1).
func TestNoLeaseLostWarningForCompletedTasks(t *testing.T) {
	t.Parallel()
	log := &warnings{}
	q, err := docket.Open(bg, "sqlite:"+filepath.Join(t.TempDir(), "q.db"),
		docket.LeaseDuration(150*time.Millisecond), docket.Concurrency(16), docket.Logger(slog.New(log)))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	// A loaded machine can starve a 150 ms lease several times running
	// (CI saw a task fail after four attempts that way): plenty of retries
	// keep every task to its success, and the warnings are what is checked.
	task := docket.NewTask("lease.quick", func(_ context.Context, n int) (int, error) {
		time.Sleep(time.Millisecond)
		return n, nil
	}, docket.MaxRetries(50))
	q.Register(task)
	rs, err := task.EnqueueMany(bg, q, make([]int, longtest.Pick(1_000, 3_000)))
	if err != nil {
		t.Fatal(err)
	}
	runWorkers(t, q)
	for _, r := range rs {
		if _, err := r.Wait(waitCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	for _, l := range log.seen {
		if l.id == "" || l.attempt == 0 {
			t.Fatalf("%q without its task's id and attempt", l.msg)
		}
		info, err := q.Info(bg, l.id)
		if err != nil {
			t.Fatal(err)
		}
		if info.Attempt == l.attempt {
			t.Errorf("%q for task %s attempt %d, the attempt that finished it (%s)", l.msg, l.id, l.attempt, info.State)
		}
	}
	t.Logf("%d lease-lost warnings, none for a finishing attempt", len(log.seen))
}
