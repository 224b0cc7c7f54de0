// Package storetransport turns a store.Store into a transport.Transport: the
// default transport, used for the sqlite and memory schemes.
//
// A Store is already a complete backend; what this package adds is
// notification. After each successful write it tells subscribers in this
// process at once (new work, finished tasks, cancel requests), and while
// anyone is subscribed it polls the store's ChangeCounter every
// Config.PollInterval so that writes by other processes on the same database
// wake workers and waiters too.
package storetransport

import (
	"context"
	"database/sql"
	"time"

	"github.com/docketq/docket/store"
	"github.com/docketq/docket/transport"
)

// Transport is a store.Store with notifications.
type Transport struct {
	store.Store
	cfg       transport.Config
	listeners transport.Listeners
}

var (
	_ transport.Transport  = (*Transport)(nil)
	_ transport.Subscriber = (*Transport)(nil)
)

// New wraps s. Optional capabilities of s (Pruner, TxEnqueuer, DBProvider,
// Lister) stay reachable through Unwrap and the forwarding methods below.
func New(s store.Store, cfg transport.Config) *Transport {
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 5 * time.Millisecond
	}
	return &Transport{Store: s, cfg: cfg}
}

// Unwrap returns the underlying store.
func (t *Transport) Unwrap() store.Store { return t.Store }

// Subscribe implements transport.Subscriber. While anyone is subscribed
// and the store can tell, a poller watches for other processes' writes.
func (t *Transport) Subscribe(fn func(transport.Event)) func() {
	return t.listeners.Add(fn, func() func() {
		cc, ok := t.Store.(store.ChangeCounter)
		if !ok {
			return nil
		}
		stop, done := make(chan struct{}), make(chan struct{})
		go t.poll(cc, stop, done)
		return func() { close(stop); <-done }
	})
}

func (t *Transport) publish(e transport.Event) { t.listeners.Publish(e) }

