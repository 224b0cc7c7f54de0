package docket_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/history"
	"github.com/docketq/docket/internal/longtest"
)

// tallyTask joins the outcomes of a group in the process tests: "ok" for
// each member that succeeded, the error of each that did not.
var tallyTask = docket.NewTask("proc.tally", func(ctx context.Context, os []docket.Outcome[json.RawMessage]) (string, error) {
	parts := make([]string, len(os))
	for i, o := range os {
		parts[i] = "ok"
		if !o.OK() {
			parts[i] = o.Error
		}
	}
	return strings.Join(parts, " | "), nil
})

// A chord member whose every attempt kills its worker ends "worker lost"
// when a claim finds its last lease lapsed, and that end advances the
// workflow like any other: ThenOutcomes runs its body with the error,
// and a plain chord fails naming the step.
func TestFlowMemberWorkerLost(t *testing.T) {
	t.Parallel()
	db := filepath.Join(t.TempDir(), "flow.db")
	producer := openFile(t, db)
	members := func() docket.Flow[[]json.RawMessage] {
		return docket.Group(
			docket.Untyped(docket.Step(echoTask, "a")),
			docket.Untyped(docket.Step(crashTask, "exit", docket.MaxRetries(0))),
			docket.Untyped(docket.Step(echoTask, "b")),
		)
	}
	collected, err := docket.EnqueueFlow(bg, producer, docket.ThenOutcomes(members(), tallyTask))
	if err != nil {
		t.Fatal(err)
	}
	failing, err := docket.EnqueueFlow(bg, producer, docket.Then(members(), docket.NewTask("proc.never",
		func(context.Context, []json.RawMessage) (int, error) {
			return 0, errors.New("the body of a failed chord ran")
		})))
	if err != nil {
		t.Fatal(err)
	}
	// Each crashing member kills one worker; the next worker finds its
	// lease lapsed with no attempt left and ends it.
	for range 2 {
		w := startWorker(t, db, "DOCKET_TEST_LEASE=500ms", "DOCKET_TEST_CONCURRENCY=1")
		if err := w.cmd.Wait(); err == nil {
			t.Fatal("the crashing member did not kill its worker")
		}
	}
	startWorker(t, db, "DOCKET_TEST_LEASE=500ms")
	got, err := collected.Wait(waitCtx(t))
	parts := strings.Split(got, " | ")
	if err != nil || len(parts) != 3 || parts[0] != "ok" || !strings.Contains(parts[1], "worker lost") || parts[2] != "ok" {
		t.Fatalf("ThenOutcomes body = %q, %v; want the lost member's error between two successes", got, err)
	}
	_, err = failing.Wait(waitCtx(t))
	if !errors.Is(err, docket.ErrTaskFailed) || !strings.Contains(err.Error(), "proc.crash") || !strings.Contains(err.Error(), "worker lost") {
		t.Fatalf("chord Wait error = %v; want its failure to name the lost member", err)
	}
	// Every step ends: those that had not started were cancelled with
	// the workflow; one that was running when the workflow failed (a
	// member another worker ran while the lost one's lease lapsed) ends
	// when its worker records its outcome or hears the cancel.
	ctx := waitCtx(t)
	for {
		steps, err := failing.Info(bg)
		if err != nil {
			t.Fatal(err)
		}
		running := ""
		for _, s := range steps {
			if !s.State.Terminal() {
				running = fmt.Sprintf("step %s (%s) is %v", s.ID, s.Name, s.State)
			}
		}
		if running == "" {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s long after its workflow failed", running)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// chordMember is a member of the fault suite's chord: it records its
// attempts in the history and returns its place, so that the body can
// check the order of what it receives.
type chordMember struct {
	I       int `json:"i"`
	Attempt int `json:"attempt"`
}

var chordMemberTask = docket.NewTask("fault.member", func(ctx context.Context, i int) (chordMember, error) {
	tc, _ := docket.FromContext(ctx)
	record(history.Event{Kind: history.Start, ID: tc.ID, Attempt: tc.Attempt})
	select {
	case <-time.After(time.Duration(1+i%5) * time.Millisecond):
	case <-ctx.Done():
		record(history.Event{Kind: history.End, ID: tc.ID, Attempt: tc.Attempt, Outcome: ctx.Err().Error()})
		return chordMember{}, ctx.Err()
	}
	record(history.Event{Kind: history.End, ID: tc.ID, Attempt: tc.Attempt, Outcome: "ok"})
	return chordMember{I: i, Attempt: tc.Attempt}, nil
}, docket.MaxRetries(50))

// chordBodyTask checks that it received every member's result in order
// and returns how many, with its own attempt.
var chordBodyTask = docket.NewTask("fault.body", func(ctx context.Context, ms []chordMember) (chordMember, error) {
	tc, _ := docket.FromContext(ctx)
	record(history.Event{Kind: history.Start, ID: tc.ID, Attempt: tc.Attempt})
	for i, m := range ms {
		if m.I != i || m.Attempt < 1 {
			record(history.Event{Kind: history.End, ID: tc.ID, Attempt: tc.Attempt, Outcome: "out of order"})
			return chordMember{}, docket.Permanent(fmt.Errorf("result %d is %+v", i, m))
		}
	}
	record(history.Event{Kind: history.End, ID: tc.ID, Attempt: tc.Attempt, Outcome: "ok"})
	return chordMember{I: len(ms), Attempt: tc.Attempt}, nil
}, docket.MaxRetries(50))

// A chord of 1,000 members (10,000 with DOCKET_TEST_LONG=1) runs on
// worker processes that are SIGKILLed at random until it ends, on SQLite
// and on Redis: the body runs with every member's result, in order; the
// history checker finds no step lost, none run after it ended, no result
// written by a stale attempt.
func TestFaultChordKills(t *testing.T) {
	t.Parallel()
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		chordKills(t, "sqlite:"+filepath.Join(t.TempDir(), "chord.db"))
	})
	t.Run("redis", func(t *testing.T) {
		t.Parallel()
		chordKills(t, redisURL(t))
	})
}

func chordKills(t *testing.T, db string) {
	n := longtest.Pick(1000, 10_000)
	dir := t.TempDir()
	hdir := filepath.Join(dir, "history")
	os.Mkdir(hdir, 0o700)
	q, err := docket.Open(bg, db)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Register(chordMemberTask, chordBodyTask); err != nil {
		t.Fatal(err)
	}
	h, _ := history.Open(filepath.Join(hdir, "test.jsonl"))
	defer h.Close()
	members := make([]docket.Flow[chordMember], n)
	for i := range members {
		members[i] = docket.Step(chordMemberTask, i)
	}
	wf, err := docket.EnqueueFlow(bg, q, docket.Then(docket.Group(members...), chordBodyTask))
	if err != nil {
		t.Fatal(err)
	}
	steps, err := wf.Info(bg)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range steps {
		h.Add(history.Event{Kind: history.EnqueueOK, ID: s.ID})
	}
	env := []string{"DOCKET_TEST_LEASE=1s", "DOCKET_TEST_HISTORY=" + hdir}
	workers := make([]*proc, 3)
	for i := range workers {
		workers[i] = startRole(t, "worker", db, env...)
	}
	rng := rand.New(rand.NewPCG(3, uint64(time.Now().UnixNano())))
	kills := 0
	// Soon enough that the short chord (under a second of work) sees
	// several kills; the long one's body, which gathers 10,000 results,
	// gets time to finish between two.
	minGap, spread := longtest.Pick(50, 200), longtest.Pick(250, 600) // ms
	ended := func() bool {
		in, err := q.Info(bg, wf.ID())
		return err == nil && in.State.Terminal()
	}
	for deadline := time.Now().Add(5 * time.Minute); !ended(); {
		if time.Now().After(deadline) {
			t.Fatal("the chord did not end in five minutes")
		}
		time.Sleep(time.Duration(minGap+rng.IntN(spread)) * time.Millisecond)
		if ended() {
			break
		}
		i := rng.IntN(len(workers))
		workers[i].kill(h)
		workers[i] = startRole(t, "worker", db, env...)
		kills++
	}
	for _, w := range workers {
		w.cmd.Process.Signal(syscall.SIGTERM)
		w.cmd.Wait()
	}
	got, err := wf.Wait(bg)
	if err != nil || got.I != n {
		t.Fatalf("the body: %+v, %v; want %d results", got, err, n)
	}
	events, _ := checkHistory(t, hdir, q)
	starts, _ := attemptsOf(events, wf.ID())
	if in, _ := q.Info(bg, wf.ID()); got.Attempt != in.Attempt {
		t.Errorf("the body's result came from attempt %d, its last is %d", got.Attempt, in.Attempt)
	}
	t.Logf("%s: %d members, %d kills, the body started %d time(s), %d events", strings.SplitN(db, ":", 2)[0], n, kills, starts, len(events))
}
