package docket

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/docketq/docket/transport"
)

// A Queue learns that something changed in three ways:
//
//   - its own writes: after each successful write the Queue wakes its own
//     workers and waiters at once (the methods below), whatever the backend;
//   - a backend that pushes (transport.Subscriber): Redis's pub/sub,
//     RabbitMQ's replies and cancel broadcast, which carry other processes'
//     writes;
//   - a backend that other processes write to directly
//     (transport.ChangeCounter, such as a SQLite file): watchChanges polls
//     its counter and re-checks what this process waits for.
//
// All three end in onEvent.

// enqueued announces new work in this process.
func (q *Queue) enqueued(msgs []transport.Message) {
	var last string
	for i := range msgs {
		if qn := msgs[i].Queue; qn != last {
			q.onEvent(transport.Event{Kind: transport.EventReady, Queue: qn})
			last = qn
		}
	}
}

// claim leases tasks and announces those the claim ended instead.
func (q *Queue) claim(ctx context.Context, p transport.ClaimParams) (transport.ClaimResult, error) {
	res, err := q.t.Claim(ctx, p)
	if err == nil && len(res.Ended) > 0 {
		ids := make([]string, len(res.Ended))
		for i, st := range res.Ended {
			ids[i] = st.ID
		}
		q.claimEnded(res.Ended)
		q.onEvent(transport.Event{Kind: transport.EventFinished, IDs: ids})
		q.stepsEnded()
	}
	return res, err
}

// announceFinish announces, after outcomes were recorded, the tasks that
// ended, and new work for retries and releases. The caller reports the
// attempts' events first, so that a Wait that returns has seen them.
func (q *Queue) announceFinish(p transport.FinishParams, res []transport.FinishResult) {
	var ended, flows []string
	requeued, failed := false, false
	for i, o := range p.Items {
		if o.Flow != "" && !res[i].Lost {
			// The backend may have made the next step ready: wake the
			// workers, unless it leased that step to this one already
			// (res[i].Next). It may have ended the workflow with a step
			// that no worker runs (a group's gathering step): wake the
			// workflow's Wait. A step that did not succeed may also have
			// failed the workflow and flagged its running steps.
			requeued = requeued || res[i].Next == nil
			if res[i].FlowEnded && o.Flow != o.ID {
				flows = append(flows, o.Flow)
			}
			failed = failed || o.State != transport.StateSucceeded
		}
		switch {
		case res[i].Lost:
		case o.State.Terminal() || res[i].Cancelled:
			ended = append(ended, o.ID)
		default:
			requeued = true
		}
	}
	if len(ended) > 0 {
		q.onEvent(transport.Event{Kind: transport.EventFinished, IDs: ended})
	}
	if requeued {
		q.onEvent(transport.Event{Kind: transport.EventReady})
	}
	if len(flows) > 0 {
		q.waiters.notify(flows)
	}
	if failed {
		q.stepsEnded()
	}
}

// cancel cancels a task and announces the outcome: the end of a waiting
// task, or the cancel of a running one (which may run here).
func (q *Queue) cancel(ctx context.Context, id string) (transport.CancelResult, error) {
	res, err := q.t.Cancel(ctx, transport.CancelParams{Now: q.now(), ID: id})
	if err != nil {
		return res, err
	}
	switch res.State {
	case transport.StateRunning:
		q.onEvent(transport.Event{Kind: transport.EventCancel, IDs: []string{id}})
	case transport.StateCancelled:
		q.onEvent(transport.Event{Kind: transport.EventFinished, IDs: []string{id}})
		q.stepsEnded()
	}
	return res, nil
}

// stepsEnded re-checks what this process waits for and runs, and wakes
// its workers, after tasks ended that may be workflow steps: the backend
// may have made the next step ready, ended the workflow (its last step,
// whose Wait is here), or asked running steps to stop.
func (q *Queue) stepsEnded() {
	if q.flows {
		q.onEvent(transport.Event{Kind: transport.EventChanged})
	}
}

