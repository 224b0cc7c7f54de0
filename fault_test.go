package docket_test

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/dockettest"
	"github.com/docketq/docket/internal/amqptest"
	"github.com/docketq/docket/internal/history"
	"github.com/docketq/docket/internal/longtest"
	"github.com/docketq/docket/internal/redistest"
)

// The fault suite: processes killed at exact steps and at random, frozen,
// starved of disk, locked out; every scenario ends with the history checker
// (internal/history) reconciling what producers and handlers recorded with
// the final state of every task. docs/reliability.md lists the scenarios.

// rec is the history recorder of a worker or producer process (nil in the
// test process itself).
var rec *history.Recorder

func openHistory() {
	if dir := os.Getenv("DOCKET_TEST_HISTORY"); dir != "" {
		r, err := history.Open(filepath.Join(dir, fmt.Sprintf("%d.jsonl", os.Getpid())))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		rec = r
	}
}

func record(e history.Event) {
	if rec != nil {
		rec.Add(e)
	}
}

// FaultArgs steer faultTask.
type FaultArgs struct {
	SleepMS   int `json:"sleep_ms"`
	FailTimes int `json:"fail_times"` // fail this many attempts first
}

// faultTask records its attempts in the history and returns "attempt:<n>",
// which lets the checker see which attempt wrote the stored result.
var faultTask = docket.NewTask("fault.work", func(ctx context.Context, a FaultArgs) (string, error) {
	tc, _ := docket.FromContext(ctx)
	record(history.Event{Kind: history.Start, ID: tc.ID, Attempt: tc.Attempt})
	if a.SleepMS > 0 {
		select {
		case <-time.After(time.Duration(a.SleepMS) * time.Millisecond):
		case <-ctx.Done():
			record(history.Event{Kind: history.End, ID: tc.ID, Attempt: tc.Attempt, Outcome: ctx.Err().Error()})
			return "", ctx.Err()
		}
	}
	if tc.Attempt <= a.FailTimes {
		record(history.Event{Kind: history.End, ID: tc.ID, Attempt: tc.Attempt, Outcome: "planned failure"})
		return "", fmt.Errorf("planned failure of attempt %d", tc.Attempt)
	}
	record(history.Event{Kind: history.End, ID: tc.ID, Attempt: tc.Attempt, Outcome: "ok"})
	return fmt.Sprintf("attempt:%d", tc.Attempt), nil
}, docket.MaxRetries(4), docket.RetryBackoff(docket.Exponential{Base: 50 * time.Millisecond, Max: 200 * time.Millisecond}))

// producerMain enqueues fault tasks until killed, or DOCKET_TEST_LIMIT
// times, DOCKET_TEST_PACE apart: singles and batches of ten, each
// acknowledgement printed and recorded after Enqueue returns.
func producerMain() int {
	ctx := context.Background()
	q, err := docket.Open(ctx, os.Getenv("DOCKET_TEST_DB"), docket.ResultStore(os.Getenv("DOCKET_RESULT_URL")))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer q.Close()
	q.Register(faultTask)
	openHistory()
	rng := rand.New(rand.NewPCG(uint64(os.Getpid()), uint64(time.Now().UnixNano())))
	limit, _ := strconv.Atoi(os.Getenv("DOCKET_TEST_LIMIT"))
	pace, _ := time.ParseDuration(os.Getenv("DOCKET_TEST_PACE")) // between enqueues
	fmt.Println("ready")
	for i := 0; limit == 0 || i < limit; i++ {
		time.Sleep(pace)
		var opts []docket.TaskOption
		var eta time.Time
		key := ""
		if rng.IntN(4) == 0 {
			d := time.Duration(rng.IntN(1500)) * time.Millisecond
			eta = time.Now().Add(d)
			opts = append(opts, docket.Countdown(d))
		}
		if rng.IntN(10) == 0 {
			key = fmt.Sprintf("key-%d", rng.IntN(5))
			opts = append(opts, docket.Unique(key, docket.RejectDuplicate))
		}
		args := FaultArgs{SleepMS: rng.IntN(30), FailTimes: rng.IntN(3) / 2}
		if i%5 == 4 {
			batch := make([]FaultArgs, 10)
			for j := range batch {
				batch[j] = FaultArgs{SleepMS: rng.IntN(10), FailTimes: 0}
			}
			rs, err := faultTask.EnqueueMany(ctx, q, batch, docket.Header("batch", fmt.Sprint(os.Getpid(), "-", i)))
			if err != nil {
				record(history.Event{Kind: history.EnqueueErr, Outcome: err.Error()})
				continue
			}
			ids := make([]string, len(rs))
			for j, r := range rs {
				ids[j] = r.ID()
				record(history.Event{Kind: history.EnqueueOK, ID: r.ID()})
			}
			fmt.Println("ok", strings.Join(ids, " "))
			continue
		}
		r, err := faultTask.Enqueue(ctx, q, args, opts...)
		if err != nil {
			if !errors.Is(err, docket.ErrDuplicate) {
				record(history.Event{Kind: history.EnqueueErr, Outcome: err.Error()})
			}
			continue
		}
		record(history.Event{Kind: history.EnqueueOK, ID: r.ID(), ETA: eta, Key: key})
		fmt.Println("ok", r.ID())
	}
	return 0
}

