package transporttest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/transport"
)

// Features is what a backend claims to do beyond the methods of
// transport.Transport. The suite checks each claim both ways: the matching
// optional interface is implemented exactly when the feature is claimed,
// and the tests of a claimed feature run (they are skipped only for
// features not claimed).
type Features struct {
	// Schedules: the transport implements transport.ScheduleStore, so
	// that any number of processes running the scheduler fire each slot
	// of a periodic task once (Task.Schedule; test BeatSlotsOnce).
	Schedules bool
	// SharedState: every process sees the state of every task, whoever
	// enqueued it: a taken task id or unique key is refused, or returned
	// with ReturnExisting, and Get answers for any task from any process
	// (tests Unique, and the contract's DuplicateID, UniqueKey and the
	// duplicate in BatchIsAtomic). No optional interface goes with it.
	SharedState bool
	// Priority: within a queue, a task of higher priority is claimed
	// before one of lower priority, whatever their order of arrival
	// (tests Priority and the contract's ClaimOrder). No optional
	// interface goes with it.
	Priority bool
	// Listing: the transport implements transport.Lister (Queue.List;
	// test List).
	Listing bool
	// Pruning: the transport implements transport.Pruner, deleting
	// finished tasks once their result TTL has passed (contract test
	// Prune).
	Pruning bool
	// ClaimByID: the transport implements transport.IDClaimer, leasing
	// given tasks by id, which lets it keep the state of a broker's tasks
	// as a result store (contract tests ClaimIDs and
	// CancelSurvivesReleaseAndRetry).
	ClaimByID bool
	// TxEnqueue: the transport implements transport.TxEnqueuer and
	// transport.DBProvider, so that tasks can be enqueued inside the
	// application's own database transaction (Queue.DB, Queue.Tx; test
	// TxEnqueue).
	TxEnqueue bool
	// Admin: the transport implements transport.Admin (the operations
	// API: Queue.Stats, Search, Act, PauseQueue, Workers, progress), and
	// transport.ScheduleAdmin when it claims Schedules too (contract tests
	// Admin*, ScheduleAdmin; tests Operate and PauseQueue).
	Admin bool
	// Workflows: the transport implements transport.Workflows, storing
	// workflow steps and advancing them as they end (EnqueueFlow; tests
	// Workflow*).
	Workflows bool
	// Handoff: with Workflows, Finish leases the step a success made
	// ready when FinishParams.Handoff asks it to (contract test Handoff).
	// Not an interface: a backend may ignore the request.
	Handoff bool
	// Overdue: the transport implements transport.Overdue, listing the
	// tasks long past their time for a broker that uses it as its result
	// store (contract test Overdue).
	Overdue bool
	// Pushed: a broker pushes tasks to the worker, so one claim sees only
	// those delivered so far, not every ready task (RabbitMQ). Tests of
	// what one claim does with several tasks then allow them to arrive in
	// separate claims.
	Pushed bool
}

// implemented returns the interface features tr implements.
func implemented(tr transport.Transport) Features {
	_, sched := tr.(transport.ScheduleStore)
	_, list := tr.(transport.Lister)
	_, prune := tr.(transport.Pruner)
	_, byID := tr.(transport.IDClaimer)
	_, tx := tr.(transport.TxEnqueuer)
	_, admin := tr.(transport.Admin)
	_, flows := tr.(transport.Workflows)
	_, overdue := tr.(transport.Overdue)
	return Features{Schedules: sched, Listing: list, Pruning: prune, ClaimByID: byID, TxEnqueue: tx, Admin: admin, Workflows: flows, Overdue: overdue}
}

// mismatches lists where tr's optional interfaces differ from the claims
// in f.
func mismatches(tr transport.Transport, f Features) []string {
	has := implemented(tr)
	var out []string
	for _, c := range []struct {
		feature, iface string
		claimed, has   bool
	}{
		{"Schedules", "transport.ScheduleStore", f.Schedules, has.Schedules},
		{"Listing", "transport.Lister", f.Listing, has.Listing},
		{"Pruning", "transport.Pruner", f.Pruning, has.Pruning},
		{"ClaimByID", "transport.IDClaimer", f.ClaimByID, has.ClaimByID},
		{"TxEnqueue", "transport.TxEnqueuer", f.TxEnqueue, has.TxEnqueue},
		{"Admin", "transport.Admin", f.Admin, has.Admin},
		{"Workflows", "transport.Workflows", f.Workflows, has.Workflows},
		{"Overdue", "transport.Overdue", f.Overdue, has.Overdue},
	} {
		switch {
		case c.claimed && !c.has:
			out = append(out, fmt.Sprintf("%T does not implement %s, although the backend claims %s", tr, c.iface, c.feature))
		case !c.claimed && c.has:
			out = append(out, fmt.Sprintf("%T implements %s, although the backend does not claim %s", tr, c.iface, c.feature))
		}
	}
	if _, ok := tr.(transport.ScheduleAdmin); f.Admin && f.Schedules && !ok {
		out = append(out, fmt.Sprintf("%T does not implement transport.ScheduleAdmin, although the backend claims Admin and Schedules", tr))
	}
	if f.TxEnqueue {
		if d, ok := tr.(transport.DBProvider); !ok || d.DB() == nil {
			out = append(out, fmt.Sprintf("%T provides no database (transport.DBProvider), although the backend claims TxEnqueue", tr))
		}
	}
	return out
}

