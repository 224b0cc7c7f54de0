package docket_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/amqptest"
	"github.com/docketq/docket/internal/history"
	"github.com/docketq/docket/internal/longtest"
	"github.com/docketq/docket/internal/redistest"
)

// A three-node RabbitMQ cluster (quorum queues) under the fault suite's
// traffic (see brokerFaults), with a SQLite result store: the two workers
// connected first to different nodes, the producers to the third.
// Meanwhile the nodes are stopped and started again one at a time, 10 to
// 20 s apart, and once the node leading the task queue is SIGKILLed.
//
// DOCKET_TEST_LONG=1 runs about a minute of it (CI); DOCKET_TEST_LONG=soak
// runs three minutes and about 5,000 tasks.
func TestFaultClusterRestarts(t *testing.T) {
	longtest.Require(t, "boots a three-node RabbitMQ cluster")
	c := amqptest.StartCluster(t)
	prefix := fmt.Sprintf("cluster%d", os.Getpid())
	length, limit := 50*time.Second, 300
	if longtest.Soak() {
		length, limit = 3*time.Minute, 950
	}
	killed := false
	t0 := time.Now()
	brokerFaults(t, faultPlan{
		workers:   []string{c.URL(0, "prefix="+prefix), c.URL(1, "prefix="+prefix)},
		producers: c.URL(2, "prefix="+prefix),
		result:    "sqlite:",
		length:    length,
		limit:     limit,
		fault: func(n int, _ *history.Recorder) bool {
			if !killed && (n == 2 || time.Since(t0) > length*2/3) {
				c.Restart(c.Leader(prefix+".q."+docket.DefaultQueue), true)
				killed = true
			} else {
				c.Restart(n%len(c.Nodes), false)
			}
			return time.Since(t0) < length
		},
	})
}

// Redis with a replica and three Sentinels, with replicas=1, under the
// fault suite's traffic (see brokerFaults): the primary SIGKILLed and the
// replica promoted, twice, 10 to 20 s apart. Every write docket
// acknowledges reached the replica first, so nothing confirmed is lost.
// A claim waits for no replica, so a failover can lose one made in the
// primary's last moments, and its task starts again under the same
// attempt number: the failovers go into the history, where the checker
// allows that.
//
// DOCKET_TEST_LONG=1 runs about 40 s of traffic (CI); DOCKET_TEST_LONG=soak
// runs three minutes and about 5,000 tasks.
func TestFaultSentinelFailovers(t *testing.T) {
	longtest.Require(t, "boots a Redis primary, a replica and three Sentinels")
	g := redistest.StartSentinels(t)
	url := g.URL(fmt.Sprintf("prefix=failovers%d&replicas=1", os.Getpid()))
	length, limit := 40*time.Second, 250
	if longtest.Soak() {
		length, limit = 3*time.Minute, 950
	}
	brokerFaults(t, faultPlan{
		workers:   []string{url, url},
		producers: url,
		length:    length,
		limit:     limit,
		fault: func(n int, h *history.Recorder) bool {
			killed, promoted := g.Failover()
			h.Add(history.Event{Kind: history.Failover, T: killed, Until: promoted})
			return n < 1
		},
	})
}

// faultPlan is one run of brokerFaults.
type faultPlan struct {
	workers   []string // the URL of each worker process
	producers string   // the URL of the two producer processes
	result    string   // "sqlite:" for a result store of SQLite, or ""
	length    time.Duration
	limit     int // enqueues per producer, spread over length
	// fault injects the n-th fault (n from 0), 10 to 20 s after the last
	// one ended, records it in h if the history checker needs to know,
	// and reports whether another follows.
	fault func(n int, h *history.Recorder) bool
}