// startRole starts the test binary in a role; its stdout lines arrive on
// the returned proc. Its stderr (docket's log and errors) is kept and
// shown only if the test fails.
func startRole(t *testing.T, role, db string, env ...string) *proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append(env, "DOCKET_TEST_ROLE="+role, "DOCKET_TEST_DB="+db)...)
	stderr := &tailBuffer{max: 64 << 10}
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, lines: make(chan string, 10_000)}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			default: // nobody reads: drop
			}
		}
		close(p.lines)
		io.Copy(io.Discard, out)
	}()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		if t.Failed() {
			if out := stderr.String(); out != "" {
				t.Logf("stderr of %s process %d:\n%s", role, cmd.Process.Pid, out)
			}
		}
	})
	return p
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu      sync.Mutex
	max     int
	buf     []byte
	dropped bool
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
		b.dropped = true
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dropped {
		return "[…]" + string(b.buf)
	}
	return string(b.buf)
}

// kill SIGKILLs p, waits for it, and records the fault in the history.
func (p *proc) kill(h *history.Recorder) {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	p.cmd.Wait()
	if h != nil {
		h.Add(history.Event{Kind: history.Kill, Proc: p.cmd.Process.Pid})
	}
}

// finalStates reads every task's final state.
func finalStates(t *testing.T, q *docket.Queue) map[string]history.Final {
	t.Helper()
	out := map[string]history.Final{}
	for after := ""; ; {
		page, err := q.List(bg, docket.ListOptions{After: after, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range page {
			var result string
			json.Unmarshal(in.Result, &result)
			out[in.ID] = history.Final{State: in.State.String(), Attempt: in.Attempt, Max: in.MaxRetries + 1,
				Result: result, Created: in.Created, Finished: in.Finished, Key: in.UniqueKey}
		}
		if len(page) < 1000 {
			return out
		}
		after = page[len(page)-1].ID
	}
}

// waitSettled waits until no task is waiting or running.
func waitSettled(t *testing.T, q *docket.Queue, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		left, err := q.List(bg, docket.ListOptions{States: []docket.State{docket.StateScheduled, docket.StateReady, docket.StateRunning}, Limit: 5})
		if err != nil {
			t.Fatal(err)
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			in := left[0]
			t.Fatalf("tasks still unfinished after %v, e.g. %s in state %s (attempt %d, eta %s, started %s, error %q, worker %q)",
				timeout, in.ID, in.State, in.Attempt, in.ETA.Format(time.RFC3339Nano), in.Started.Format(time.RFC3339Nano), in.Error, in.Worker)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkHistory loads the history in dir and fails the test on any
// violated invariant.
func checkHistory(t *testing.T, dir string, q *docket.Queue) ([]history.Event, map[string]history.Final) {
	t.Helper()
	events, err := history.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	final := finalStates(t, q)
	for _, err := range history.Check(events, final, history.Options{ETASkew: 5 * time.Millisecond}) {
		t.Error(err)
	}
	return events, final
}

func attemptsOf(events []history.Event, id string) (starts, ends int) {
	for _, e := range events {
		if e.ID == id && e.Kind == history.Start {
			starts++
		}
		if e.ID == id && e.Kind == history.End {
			ends++
		}
	}
	return
}

// withoutLost returns a task's attempts counted by the store and its
// handler's starts and ends, leaving out the attempts its worker reported
// as lost (a lease that lapsed on a machine starved of CPU, which the
// contract answers with another attempt).
func withoutLost(events []history.Event, f history.Final, id string) (counted, starts, ends int) {
	lost := map[int]bool{}
	for _, e := range events {
		if e.ID == id && e.Kind == history.LeaseLost {
			lost[e.Attempt] = true
		}
	}
	for _, e := range events {
		if e.ID != id || lost[e.Attempt] {
			continue
		}
		switch e.Kind {
		case history.Start:
			starts++
		case history.End:
			ends++
		}
	}
	return f.Attempt - len(lost), starts, ends
}

// A2: a worker killed at each crash point; a fresh worker finishes the
// work; the history holds, and each point leaves its expected trace.
func TestFaultKillAtFailpoints(t *testing.T) {
	t.Parallel()
	points := []struct {
		name   string
		failOn int // FailTimes of the first task, to reach retry points
		check  func(t *testing.T, events []history.Event, first history.Final, firstID string)
	}{
		{"claim.before-commit", 0, func(t *testing.T, ev []history.Event, f history.Final, id string) {
			if n, _, _ := withoutLost(ev, f, id); n != 1 {
				t.Errorf("claim never committed, yet %d attempts counted (besides those whose lease was lost)", n)
			}
		}},
		{"claim.after-commit", 0, func(t *testing.T, ev []history.Event, f history.Final, id string) {
			if n, s, _ := withoutLost(ev, f, id); n != 2 || s != 1 {
				t.Errorf("claimed then killed: %d attempts counted, %d ran (besides those whose lease was lost); want 2 counted, 1 ran", n, s)
			}
		}},
		{"handler.after", 0, func(t *testing.T, ev []history.Event, f history.Final, id string) {
			if n, s, e := withoutLost(ev, f, id); n != 2 || s != 2 || e != 2 {
				t.Errorf("outcome lost after the handler: %d counted, %d started, %d ended (besides those whose lease was lost); want the handler run again", n, s, e)
			}
		}},
		{"finish.before-commit", 0, func(t *testing.T, ev []history.Event, f history.Final, id string) {
			if f.Attempt < 2 {
				t.Errorf("result write never committed, yet the task ended after %d attempt(s)", f.Attempt)
			}
		}},
		{"finish.after-commit", 0, func(t *testing.T, ev []history.Event, f history.Final, id string) {
			if n, s, _ := withoutLost(ev, f, id); n != 1 || s != 1 {
				t.Errorf("outcome committed before the kill: %d counted, %d ran (besides those whose lease was lost); want 1 and 1", n, s)
			}
		}},
		{"retry.before-record", 1, func(t *testing.T, ev []history.Event, f history.Final, id string) {
			if n, s, e := withoutLost(ev, f, id); n != 2 || s != 2 || e != 2 {
				t.Errorf("retry not recorded: %d counted, %d started, %d ended (besides those whose lease was lost); want the failed attempt 1 then a rescued attempt 2", n, s, e)
			}
		}},
	}
	for _, fp := range points {
		t.Run(strings.ReplaceAll(fp.name, ":", "-"), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			hdir := filepath.Join(dir, "history")
			os.Mkdir(hdir, 0o700)
			db := filepath.Join(dir, "q.db")
			q := openFile(t, db)
			h, _ := history.Open(filepath.Join(hdir, "test.jsonl"))
			defer h.Close()
			var ids []string
			for i := range 5 {
				args := FaultArgs{SleepMS: 5}
				if i == 0 {
					args.FailTimes = fp.failOn
				}
				r, err := faultTask.Enqueue(bg, q, args, docket.Priority(9-i))
				if err != nil {
					t.Fatal(err)
				}
				h.Add(history.Event{Kind: history.EnqueueOK, ID: r.ID()})
				ids = append(ids, r.ID())
			}
			env := []string{"DOCKET_TEST_LEASE=1s", "DOCKET_TEST_HISTORY=" + hdir, "DOCKET_TEST_CONCURRENCY=1"}
			w := startRole(t, "worker", db, append(env, "DOCKET_FAILPOINT="+fp.name)...)
			done := make(chan error, 1)
			go func() { done <- w.cmd.Wait() }()
			select {
			case err := <-done:
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
					t.Fatalf("worker did not die at %s: %v", fp.name, err)
				}
				h.Add(history.Event{Kind: history.Kill, Proc: w.cmd.Process.Pid})
			case <-time.After(30 * time.Second):
				t.Fatalf("failpoint %s never hit", fp.name)
			}
			startRole(t, "worker", db, env...)
			waitSettled(t, q, 60*time.Second)
			events, final := checkHistory(t, hdir, q)
			for _, id := range ids {
				if final[id].State != "succeeded" {
					t.Errorf("%s ended %s", id, final[id].State)
				}
			}
			fp.check(t, events, final[ids[0]], ids[0])
		})
	}
}

// A3: a producer killed at random in a tight enqueue loop, 10 times (50
// with DOCKET_TEST_LONG=1): the file stays intact, every acknowledged task
// is there, and every batch is all or nothing.
func TestFaultKillDuringEnqueue(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	db := filepath.Join(dir, "q.db")
	q := openFile(t, db)
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	var acked []string
	runs := longtest.Pick(10, 50)
	for range runs {
		p := startRole(t, "producer", db)
		p.expect(t, "ready")
		time.Sleep(time.Duration(20+rng.IntN(150)) * time.Millisecond)
		p.kill(nil)
		for l := range p.lines {
			if ids, ok := strings.CutPrefix(l, "ok "); ok {
				acked = append(acked, strings.Fields(ids)...)
			}
		}
	}
	var check string
	raw, _ := sql.Open("sqlite", db)
	defer raw.Close()
	if err := raw.QueryRow("PRAGMA integrity_check").Scan(&check); err != nil || check != "ok" {
		t.Fatalf("integrity_check = %q, %v", check, err)
	}
	final := finalStates(t, q)
	for _, id := range acked {
		if _, ok := final[id]; !ok {
			t.Errorf("acknowledged task %s is missing", id)
		}
	}
	batches := map[string]int{}
	all, _ := q.List(bg, docket.ListOptions{Limit: 1 << 30})
	for _, in := range all {
		if b := in.Headers["batch"]; b != "" {
			batches[b]++
		}
	}
	for b, n := range batches {
		if n != 10 {
			t.Errorf("batch %s stored %d of 10 tasks", b, n)
		}
	}
	t.Logf("%d kills, %d acknowledged tasks, %d batches, %d stored", runs, len(acked), len(batches), len(final))
	if len(acked) == 0 {
		t.Fatal("no enqueue was acknowledged")
	}
}

// A10: three workers and two producers on one file, killed and restarted
// at random. Afterwards every acknowledged task ends once, and the history
// holds. It runs for five seconds, twenty with DOCKET_TEST_LONG=1, five
// minutes with DOCKET_TEST_LONG=soak.
func TestFaultRandomKills(t *testing.T) {
	t.Parallel()
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		randomKills(t, "sqlite:"+filepath.Join(t.TempDir(), "q.db"), 3, 2)
	})
	t.Run("redis", func(t *testing.T) {
		t.Parallel()
		randomKills(t, redisURL(t), 2, 2)
	})
	t.Run("rabbitmq+redis", func(t *testing.T) {
		t.Parallel()
		randomKills(t, amqpURL(t), 2, 2, redisURL(t))
	})
}

