package docket_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/history"
	"github.com/docketq/docket/internal/longtest"
	_ "github.com/docketq/docket/transport/amqp"  // and on RabbitMQ
	_ "github.com/docketq/docket/transport/redis" // fault tests also run on Redis
)

// Tests in this file run workers in other OS processes: the test binary
// re-executes itself with DOCKET_TEST_ROLE=worker.

func TestMain(m *testing.M) {
	switch os.Getenv("DOCKET_TEST_ROLE") {
	case "worker":
		os.Exit(workerMain())
	case "producer":
		os.Exit(producerMain())
	case "diskfull":
		os.Exit(diskFullMain())
	case "readonly":
		os.Exit(readOnlyMain())
	}
	os.Exit(m.Run())
}

// Tasks shared by the test and its worker processes.
var (
	echoTask = docket.NewTask("proc.echo", func(ctx context.Context, s string) (string, error) {
		return "echo " + s + " from " + fmt.Sprint(os.Getpid()), nil
	})
	// blockTask announces itself and waits for its ctx (cancel, shutdown).
	blockTask = docket.NewTask("proc.block", func(ctx context.Context, _ int) (string, error) {
		tc, _ := docket.FromContext(ctx)
		fmt.Printf("started %s %d\n", tc.ID, tc.Attempt)
		<-ctx.Done()
		return "", ctx.Err()
	})
	// stuckTask hangs on its first attempt, ignoring ctx, and succeeds on
	// later ones after a delay given in milliseconds.
	stuckTask = docket.NewTask("proc.stuck", func(ctx context.Context, ms int) (string, error) {
		tc, _ := docket.FromContext(ctx)
		fmt.Printf("started %s %d\n", tc.ID, tc.Attempt)
		if tc.Attempt == 1 {
			time.Sleep(time.Duration(ms) * time.Millisecond)
			return fmt.Sprintf("stale result of attempt 1 in %d", os.Getpid()), nil
		}
		return fmt.Sprintf("attempt %d in %d", tc.Attempt, os.Getpid()), nil
	})
)

// tickTask is fired by the "fast" schedule of beat workers.
var tickTask = docket.NewTask("proc.tick", func(ctx context.Context, _ int) (int, error) { return 0, nil }, docket.IgnoreResult())

// crashTask kills its process on every attempt: mode "exit" calls
// os.Exit, mode "goroutine-panic" panics in a goroutine the handler
// started, which no Go code can recover.
var crashTask = docket.NewTask("proc.crash", func(ctx context.Context, mode string) (int, error) {
	tc, _ := docket.FromContext(ctx)
	fmt.Printf("started %s %d\n", tc.ID, tc.Attempt)
	if mode == "goroutine-panic" {
		go func() { panic("boom in a goroutine the handler started") }()
		time.Sleep(time.Minute)
	}
	os.Exit(3)
	return 0, nil
}, docket.MaxRetries(2))