// brokerFaults runs the fault suite's traffic on a clustered broker: the
// worker processes, and two producers enqueueing singles, batches,
// countdowns, unique tasks and tasks that fail before they succeed, over
// about p.length, while the plan's faults come and go. Nobody restarts a
// worker or a producer: they find the broker again by themselves.
// Afterwards every producer has ended on its own, every task has settled,
// and the history checker holds every invariant: each confirmed task ended
// exactly once, none ran after it completed, none is stuck.
func brokerFaults(t *testing.T, p faultPlan) {
	dir := t.TempDir()
	hdir := filepath.Join(dir, "history")
	os.Mkdir(hdir, 0o700)
	env := []string{"DOCKET_TEST_LEASE=3s", "DOCKET_TEST_HISTORY=" + hdir}
	var opts []docket.Option
	if p.result != "" {
		result := p.result + filepath.Join(dir, "state.db")
		env = append(env, "DOCKET_RESULT_URL="+result)
		opts = append(opts, docket.ResultStore(result))
	}
	t.Cleanup(func() {
		if t.Failed() { // keep the history (and the store) for a look
			keep := filepath.Join(os.TempDir(), fmt.Sprintf("docket-faults-%d", os.Getpid()))
			if err := os.Rename(dir, keep); err == nil {
				t.Logf("history kept in %s", keep)
			}
		}
	})
	q, err := docket.Open(bg, p.producers, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	q.Register(faultTask)

	var workers []*proc
	for _, u := range p.workers {
		workers = append(workers, startRole(t, "worker", u, env...))
	}
	pace := p.length / time.Duration(p.limit)
	producing := append(env, fmt.Sprintf("DOCKET_TEST_LIMIT=%d", p.limit), "DOCKET_TEST_PACE="+pace.String())
	producers := []*proc{startRole(t, "producer", p.producers, producing...), startRole(t, "producer", p.producers, producing...)}
	h, err := history.Open(filepath.Join(hdir, "test.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	rng := rand.New(rand.NewPCG(3, uint64(time.Now().UnixNano())))
	t0 := time.Now()
	for n, more := 0, true; more; n++ {
		time.Sleep(time.Duration(10+rng.IntN(11)) * time.Second)
		more = p.fault(n, h)
	}
	for _, pr := range producers {
		waitExit(t, pr, p.length+2*time.Minute)
	}
	waitSettled(t, q, 3*time.Minute)
	for _, w := range workers {
		w.cmd.Process.Signal(syscall.SIGTERM)
		w.cmd.Wait()
	}
	events, final := checkHistory(t, hdir, q)
	acked, errs, retried, resent, again := 0, 0, 0, 0, 0
	type run struct {
		id      string
		attempt int
	}
	started := map[run]bool{}
	for _, e := range events {
		if e.Kind == history.Start {
			if started[run{e.ID, e.Attempt}] {
				again++
			}
			started[run{e.ID, e.Attempt}] = true
		}
		switch {
		case e.Kind == history.Resent:
			resent++
			runs := 0 // attempts started before: a task not lost after all
			for _, s := range events {
				if s.Kind == history.Start && s.ID == e.ID && s.T.Before(e.T) {
					runs++
				}
			}
			t.Logf("task %s was published again, taken for lost, after %d attempts; it ended %s after %d", e.ID, runs, final[e.ID].State, final[e.ID].Attempt)
		case e.Kind == history.EnqueueOK:
			acked++
		case e.Kind == history.EnqueueErr:
			errs++
		case e.Kind == history.Start && e.Attempt > 1:
			retried++
		}
	}
	t.Logf("%v: %d tasks confirmed (%d enqueues refused during faults), %d stored, %d attempts past the first, %d started again under their number (a claim lost with a primary), %d published again, %d events",
		time.Since(t0).Round(time.Second), acked, errs, len(final), retried, again, resent, len(events))
}

// waitExit waits for a role process to end by itself.
func waitExit(t *testing.T, p *proc, timeout time.Duration) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("process %d: %v", p.cmd.Process.Pid, err)
		}
	case <-time.After(timeout):
		t.Fatalf("process %d still runs after %v", p.cmd.Process.Pid, timeout)
	}
}