// amqpURL returns DOCKET_TEST_AMQP_URL with a fresh name prefix, or skips;
// what docket declares under the prefix is deleted after the test.
func amqpURL(t *testing.T) string {
	u := brokerURL(t, "DOCKET_TEST_AMQP_URL", "RabbitMQ", "fault")
	prefix := u[strings.LastIndex(u, "prefix=")+len("prefix="):]
	t.Cleanup(func() { amqptest.DeleteTopology(t, os.Getenv("DOCKET_TEST_AMQP_URL"), prefix, docket.DefaultQueue) })
	return u
}

// redisURL returns DOCKET_TEST_REDIS_URL with a fresh key prefix, or
// skips; the keys under the prefix are deleted after the test.
func redisURL(t *testing.T) string {
	u := brokerURL(t, "DOCKET_TEST_REDIS_URL", "Redis", "faulttest-")
	prefix := u[strings.LastIndex(u, "prefix=")+len("prefix="):]
	t.Cleanup(func() { redistest.DeletePrefix(os.Getenv("DOCKET_TEST_REDIS_URL"), prefix) })
	return u
}

// brokerURL returns the URL in the environment variable env with a prefix
// no other test uses, or skips the test when it is unset.
func brokerURL(t *testing.T, env, broker, prefix string) string {
	base := os.Getenv(env)
	if base == "" {
		t.Skipf("%s is not set; skipping the %s variant", env, broker)
	}
	sep := "?"
	if strings.Contains(base, "?") {
		sep = "&"
	}
	return fmt.Sprintf("%s%sprefix=%s%d-%d", base, sep, prefix, os.Getpid(), time.Now().UnixNano()%1e12)
}

