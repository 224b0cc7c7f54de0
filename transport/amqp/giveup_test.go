package amqp_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/docketq/docket/store/sqlite"
	"github.com/docketq/docket/transport"
	"github.com/docketq/docket/transport/amqp"
)

// gatedStore is a SQLite result store whose first Enqueue waits for
// release (a producer slow to record what it published), and whose
// ClaimIDs can report a recorded task as unknown once (a worker that read
// just before the producer's record).
type gatedStore struct {
	*sqlite.Store
	release chan struct{} // nil: Enqueue does not wait
	waited  atomic.Bool
	hideIDs atomic.Bool
}

func (g *gatedStore) Enqueue(ctx context.Context, p transport.EnqueueParams) ([]transport.EnqueueResult, error) {
	if g.release != nil && !g.waited.Swap(true) {
		<-g.release
	}
	return g.Store.Enqueue(ctx, p)
}

func (g *gatedStore) ClaimIDs(ctx context.Context, p transport.ClaimIDsParams) ([]transport.ClaimIDResult, error) {
	if g.hideIDs.Swap(false) {
		return make([]transport.ClaimIDResult, len(p.IDs)), nil
	}
	return g.Store.ClaimIDs(ctx, p)
}

func openGiveUp(t *testing.T, g *gatedStore) transport.Transport {
	t.Helper()
	u := freshURL(t, "")
	s, err := sqlite.Open(context.Background(), sqlite.Options{Path: filepath.Join(t.TempDir(), "state.db")})
	if err != nil {
		t.Fatal(err)
	}
	g.Store = s
	t.Cleanup(func() { s.Close() })
	tr, err := amqp.New(context.Background(), amqp.Config{URL: u, ResultStore: g})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// claimUntil claims as a worker whose clock is a minute ahead (so that
// every unrecorded delivery is past the wait) until cond holds.
func claimUntil(t *testing.T, st transport.Transport, cond func(transport.ClaimResult) bool) transport.ClaimResult {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		now := time.Now().Add(time.Minute)
		res, err := st.Claim(context.Background(), transport.ClaimParams{Now: now, Owner: "w", Queues: []string{"default"}, Limit: 10, LeaseUntil: now.Add(time.Minute)})
		if err != nil {
			t.Fatalf("Claim: %v", err)
		}
		if cond(res) {
			return res
		}
	}
	t.Fatal("the condition did not hold within a minute")
	return transport.ClaimResult{}
}

func newMsg(id string) transport.Message {
	return transport.Message{ID: id, Name: "t", Queue: "default", Payload: []byte("1"), MaxAttempts: 1, ResultTTL: time.Hour}
}

// A producer that records its task only after a worker gave the message
// up is told that nothing was enqueued, and the task never exists without
// a message: the store holds the worker's record of it, expired.
func TestGiveUpBeatsLateRecord(t *testing.T) {
	g := &gatedStore{release: make(chan struct{})}
	st := openGiveUp(t, g)
	id := ulid.Make().String()
	done := make(chan error, 1)
	go func() {
		_, err := st.Enqueue(context.Background(), transport.EnqueueParams{Now: time.Now(), Messages: []transport.Message{newMsg(id)}})
		done <- err
	}()
	// The worker receives the message and, the task unrecorded past the
	// wait, gives it up.
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		claimUntil(t, st, func(transport.ClaimResult) bool { return true })
		if in, err := g.Store.Get(context.Background(), transport.GetParams{Now: time.Now(), ID: id}); err == nil {
			if in.State != transport.StateExpired || in.Headers[amqp.GivenUpHeader] == "" {
				t.Fatalf("the given-up task: %v %v", in.State, in.Headers)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the worker did not give the message up")
		}
	}
	close(g.release)
	err := <-done
	if !errors.Is(err, transport.ErrBusy) {
		t.Fatalf("the late producer's Enqueue: %v, want an error wrapping ErrBusy", err)
	}
	res := claimUntil(t, st, func(transport.ClaimResult) bool { return true })
	if len(res.Deliveries) != 0 {
		t.Fatalf("the given-up task was delivered: %+v", res.Deliveries)
	}
}

// A worker that finds the task unknown past the wait, but whose record of
// giving it up loses to the producer's, delivers the task instead of
// dropping it.
func TestLateRecordBeatsGiveUp(t *testing.T) {
	g := &gatedStore{}
	st := openGiveUp(t, g)
	id := ulid.Make().String()
	if _, err := st.Enqueue(context.Background(), transport.EnqueueParams{Now: time.Now(), Messages: []transport.Message{newMsg(id)}}); err != nil {
		t.Fatal(err)
	}
	g.hideIDs.Store(true)
	res := claimUntil(t, st, func(r transport.ClaimResult) bool { return len(r.Deliveries) > 0 })
	if len(res.Deliveries) != 1 || res.Deliveries[0].ID != id {
		t.Fatalf("delivered %+v, want task %s", res.Deliveries, id)
	}
	if g.hideIDs.Load() {
		t.Fatal("the store was never asked about the task")
	}
	in, err := g.Store.Get(context.Background(), transport.GetParams{Now: time.Now(), ID: id})
	if err != nil || in.State != transport.StateRunning || in.Headers[amqp.GivenUpHeader] != "" {
		t.Fatalf("task after the lost give-up: %+v, %v", in, err)
	}
}