// poll watches the store's change counter and publishes EventChanged when
// another process committed. It checks every PollInterval while changes
// come, and slows down to 20 times that after a second without any, so an
// idle process costs almost nothing; the first change after a quiet spell
// is noticed within the slower interval, and the fast pace resumes.
func (t *Transport) poll(cc store.ChangeCounter, stop, done chan struct{}) {
	defer close(done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { <-stop; cancel() }()
	fast, slow := t.cfg.PollInterval, 20*t.cfg.PollInterval
	last, err := cc.Changes(ctx)
	timer := time.NewTimer(fast)
	defer timer.Stop()
	failures := 0
	quietSince := time.Now()
	for {
		select {
		case <-stop:
			return
		case <-timer.C:
		}
		v, err2 := cc.Changes(ctx)
		switch {
		case err2 != nil:
			if ctx.Err() != nil {
				return
			}
			failures++
			if failures == 1 || failures%1000 == 0 {
				t.cfg.Logger.Warn("docket: change check failed", "err", err2)
			}
		case err != nil || v != last:
			failures = 0
			last, err = v, nil
			quietSince = time.Now()
			t.publish(transport.Event{Kind: transport.EventChanged})
		}
		next := fast
		if time.Since(quietSince) > time.Second {
			next = slow
		}
		timer.Reset(next)
	}
}

// Enqueue implements transport.Transport and announces the new work.
func (t *Transport) Enqueue(ctx context.Context, p transport.EnqueueParams) ([]transport.EnqueueResult, error) {
	res, err := t.Store.Enqueue(ctx, p)
	if err == nil {
		t.announce(p)
	}
	return res, err
}

func (t *Transport) announce(p transport.EnqueueParams) {
	var last string
	for i := range p.Messages {
		if q := p.Messages[i].Queue; q != last {
			t.publish(transport.Event{Kind: transport.EventReady, Queue: q})
			last = q
		}
	}
}

// Claim implements transport.Transport and announces tasks the claim ended.
func (t *Transport) Claim(ctx context.Context, p transport.ClaimParams) (transport.ClaimResult, error) {
	res, err := t.Store.Claim(ctx, p)
	if err == nil && len(res.Ended) > 0 {
		ids := make([]string, len(res.Ended))
		for i, st := range res.Ended {
			ids[i] = st.ID
		}
		t.publish(transport.Event{Kind: transport.EventFinished, IDs: ids})
	}
	return res, err
}

// Finish implements transport.Transport and announces finished tasks, and
// new work for retries and releases.
func (t *Transport) Finish(ctx context.Context, p transport.FinishParams) ([]transport.FinishResult, error) {
	res, err := t.Store.Finish(ctx, p)
	if err != nil {
		return res, err
	}
	var ended []string
	requeued := false
	for i, o := range p.Items {
		if res[i].Lost {
			continue
		}
		if o.State.Terminal() || res[i].Cancelled {
			ended = append(ended, o.ID)
		} else {
			requeued = true
		}
	}
	if len(ended) > 0 {
		t.publish(transport.Event{Kind: transport.EventFinished, IDs: ended})
	}
	if requeued {
		t.publish(transport.Event{Kind: transport.EventReady})
	}
	return res, nil
}

// Cancel implements transport.Transport and announces the cancellation.
func (t *Transport) Cancel(ctx context.Context, p transport.CancelParams) (transport.CancelResult, error) {
	res, err := t.Store.Cancel(ctx, p)
	if err != nil {
		return res, err
	}
	switch res.State {
	case transport.StateRunning:
		t.publish(transport.Event{Kind: transport.EventCancel, IDs: []string{p.ID}})
	case transport.StateCancelled:
		t.publish(transport.Event{Kind: transport.EventFinished, IDs: []string{p.ID}})
	}
	return res, nil
}

// Prune implements transport.Pruner when the store does; otherwise it returns
// transport.ErrUnsupported.
func (t *Transport) Prune(ctx context.Context, p transport.PruneParams) (int, error) {
	if pr, ok := t.Store.(transport.Pruner); ok {
		return pr.Prune(ctx, p)
	}
	return 0, transport.ErrUnsupported
}

// EnqueueTx implements transport.TxEnqueuer when the store does. Workers in
// this and other processes notice the tasks through the change counter once
// the caller's transaction commits.
func (t *Transport) EnqueueTx(ctx context.Context, tx *sql.Tx, p transport.EnqueueParams) ([]transport.EnqueueResult, error) {
	if te, ok := t.Store.(transport.TxEnqueuer); ok {
		return te.EnqueueTx(ctx, tx, p)
	}
	return nil, transport.ErrUnsupported
}

// DB implements transport.DBProvider; nil when the store has no *sql.DB.
func (t *Transport) DB() *sql.DB {
	if d, ok := t.Store.(transport.DBProvider); ok {
		return d.DB()
	}
	return nil
}

// List implements transport.Lister when the store does.
func (t *Transport) List(ctx context.Context, p transport.ListParams) ([]transport.Info, error) {
	if l, ok := t.Store.(transport.Lister); ok {
		return l.List(ctx, p)
	}
	return nil, transport.ErrUnsupported
}

func (t *Transport) scheduleStore() (transport.ScheduleStore, error) {
	if s, ok := t.Store.(transport.ScheduleStore); ok {
		return s, nil
	}
	return nil, transport.ErrUnsupported
}

// ScheduleInit implements transport.ScheduleStore when the store does.
func (t *Transport) ScheduleInit(ctx context.Context, p transport.ScheduleInitParams) (transport.ScheduleState, error) {
	s, err := t.scheduleStore()
	if err != nil {
		return transport.ScheduleState{}, err
	}
	return s.ScheduleInit(ctx, p)
}

// ScheduleStates implements transport.ScheduleStore when the store does.
func (t *Transport) ScheduleStates(ctx context.Context, p transport.ScheduleStatesParams) ([]transport.ScheduleState, error) {
	s, err := t.scheduleStore()
	if err != nil {
		return nil, err
	}
	return s.ScheduleStates(ctx, p)
}

// ScheduleFire implements transport.ScheduleStore when the store does, and
// announces the enqueued task.
func (t *Transport) ScheduleFire(ctx context.Context, p transport.ScheduleFireParams) (transport.ScheduleFireResult, error) {
	s, err := t.scheduleStore()
	if err != nil {
		return transport.ScheduleFireResult{}, err
	}
	res, err := s.ScheduleFire(ctx, p)
	if err == nil && res.Fired && p.Message != nil {
		t.publish(transport.Event{Kind: transport.EventReady, Queue: p.Message.Queue})
	}
	return res, err
}

// ScheduleDelete implements transport.ScheduleStore when the store does.
func (t *Transport) ScheduleDelete(ctx context.Context, p transport.ScheduleDeleteParams) error {
	s, err := t.scheduleStore()
	if err != nil {
		return err
	}
	return s.ScheduleDelete(ctx, p)
}

// ClaimIDs implements transport.IDClaimer when the store does, and
// announces the tasks it ended.
func (t *Transport) ClaimIDs(ctx context.Context, p transport.ClaimIDsParams) ([]transport.ClaimIDResult, error) {
	c, ok := t.Store.(transport.IDClaimer)
	if !ok {
		return nil, transport.ErrUnsupported
	}
	res, err := c.ClaimIDs(ctx, p)
	if err != nil {
		return nil, err
	}
	var ended []string
	for i, r := range res {
		if r.Ended {
			ended = append(ended, p.IDs[i])
		}
	}
	if len(ended) > 0 {
		t.publish(transport.Event{Kind: transport.EventFinished, IDs: ended})
	}
	return res, nil
}