func workerMain() int {
	lease, _ := time.ParseDuration(os.Getenv("DOCKET_TEST_LEASE"))
	if lease == 0 {
		lease = 30 * time.Second
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	conc, _ := strconv.Atoi(os.Getenv("DOCKET_TEST_CONCURRENCY"))
	if conc == 0 {
		conc = 10
	}
	openHistory()
	q, err := docket.Open(ctx, os.Getenv("DOCKET_TEST_DB"), docket.LeaseDuration(lease), docket.ShutdownGrace(time.Second), docket.Concurrency(conc),
		docket.ResultStore(os.Getenv("DOCKET_RESULT_URL")),
		docket.Logger(slog.New(leaseLog{slog.NewTextHandler(os.Stderr, nil)})))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer q.Close()
	if err := q.Register(echoTask, blockTask, stuckTask, crashTask, tickTask, faultTask, tallyTask, chordMemberTask, chordBodyTask); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if os.Getenv("DOCKET_TEST_BEAT") != "" {
		if err := tickTask.Schedule(q, "fast", docket.Every(25*time.Millisecond), 0, docket.MisfireGrace(10*time.Second)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	fmt.Println("ready")
	if err := q.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// leaseLog records in the history each lease docket reports lost (a worker
// starved of CPU past its lease, or one whose outcome was refused), which
// excuses an overlap with the next attempt, and each task published again
// because the broker had lost it.
type leaseLog struct{ slog.Handler }

func (h leaseLog) Handle(ctx context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "published again") {
		r.Attrs(func(a slog.Attr) bool {
			if ids, ok := a.Value.Any().([]string); ok && a.Key == "ids" {
				for _, id := range ids {
					record(history.Event{Kind: history.Resent, ID: id})
				}
			}
			return true
		})
	}
	if strings.Contains(r.Message, "lease lost") {
		e := history.Event{Kind: history.LeaseLost}
		e.ID, e.Attempt = taskOf(r)
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "lease_until" {
				e.Until = a.Value.Time()
			}
			return true
		})
		if e.ID != "" {
			record(e)
		}
	}
	return h.Handler.Handle(ctx, r)
}

func (h leaseLog) WithAttrs(as []slog.Attr) slog.Handler { return leaseLog{h.Handler.WithAttrs(as)} }
func (h leaseLog) WithGroup(name string) slog.Handler    { return leaseLog{h.Handler.WithGroup(name)} }

type proc struct {
	cmd   *exec.Cmd
	lines chan string
}

// startWorker runs a worker process on db and waits until it is ready.
func startWorker(t *testing.T, db string, env ...string) *proc {
	t.Helper()
	p := startRole(t, "worker", db, env...)
	p.expect(t, "ready")
	return p
}

// expect waits for a line starting with prefix and returns it.
func (p *proc) expect(t *testing.T, prefix string) string {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("worker exited before printing %q", prefix)
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-timeout:
			t.Fatalf("worker did not print %q", prefix)
		}
	}
}