// randomKills runs the scenario on url; result, when set, is the result
// store of a broker URL.
func randomKills(t *testing.T, url string, nWorkers, nProducers int, result ...string) {
	length := longtest.Pick(5*time.Second, 20*time.Second)
	if longtest.Soak() {
		length = 5 * time.Minute
	}
	if testing.Short() {
		length = 2 * time.Second
	}
	dir := t.TempDir()
	hdir := filepath.Join(dir, "history")
	os.Mkdir(hdir, 0o700)
	db := url
	var opts []docket.Option
	env := []string{"DOCKET_TEST_LEASE=1s", "DOCKET_TEST_HISTORY=" + hdir}
	if len(result) > 0 {
		opts = append(opts, docket.ResultStore(result[0]))
		env = append(env, "DOCKET_RESULT_URL="+result[0])
	}
	q, err := docket.Open(bg, url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	q.Register(faultTask)
	h, _ := history.Open(filepath.Join(hdir, "test.jsonl"))
	defer h.Close()

	rng := rand.New(rand.NewPCG(2, uint64(time.Now().UnixNano())))
	workers := make([]*proc, nWorkers)
	producers := make([]*proc, nProducers)
	for i := range workers {
		workers[i] = startRole(t, "worker", db, env...)
	}
	for i := range producers {
		producers[i] = startRole(t, "producer", db, append(env, "DOCKET_TEST_LIMIT=400")...)
	}
	kills := 0
	for t0 := time.Now(); time.Since(t0) < length; {
		time.Sleep(time.Duration(300+rng.IntN(1200)) * time.Millisecond)
		if rng.IntN(4) == 0 {
			i := rng.IntN(len(producers))
			producers[i].kill(h)
			producers[i] = startRole(t, "producer", db, append(env, "DOCKET_TEST_LIMIT=400")...)
		} else {
			i := rng.IntN(len(workers))
			workers[i].kill(h)
			workers[i] = startRole(t, "worker", db, env...)
		}
		kills++
	}
	for _, p := range producers {
		p.kill(h)
	}
	waitSettled(t, q, 2*time.Minute)
	for _, w := range workers {
		w.cmd.Process.Signal(syscall.SIGTERM)
		w.cmd.Wait()
	}
	events, final := checkHistory(t, hdir, q)
	oks := 0
	for _, e := range events {
		if e.Kind == history.EnqueueOK {
			oks++
		}
	}
	t.Logf("%v: %d kills, %d acknowledged tasks, %d stored, %d events", length, kills, oks, len(final), len(events))
}

// A6: another process holds the write lock for longer than the lease:
// the worker cannot renew, notices its lease ran out, cancels the handler,
// and once the lock is gone another worker runs the task; the stale
// attempt's outcome is never written.
func TestFaultLeaseRenewalBlocked(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "q.db")
	url := "sqlite:" + path + "?busy_timeout=100ms"
	var log syncBuffer
	a, err := docket.Open(bg, url, docket.LeaseDuration(600*time.Millisecond),
		docket.Logger(slog.New(slog.NewTextHandler(&log, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	cancelled := make(chan error, 4)
	started := make(chan int, 4)
	task := docket.NewTask("renew.blocked", func(ctx context.Context, _ int) (string, error) {
		tc, _ := docket.FromContext(ctx)
		started <- tc.Attempt
		if tc.Attempt > 1 {
			return fmt.Sprintf("attempt:%d", tc.Attempt), nil
		}
		<-ctx.Done()
		cancelled <- context.Cause(ctx)
		return "stale", nil // a success the fence must refuse
	})
	a.Register(task)
	r, _ := task.Enqueue(bg, a, 1)
	runWorkers(t, a)
	<-started
	lock, _ := sql.Open("sqlite", "file:"+path+"?_txlock=immediate&_pragma=busy_timeout(5000)")
	defer lock.Close()
	tx, err := lock.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("UPDATE docket_tasks SET priority = priority"); err != nil {
		t.Fatal(err)
	}
	select {
	case cause := <-cancelled:
		if cause == nil || !strings.Contains(cause.Error(), "lease lost") {
			t.Fatalf("handler cancelled with %v, want lease lost", cause)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handler kept running with an expired lease")
	}
	tx.Rollback()
	// The stop is reported with the task and the lease's end, so whoever
	// reads the log can tell why the next attempt overlapped this one.
	if l := string(log.Bytes()); !strings.Contains(l, "lease lost; stopping the handler") || !strings.Contains(l, r.ID()) || !strings.Contains(l, "lease_until=") {
		t.Fatalf("the stopped handler was not reported:\n%s", l)
	}
	b, _ := docket.Open(bg, url, docket.LeaseDuration(600*time.Millisecond))
	defer b.Close()
	b.Register(task)
	runWorkers(t, b)
	v, err := r.Wait(waitCtx(t))
	if err != nil || v != "attempt:2" {
		t.Fatalf("Wait = %q, %v", v, err)
	}
}

// A4 at the queue level: a worker survives the database being locked by
// another process for longer than busy_timeout, and catches up after.
func TestFaultLockedLongerThanBusyTimeout(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "q.db")
	q, err := docket.Open(bg, "sqlite:"+path+"?busy_timeout=50ms")
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	q.Register(faultTask)
	runWorkers(t, q)
	lock, _ := sql.Open("sqlite", "file:"+path+"?_txlock=immediate&_busy_timeout=5000")
	defer lock.Close()
	tx, err := lock.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("UPDATE docket_tasks SET priority = priority"); err != nil {
		t.Fatal(err)
	}
	_, err = faultTask.Enqueue(bg, q, FaultArgs{})
	if !errors.Is(err, docket.ErrBusy) {
		t.Fatalf("enqueue while locked: %v, want ErrBusy", err)
	}
	time.Sleep(500 * time.Millisecond) // the worker's claims fail meanwhile
	tx.Rollback()
	r, err := faultTask.Enqueue(bg, q, FaultArgs{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Wait(waitCtx(t)); err != nil {
		t.Fatalf("after the lock: %v", err)
	}
}

// B: a handler returning a result over the limit fails without retry.
func TestFaultOversizedResult(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t, docket.MaxResultSize(100))
	big := docket.NewTask("big.result", func(ctx context.Context, n int) (string, error) { return strings.Repeat("x", n), nil })
	q.Register(big)
	r, _ := big.Enqueue(bg, q, 1000)
	dockettest.Drain(t, q)
	_, err := r.Wait(bg)
	if !errors.Is(err, docket.ErrTaskFailed) || !strings.Contains(err.Error(), "exceed the limit") {
		t.Fatalf("Wait = %v", err)
	}
	if info, _ := r.Info(bg); info.Attempt != 1 {
		t.Fatalf("retried a too-large result %d times", info.Attempt)
	}
}

// C: arguments that do not decode, deep nesting, NUL bytes and invalid
// UTF-8.
func TestFaultBadPayloads(t *testing.T) {
	t.Parallel()
	q, _ := dockettest.Open(t)
	type point struct{ X, Y int }
	typed := docket.NewTask("typed.point", func(ctx context.Context, p point) (point, error) { return p, nil })
	echo := docket.NewTask("echo.string", func(ctx context.Context, s string) (string, error) { return s, nil })
	echoBytes := docket.NewTask("echo.bytes", func(ctx context.Context, b []byte) ([]byte, error) { return b, nil })
	q.Register(typed, echo, echoBytes)

	undecodable := json.RawMessage(`{"X":"not a number"}`)
	deep := json.RawMessage(strings.Repeat("[", 5000) + strings.Repeat("]", 5000))
	// EnqueueByName checks arguments against the registered type...
	for _, args := range []json.RawMessage{undecodable, deep, json.RawMessage(strings.Repeat("[", 20000) + strings.Repeat("]", 20000))} {
		if _, err := q.EnqueueByName(bg, "typed.point", args); !errors.Is(err, docket.ErrInvalid) {
			t.Fatalf("EnqueueByName with arguments that do not decode: %v", err)
		}
	}
	// ...but a producer that registered the name with another type (an
	// older build, another language) stores them; the worker fails them.
	raw := docket.NewTask("typed.point", func(ctx context.Context, m json.RawMessage) (point, error) { return point{}, nil })
	bad, err := raw.Enqueue(bg, q, undecodable)
	if err != nil {
		t.Fatal(err)
	}
	deepR, err := raw.Enqueue(bg, q, deep)
	if err != nil {
		t.Fatal(err)
	}
	nul, _ := echo.Enqueue(bg, q, "a\x00b\x00")
	invalid, _ := echo.Enqueue(bg, q, "ok\xffend")
	rawBytes := []byte{0, 0xff, 0xfe, 'x', 0}
	bytesR, _ := echoBytes.Enqueue(bg, q, rawBytes)
	dockettest.Drain(t, q)

	for name, r := range map[string]*docket.Result[point]{"undecodable": bad, "deep": deepR} {
		_, err := r.Wait(bg)
		if !errors.Is(err, docket.ErrTaskFailed) || !strings.Contains(err.Error(), "decode arguments") {
			t.Errorf("%s arguments: %v", name, err)
		}
		if info, _ := r.Info(bg); info.Attempt != 1 {
			t.Errorf("%s arguments retried: %d attempts", name, info.Attempt)
		}
	}
	if v, err := nul.Wait(bg); err != nil || v != "a\x00b\x00" {
		t.Errorf("NUL bytes: %q, %v", v, err)
	}
	// JSON strings carry Unicode text: invalid UTF-8 in a string becomes
	// U+FFFD (documented); raw bytes travel as []byte, exactly.
	if v, err := invalid.Wait(bg); err != nil || v != "ok\uFFFDend" {
		t.Errorf("invalid UTF-8 in a string: %q, %v", v, err)
	}
	if v, err := bytesR.Wait(bg); err != nil || string(v) != string(rawBytes) {
		t.Errorf("raw bytes: %q, %v", v, err)
	}
}

// D: disk full, inside a private mount namespace with a 2 MiB tmpfs:
// enqueue fails cleanly with ErrStorageFull, nothing is corrupted, and it
// works again once space is freed.
func TestFaultDiskFull(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs in a private mount namespace")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("unshare(1) not installed")
	}
	dir := t.TempDir()
	cmd := exec.Command("unshare", "-m", "--propagation", "private", os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "DOCKET_TEST_ROLE=diskfull", "DOCKET_TEST_DIR="+dir)
	out, err := cmd.CombinedOutput()
	if strings.Contains(string(out), "SKIP:") {
		t.Skip(strings.TrimSpace(string(out)))
	}
	if err != nil {
		t.Fatalf("disk-full child: %v\n%s", err, out)
	}
	for _, want := range []string{"full: storage full", "integrity: ok", "after freeing: ok", "reopened: ok"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("disk-full child did not report %q:\n%s", want, out)
		}
	}
}

func diskFullMain() int {
	dir := os.Getenv("DOCKET_TEST_DIR")
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", dir).CombinedOutput(); err != nil {
		fmt.Printf("SKIP: cannot mount tmpfs: %v %s\n", err, out)
		return 0
	}
	ctx := context.Background()
	path := filepath.Join(dir, "q.db")
	q, err := docket.Open(ctx, path)
	if err != nil {
		fmt.Println("open:", err)
		return 1
	}
	q.Register(faultTask)
	filler := filepath.Join(dir, "filler")
	os.WriteFile(filler, make([]byte, 1<<20), 0o600)
	pad := strings.Repeat("p", 4000)
	n := 0
	var ferr error
	for ; n < 10000; n++ {
		if _, ferr = echoTask.Enqueue(ctx, q, pad); ferr != nil {
			break
		}
	}
	if errors.Is(ferr, docket.ErrStorageFull) {
		fmt.Println("full: storage full after", n)
	} else {
		fmt.Println("full: unexpected", ferr)
	}
	db, _ := q.DB()
	var check string
	db.QueryRow("PRAGMA integrity_check").Scan(&check)
	fmt.Println("integrity:", check)
	os.Remove(filler)
	if _, err := echoTask.Enqueue(ctx, q, pad); err == nil {
		fmt.Println("after freeing: ok")
	} else {
		fmt.Println("after freeing:", err)
	}
	q.Close()
	q2, err := docket.Open(ctx, path)
	if err != nil {
		fmt.Println("reopen:", err)
		return 1
	}
	all, err := q2.List(ctx, docket.ListOptions{Limit: 100000})
	if err == nil && len(all) == n+1 {
		fmt.Println("reopened: ok", len(all))
	} else {
		fmt.Println("reopened:", len(all), err)
	}
	q2.Close()
	return 0
}

// D: a database the process may not write: Open fails with a clear error,
// or reads work and writes fail with ErrReadOnly; nothing panics and the
// file is unchanged.
func TestFaultReadOnlyDatabase(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a child as another user")
	}
	dir := t.TempDir()
	os.Chmod(filepath.Dir(dir), 0o755) // t.TempDir's parent is private
	os.Chmod(dir, 0o755)
	path := filepath.Join(dir, "q.db")
	// The test binary must be reachable by the other user.
	bin := filepath.Join(dir, "docket.test")
	if data, err := os.ReadFile(os.Args[0]); err != nil || os.WriteFile(bin, data, 0o755) != nil {
		t.Fatalf("copy the test binary: %v", err)
	}
	q := openFile(t, path)
	echoTask.Enqueue(bg, q, "x")
	q.Close()
	os.Chmod(path, 0o644)
	before, _ := os.ReadFile(path)
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DOCKET_TEST_ROLE=readonly", "DOCKET_TEST_DB="+path, "GOCOVERDIR=")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("read-only child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "clean:") {
		t.Fatalf("read-only child: %s", out)
	}
	t.Logf("%s", out)
	after, _ := os.ReadFile(path)
	if string(before) != string(after) {
		t.Fatal("the read-only file changed")
	}
}