// fire fires a schedule's slot and announces the task it enqueued.
func (q *Queue) fire(ctx context.Context, ss transport.ScheduleStore, p transport.ScheduleFireParams) (transport.ScheduleFireResult, error) {
	res, err := ss.ScheduleFire(ctx, p)
	if err == nil && res.Fired && p.Message != nil {
		q.onEvent(transport.Event{Kind: transport.EventReady, Queue: p.Message.Queue})
	}
	return res, err
}

// watchChanges publishes EventChanged when another process committed to
// the backend. It checks every PollInterval while changes come, and slows
// to 20 times that after a second without any, so an idle process costs
// almost nothing; the first change after a quiet spell is noticed within
// the slower interval, and the fast pace resumes.
func (q *Queue) watchChanges(ctx context.Context, cc transport.ChangeCounter) {
	defer q.bg.Done()
	fast, slow := q.cfg.pollInterval, 20*q.cfg.pollInterval
	last, err := cc.Changes(ctx)
	timer := time.NewTimer(fast)
	defer timer.Stop()
	failures := 0
	quietSince := time.Now()
	for {
		select {
		case <-q.closing:
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
				q.cfg.logger.Warn("docket: change check failed", "err", err2)
			}
		case err != nil || v != last:
			failures = 0
			last, err = v, nil
			quietSince = time.Now()
			q.onEvent(transport.Event{Kind: transport.EventChanged})
		}
		next := fast
		if time.Since(quietSince) > time.Second {
			next = slow
		}
		timer.Reset(next)
	}
}

// onEvent receives the transport's notifications. It must not block.
func (q *Queue) onEvent(e transport.Event) {
	switch e.Kind {
	case transport.EventReady:
		signal(q.wake)
	case transport.EventFinished:
		q.waiters.notify(e.IDs)
	case transport.EventCancel:
		if w := q.running(); w != nil {
			w.cancelTasks(e.IDs, errCancelRequested)
		}
	case transport.EventLost:
		if w := q.running(); w != nil {
			w.cancelTasks(e.IDs, errLeaseLost)
		}
	case transport.EventChanged:
		signal(q.wake)
		signal(q.recheck)
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// rechecker looks up the tasks this process waits on or runs whenever
// another process wrote, so that results and cancels made elsewhere are
// seen within the poll interval.
func (q *Queue) rechecker() {
	defer q.bg.Done()
	ctx := q.life
	for {
		select {
		case <-q.closing:
			return
		case <-q.recheck:
		}
		ids := q.waiters.ids()
		w := q.running()
		var running []string
		if w != nil {
			running = w.runningIDs()
		}
		if len(ids)+len(running) == 0 {
			continue
		}
		sts, err := q.t.Lookup(ctx, transport.LookupParams{Now: q.now(), IDs: append(ids, running...)})
		if err != nil {
			q.cfg.logger.Warn("docket: look up tasks", "err", err)
			continue
		}
		var done, cancels []string
		for _, st := range sts {
			if st.State.Terminal() {
				done = append(done, st.ID)
			}
			if st.CancelRequested {
				cancels = append(cancels, st.ID)
			}
		}
		q.waiters.notify(done)
		if w != nil && len(cancels) > 0 {
			w.cancelTasks(cancels, errCancelRequested)
		}
	}
}

// hub wakes Wait calls when their task finishes.
type hub struct {
	mu sync.Mutex
	m  map[string][]chan struct{}
}

func (h *hub) add(id string) (chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	h.mu.Lock()
	h.m[id] = append(h.m[id], ch)
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		list := h.m[id]
		for i, c := range list {
			if c == ch {
				list = append(list[:i], list[i+1:]...)
				break
			}
		}
		if len(list) == 0 {
			delete(h.m, id)
		} else {
			h.m[id] = list
		}
	}
}

func (h *hub) notify(ids []string) {
	if len(ids) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, id := range ids {
		for _, ch := range h.m[id] {
			signal(ch)
		}
	}
}

func (h *hub) ids() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Collect(maps.Keys(h.m))
}
