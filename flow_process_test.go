package docket_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docketq/docket"
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
	steps, err := failing.Info(bg)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range steps {
		if !s.State.Terminal() {
			t.Errorf("step %s (%s) is %v after its workflow failed", s.ID, s.Name, s.State)
		}
	}
}