func readOnlyMain() int {
	ctx := context.Background()
	q, err := docket.Open(ctx, os.Getenv("DOCKET_TEST_DB"))
	if err != nil {
		fmt.Println("clean: open refused:", err)
		return 0
	}
	defer q.Close()
	q.Register(echoTask)
	if _, err := echoTask.Enqueue(ctx, q, "y"); err != nil {
		fmt.Println("clean: write refused:", err)
		return 0
	}
	fmt.Println("wrote to a read-only database")
	return 1
}

// D: a copy of the database whose WAL was cut at a random offset opens,
// passes integrity_check, and holds a prefix of the commits.
func TestFaultTruncatedWAL(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "q.db")
	q := openFile(t, path)
	// A crash can only tear the part of the WAL no checkpoint has copied
	// into the database yet (a checkpoint syncs the WAL first). A read
	// transaction begun while the WAL is empty keeps the store's background
	// checkpoints from copying any of the commits below, so that any cut of
	// the copied WAL is one a crash could leave.
	hold, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	// Empty the WAL first (opening the store wrote its schema there): a
	// reader that began with frames in the WAL would let a checkpoint copy
	// those into the database file, and a cut below them is not a state a
	// crash can leave.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var busy, frames, done int
		if err := hold.QueryRow("PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &frames, &done); err != nil {
			t.Fatal(err)
		}
		if busy == 0 && frames == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the WAL could not be emptied: busy %d, %d frames", busy, frames)
		}
	}
	reader, err := hold.Begin()
	if err != nil {
		t.Fatal(err)
	}
	var before int
	if err := reader.QueryRow("SELECT count(*) FROM docket_tasks").Scan(&before); err != nil {
		t.Fatal(err)
	}
	const n = 300
	for i := range n {
		if _, err := echoTask.Enqueue(bg, q, fmt.Sprintf("%04d", i)); err != nil {
			t.Fatal(err)
		}
	}
	main, _ := os.ReadFile(path)
	wal, _ := os.ReadFile(path + "-wal")
	reader.Rollback()
	if len(wal) == 0 {
		t.Skip("the WAL was checkpointed away; nothing to truncate")
	}
	rng := rand.New(rand.NewPCG(3, uint64(time.Now().UnixNano())))
	for trial := range 10 {
		cut := rng.IntN(len(wal))
		cp := filepath.Join(dir, fmt.Sprintf("copy%d.db", trial))
		os.WriteFile(cp, main, 0o600)
		os.WriteFile(cp+"-wal", wal[:cut], 0o600)
		c, err := docket.Open(bg, cp)
		if err != nil {
			t.Fatalf("cut at %d: open: %v", cut, err)
		}
		db, _ := c.DB()
		var check string
		db.QueryRow("PRAGMA integrity_check").Scan(&check)
		if check != "ok" {
			t.Fatalf("cut at %d: integrity_check %q", cut, check)
		}
		all, _ := c.List(bg, docket.ListOptions{Limit: n})
		for i, in := range all {
			var s string
			json.Unmarshal(in.Args, &s)
			if s != fmt.Sprintf("%04d", i) {
				t.Fatalf("cut at %d: task %d holds %q: not a prefix of the commits", cut, i, s)
			}
		}
		c.Close()
	}
}