// testFeatures checks the claims against the transport docket opens for
// the backend's URL and options, and against the one Open returns, and
// against what docket's API reports.
func testFeatures(t *testing.T, b Backend) {
	f := b.Features
	q, tr := openCaptured(t, b)
	t.Cleanup(func() { q.Close() })
	for _, m := range mismatches(tr, f) {
		t.Errorf("transport opened from Backend.NewURL: %s", m)
	}
	if b.Open != nil {
		raw := b.Open(t)
		for _, m := range mismatches(raw, f) {
			t.Errorf("transport returned by Backend.Open: %s", m)
		}
		if err := raw.Close(); err != nil {
			t.Errorf("Close of the transport returned by Backend.Open: %v", err)
		}
	}
	checkAPI := func(what string, claimed bool, err error) {
		t.Helper()
		if claimed && err != nil {
			t.Errorf("%s: %v, although the backend claims it", what, err)
		}
		if !claimed && !errors.Is(err, docket.ErrUnsupported) {
			t.Errorf("%s = %v, want ErrUnsupported from a backend that does not claim it", what, err)
		}
	}
	_, err := q.List(bg, docket.ListOptions{Limit: 1})
	checkAPI("Queue.List (Listing)", f.Listing, err)
	_, err = q.DB()
	checkAPI("Queue.DB (TxEnqueue)", f.TxEnqueue, err)
	// A step of an unregistered name: refused either way, and only for
	// that reason where workflows are claimed.
	_, err = docket.EnqueueFlow(bg, q, docket.StepByName("transporttest.unregistered", 1))
	if f.Workflows && !errors.Is(err, docket.ErrUnknownTask) {
		t.Errorf("EnqueueFlow (Workflows) = %v, want ErrUnknownTask for an unregistered step", err)
	}
	if !f.Workflows && !errors.Is(err, docket.ErrUnsupported) {
		t.Errorf("EnqueueFlow = %v, want ErrUnsupported from a backend that does not claim Workflows", err)
	}
	_, err = q.Search(bg, docket.SearchOptions{Limit: 1})
	checkAPI("Queue.Search (Admin)", f.Admin, err)
	task := docket.NewTask("tt.features", func(ctx context.Context, _ int) (int, error) { return 0, nil })
	if err := q.Register(task); err != nil {
		t.Fatal(err)
	}
	checkAPI("Task.Schedule (Schedules)", f.Schedules, task.Schedule(q, "features", docket.Every(time.Hour), 0))
}

// need skips the test unless the backend claims the feature.
func need(t *testing.T, claimed bool, feature string) {
	t.Helper()
	if !claimed {
		t.Skipf("the backend does not claim %s", feature)
	}
}

// captureScheme is a URL scheme registered by this package: docket.Open
// on captureScheme:TOKEN opens the URL registered under TOKEN with the
// transport.Config docket built from the options, and records the
// transport it returned. The suite thereby sees the very transport docket
// drives for a backend's URL and options.
const captureScheme = "docket-transporttest"

var (
	captures sync.Map // token -> *capture
	tokens   atomic.Int64
)

type capture struct {
	url string
	tr  transport.Transport
}

func init() { transport.Register(captureScheme, openCapture) }

func openCapture(ctx context.Context, u *url.URL, cfg transport.Config) (transport.Transport, error) {
	v, ok := captures.Load(u.Opaque)
	if !ok {
		return nil, fmt.Errorf("docket: transporttest: no URL registered under %q: %w", u.Opaque, transport.ErrNotFound)
	}
	c := v.(*capture)
	raw := c.url
	if strings.HasPrefix(strings.ToLower(raw), "sqlite:") {
		// As docket.Open reads it: '#' is part of a file name.
		raw = strings.ReplaceAll(raw, "#", "%23")
	}
	target, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("docket: transporttest: backend URL: %w", err)
	}
	tr, err := transport.Open(ctx, target, cfg)
	c.tr = tr
	return tr, err
}

// openCaptured opens a Queue on a fresh backend, with the backend's
// options, and returns it with the transport it drives. The caller closes
// the Queue.
func openCaptured(t *testing.T, b Backend) (*docket.Queue, transport.Transport) {
	t.Helper()
	token := strconv.FormatInt(tokens.Add(1), 10)
	c := &capture{url: b.NewURL(t)}
	captures.Store(token, c)
	defer captures.Delete(token)
	var opts []docket.Option
	if b.Options != nil {
		opts = b.Options(t, c.url)
	}
	q, err := docket.Open(bg, captureScheme+":"+token, opts...)
	if err != nil {
		t.Fatalf("Open(%s): %v", c.url, err)
	}
	return q, c.tr
}