func openFile(t *testing.T, path string, opts ...docket.Option) *docket.Queue {
	t.Helper()
	q, err := docket.Open(bg, "sqlite:"+path, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	if err := q.Register(echoTask, blockTask, stuckTask, crashTask, tickTask, faultTask, tallyTask, chordMemberTask, chordBodyTask); err != nil {
		t.Fatal(err)
	}
	return q
}

// One process enqueues and waits; another runs the task. A cancel issued
// in the first stops the handler running in the second.
func TestTwoProcessesShareOneFile(t *testing.T) {
	t.Parallel()
	db := filepath.Join(t.TempDir(), "shared.db")
	producer := openFile(t, db)
	w := startWorker(t, db)

	r, err := echoTask.Enqueue(bg, producer, "hello")
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.Wait(waitCtx(t))
	want := fmt.Sprintf("echo hello from %d", w.cmd.Process.Pid)
	if err != nil || got != want {
		t.Fatalf("Wait = %q, %v; want %q", got, err, want)
	}

	b, err := blockTask.Enqueue(bg, producer, 1)
	if err != nil {
		t.Fatal(err)
	}
	w.expect(t, "started "+b.ID())
	if err := b.Cancel(bg); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Wait(waitCtx(t)); !errors.Is(err, docket.ErrTaskCancelled) {
		t.Fatalf("cross-process cancel: Wait = %v", err)
	}

	// SIGTERM: the worker stops gracefully, releasing what it runs.
	b2, _ := blockTask.Enqueue(bg, producer, 2)
	w.expect(t, "started "+b2.ID())
	w.cmd.Process.Signal(syscall.SIGTERM)
	if err := w.cmd.Wait(); err != nil {
		t.Fatalf("worker exit after SIGTERM: %v", err)
	}
	if info, _ := b2.Info(bg); info.State != docket.StateReady || info.Attempt != 0 {
		t.Fatalf("after graceful stop: %v attempt %d", info.State, info.Attempt)
	}
}

// A worker killed with SIGKILL mid-task: once its lease lapses another
// worker runs the task to completion.
func TestKilledWorkerTaskIsRescued(t *testing.T) {
	t.Parallel()
	db := filepath.Join(t.TempDir(), "kill.db")
	producer := openFile(t, db)
	a := startWorker(t, db, "DOCKET_TEST_LEASE=1s")
	r, _ := stuckTask.Enqueue(bg, producer, 3_600_000)
	a.expect(t, "started "+r.ID()+" 1")
	syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
	a.cmd.Wait()

	b := startWorker(t, db, "DOCKET_TEST_LEASE=1s")
	b.expect(t, "started "+r.ID()+" 2")
	got, err := r.Wait(waitCtx(t))
	if want := fmt.Sprintf("attempt 2 in %d", b.cmd.Process.Pid); err != nil || got != want {
		t.Fatalf("Wait = %q, %v; want %q", got, err, want)
	}
}

// A frozen worker (SIGSTOP past its lease) resumes after another worker
// finished its task: its late result is fenced out.
// freezeOutsideWrite stops p at a moment it holds no write lock. SQLite has
// one writer at a time: a process frozen inside a write transaction (a
// heartbeat, say) blocks every writer until it resumes or dies, which is a
// property of SQLite, not what this test is about.
func freezeOutsideWrite(t *testing.T, p *proc, db string) {
	t.Helper()
	probe, err := sql.Open("sqlite", "file:"+db+"?_pragma=busy_timeout(50)&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	for range 100 {
		syscall.Kill(p.cmd.Process.Pid, syscall.SIGSTOP)
		// kill returns before the process has stopped: until each of
		// its threads has handled the signal (which, on a busy machine,
		// can take a while), they run on, and may take the write lock
		// after the probe below found it free.
		waitStopped(t, p.cmd.Process.Pid)
		tx, err := probe.Begin()
		if err == nil {
			tx.Rollback()
			return
		}
		syscall.Kill(p.cmd.Process.Pid, syscall.SIGCONT)
		time.Sleep(time.Millisecond)
	}
	t.Fatal("could not freeze the worker outside a write transaction")
}

// waitStopped waits until every thread of process pid is stopped (state T
// in /proc/<pid>/task/<tid>/stat).
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; {
		if allStopped(t, pid) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d did not stop within 30s of SIGSTOP", pid)
		}
		time.Sleep(time.Millisecond)
	}
}

func allStopped(t *testing.T, pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatalf("threads of process %d: %v", pid, err)
	}
	for _, task := range tasks {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			return false // a thread that just exited; look again
		}
		// pid (comm) state ...: comm may hold spaces and parentheses.
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || i+2 >= len(s) || s[i+2] != 'T' {
			return false
		}
	}
	return true
}

func TestFrozenWorkerCannotOverwrite(t *testing.T) {
	t.Parallel()
	db := filepath.Join(t.TempDir(), "freeze.db")
	producer := openFile(t, db)
	a := startWorker(t, db, "DOCKET_TEST_LEASE=1s")
	r, _ := stuckTask.Enqueue(bg, producer, 1500)
	a.expect(t, "started "+r.ID()+" 1")
	freezeOutsideWrite(t, a, db)

	b := startWorker(t, db, "DOCKET_TEST_LEASE=1s")
	b.expect(t, "started "+r.ID()+" 2")
	want := fmt.Sprintf("attempt 2 in %d", b.cmd.Process.Pid)
	if got, err := r.Wait(waitCtx(t)); err != nil || got != want {
		t.Fatalf("Wait = %q, %v", got, err)
	}
	syscall.Kill(a.cmd.Process.Pid, syscall.SIGCONT)
	time.Sleep(2500 * time.Millisecond) // attempt 1 returns and tries to record its result
	info, err := r.Info(bg)
	if err != nil || info.State != docket.StateSucceeded || info.Attempt != 2 || string(info.Result) != `"`+want+`"` {
		t.Fatalf("after the frozen worker resumed: %+v, %v", info, err)
	}
}

// A task that kills its worker process on every attempt ends failed
// ("worker lost") after MaxRetries+1 claims, while other tasks keep flowing.
func TestCrashingTaskEndsFailed(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"exit", "goroutine-panic"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			testCrashingTask(t, mode)
		})
	}
}

func testCrashingTask(t *testing.T, mode string) {
	db := filepath.Join(t.TempDir(), "crash.db")
	producer := openFile(t, db)
	poison, _ := crashTask.Enqueue(bg, producer, mode, docket.Priority(9))
	var healthy []*docket.Result[string]
	for i := range 3 {
		r, _ := echoTask.Enqueue(bg, producer, fmt.Sprint(i))
		healthy = append(healthy, r)
	}
	for attempt := 1; attempt <= 3; attempt++ {
		w := startWorker(t, db, "DOCKET_TEST_LEASE=500ms")
		w.expect(t, fmt.Sprintf("started %s %d", poison.ID(), attempt))
		if err := w.cmd.Wait(); err == nil {
			t.Fatal("the crashing handler did not kill its worker")
		}
	}
	startWorker(t, db, "DOCKET_TEST_LEASE=500ms")
	_, err := poison.Wait(waitCtx(t))
	var te *docket.TaskError
	if !errors.As(err, &te) || te.State != docket.StateFailed || te.Attempt != 3 || !strings.Contains(te.Message, "worker lost") {
		t.Fatalf("poison task: %v", err)
	}
	for _, r := range healthy {
		if _, err := r.Wait(waitCtx(t)); err != nil {
			t.Fatalf("healthy task: %v", err)
		}
	}
}

// Two processes run the same schedule on one file; one of them is killed
// and restarted at random moments. Across 200 slots (1,000 with
// DOCKET_TEST_LONG=1) every slot fires exactly once: none twice, none
// missing.
func TestBeatTwoProcessesWithKills(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("seconds of slots; skipped with -short")
	}
	nSlots := longtest.Pick(200, 1000)
	db := filepath.Join(t.TempDir(), "beat.db")
	startWorker(t, db, "DOCKET_TEST_BEAT=1")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	t0 := time.Now()
	kills := 0
	for time.Since(t0) < time.Duration(nSlots)*25*time.Millisecond {
		b := startWorker(t, db, "DOCKET_TEST_BEAT=1")
		time.Sleep(time.Duration(100+rng.IntN(1400)) * time.Millisecond)
		syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
		b.cmd.Wait()
		kills++
	}
	q := openFile(t, db)
	// The slots fired so far, each with how many tasks it made.
	fired := func() (slots []time.Time, perSlot map[time.Time]int) {
		perSlot = map[time.Time]int{}
		for after := ""; ; {
			page, err := q.List(bg, docket.ListOptions{Name: "proc.tick", After: after, Limit: 1000})
			if err != nil {
				t.Fatal(err)
			}
			for _, in := range page {
				s, err := time.Parse(time.RFC3339Nano, in.Headers["docket.slot"])
				if err != nil {
					t.Fatal(err)
				}
				if perSlot[s] == 0 {
					slots = append(slots, s)
				}
				perSlot[s]++
			}
			if len(page) < 1000 {
				break
			}
			after = page[len(page)-1].ID
		}
		slices.SortFunc(slots, time.Time.Compare)
		return slots, perSlot
	}
	// A loaded machine slows the schedulers' start and their firing; the
	// surviving one catches up on every slot, so wait for the count
	// rather than for the clock.
	slots, perSlot := fired()
	for deadline := time.Now().Add(2 * time.Minute); len(slots) < nSlots; slots, perSlot = fired() {
		if time.Now().After(deadline) {
			t.Fatalf("only %d slots fired in %v", len(slots), time.Since(t0))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i, s := range slots {
		if perSlot[s] != 1 {
			t.Errorf("slot %v fired %d times", s, perSlot[s])
		}
		if i > 0 && s.Sub(slots[i-1]) != 25*time.Millisecond {
			t.Errorf("slots missing between %v and %v", slots[i-1], s)
		}
	}
	t.Logf("%d slots, each once, across %d kills of the second scheduler", len(slots), kills)
}
