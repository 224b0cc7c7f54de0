package amqp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/docketq/docket/transport"
)

// stored is the RabbitMQ transport with a result store: RabbitMQ carries
// every task (and its retries and delays), another transport (the store,
// SQLite or Redis) keeps every task's state and fences every write.
//
//   - Durable: the task messages in RabbitMQ, and everything the store
//     keeps: states, results, cancellations, unique keys, schedules. A task
//     exists once the store recorded it, which Enqueue does after the
//     broker confirmed its messages.
//   - Other processes: every process sharing the store sees every task
//     (Get, Lookup, List), whoever enqueued it, for as long as the store
//     keeps it; Wait notices another process's outcome through the store's
//     notifications or change counter.
//   - Unique keys and ids: checked by the store, all or nothing; a retry
//     after ErrOutcomeUnknown finds the stored task, and the message it
//     published is dropped when delivered, so the task runs once.
//   - Schedules: kept by the store, each slot fired once however many
//     processes run the scheduler. Listing and retention are the store's.
//   - Running: a worker leases each delivered task in the store by id; the
//     store's lease decides which copy runs. A copy of a finished task is
//     dropped, a copy of a task another worker holds waits in the delay
//     levels until that lease lapses. A message whose task is still not
//     recorded unrecordedWait after it was created is given up: the worker
//     records the id in the store as expired (givenUpHeader) before it
//     drops the message, so a producer that records the task later finds
//     the id taken and reports that nothing was enqueued. Whichever of the
//     two writes the store takes first decides, so a task is never
//     recorded without a message to run it.
//   - Connection loss: the store's leases outlive the connection, so
//     handlers keep running and record their outcomes in the store; the
//     copies RabbitMQ delivers again are settled by the store. Cancel is
//     persisted by the store and broadcast to running handlers.
type stored struct {
	*broker
	store   transport.Transport
	claimer transport.IDClaimer
	lister  transport.Lister
	pruner  transport.Pruner
	sched   transport.ScheduleStore
	admin   transport.Admin
	// schedAdmin is the store's transport.ScheduleAdmin.
	schedAdmin transport.ScheduleAdmin
	flows      transport.Workflows
	outbox     transport.FlowOutbox
	relayKick  chan struct{} // wakes relayLoop (see flows.go)
	owned      bool          // Close closes the store (opened from the URL's result store)
	unsub      func()        // ends the forwarding of the store's notifications
	// giveUpAfter is how long a delivered task may stay unrecorded
	// (unrecordedWait; shorter in tests).
	giveUpAfter time.Duration
	resentMu    sync.Mutex
	resent      map[string]time.Time // tasks published again, when (see overdue.go)
}

var (
	_ transport.Transport     = (*stored)(nil)
	_ transport.Subscriber    = (*stored)(nil)
	_ transport.ClaimStopper  = (*stored)(nil)
	_ transport.ResultStorer  = (*stored)(nil)
	_ transport.Lister        = (*stored)(nil)
	_ transport.Pruner        = (*stored)(nil)
	_ transport.ScheduleStore = (*stored)(nil)
)

// newStored returns the transport with result store st on b, not connected
// yet. It refuses a store that lacks what stored needs (see checkStore).
func newStored(b *broker, st transport.Transport, owned bool) (*stored, error) {
	if err := checkStore(st); err != nil {
		return nil, err
	}
	s := &stored{
		broker: b, store: st, owned: owned, unsub: func() {},
		claimer: st.(transport.IDClaimer), lister: st.(transport.Lister),
		pruner: st.(transport.Pruner), sched: st.(transport.ScheduleStore),
		admin: st.(transport.Admin), schedAdmin: st.(transport.ScheduleAdmin),
		flows: st.(transport.Workflows), outbox: st.(transport.FlowOutbox), relayKick: make(chan struct{}, 1),
		giveUpAfter: unrecordedWait, resent: map[string]time.Time{},
	}
	b.mode = s
	return s, nil
}

// start forwards the store's notifications (finished tasks, cancel
// requests, other processes' writes; new work is announced by RabbitMQ,
// not by the store) and connects.
func (st *stored) start(ctx context.Context) error {
	if sub, ok := st.store.(transport.Subscriber); ok {
		st.unsub = sub.Subscribe(func(e transport.Event) {
			if e.Kind != transport.EventReady {
				st.publishEvent(e)
			}
		})
	}
	if err := st.broker.start(ctx); err != nil {
		st.unsub()
		return err
	}
	st.bg.Add(2)
	go st.relayLoop()
	go st.resendLoop()
	st.kickRelay() // steps left in the outbox by a process that died
	return nil
}

// Close gives back the deliveries no worker took and closes the
// connection; it closes the store only if the transport opened it.
func (st *stored) Close() error {
	if !st.shutdown() {
		return nil
	}
	st.unsub()
	if st.owned {
		return st.store.Close()
	}
	return nil
}

// ResultStore implements transport.ResultStorer.
func (st *stored) ResultStore() transport.Transport { return st.store }

// sessionStarting needs nothing: state travels through the store.
func (st *stored) sessionStarting(context.Context, *session) error { return nil }

// sessionLost keeps the in-flight tasks: their leases are the store's,
// and their outcomes are recorded there.
func (st *stored) sessionLost(*session) []string { return nil }

// cancelHeard needs nothing: the store keeps the cancel.
func (st *stored) cancelHeard(string) {}

// Enqueue implements transport.Transport: it publishes the messages and
// then records them in the store, which checks ids and unique keys, all or
// nothing. A message whose task the store did not record (the store
// refused it, or this process died in between) finds no task when it is
// delivered, and is dropped: the task was never accepted. Publishing first
// leaves no task in the store without a message. A failed publish is
// therefore a definite error (see unrecorded).
func (st *stored) Enqueue(ctx context.Context, p transport.EnqueueParams) ([]transport.EnqueueResult, error) {
	if len(p.Messages) == 0 {
		return nil, nil
	}
	all, now := flowMessages(p.Messages)
	if err := st.publishNew(ctx, p.Now, now); err != nil {
		return nil, unrecorded(err)
	}
	p.Messages = all
	res, err := st.store.Enqueue(ctx, p)
	// The id may be taken by a worker's record of the message given up
	// (see stored): then nothing was enqueued.
	var dup *transport.DuplicateError
	taken := ""
	switch {
	case errors.As(err, &dup) && dup.UniqueKey == "":
		taken = dup.ExistingID
	case err == nil && len(res) == 1 && res[0].Existing && res[0].ID == p.Messages[0].ID:
		taken = res[0].ID
	}
	if taken != "" && st.givenUp(ctx, p.Now, taken) {
		return nil, fmt.Errorf("docket: amqp: task %s was not recorded within %s of being published, and a worker gave it up; nothing was enqueued: %w", taken, st.giveUpAfter, transport.ErrBusy)
	}
	return res, err
}

// givenUpHeader marks the record a worker writes for a task it gave up
// (see stored): an expired task with this header.
const givenUpHeader = "docket.given-up"

// givenUp reports whether the task id is a worker's record of a message it
// gave up.
func (st *stored) givenUp(ctx context.Context, now time.Time, id string) bool {
	in, err := st.store.Get(ctx, transport.GetParams{Now: now, ID: id})
	return err == nil && in.Headers[givenUpHeader] != ""
}

// publishNew publishes new tasks, with no attempt used and no reply queue.
// A zero Created in msgs is set to now.
func (st *stored) publishNew(ctx context.Context, now time.Time, msgs []transport.Message) error {
	return st.publishAgain(ctx, func(s *session) ([]outgoing, error) {
		return st.newMessages(ctx, s, now, msgs, "")
	})
}

// A delivered task the result store does not know is tried again, after
// half its age (10 ms to 1 s), until it is unrecordedWait old, then given
// up (see stored): its producer publishes before it records the task.
//
// A minute is far longer than a producer takes between its publish and its
// record, even on a loaded machine, and costs little while the task
// waits. For its first keepUnrecorded the worker keeps the delivery
// unacknowledged and asks the store again (10 ms to half a second
// apart): a fast worker meets a third of all new tasks this way, before
// their producer recorded them, and a delivery this process holds is
// given back by RabbitMQ if the process dies, while a copy in flight
// between the delay levels can be lost when the cluster node that leads
// their queues is killed (RabbitMQ 3.10, TestFaultClusterRestarts).
// After that (a stalled producer, or a task the store refused because its
// unique key was taken) the delivery goes round the delay levels instead,
// asked about once a second, so that it holds no place in the worker's
// prefetch for the rest of the minute.
const unrecordedWait = time.Minute

// keepUnrecorded is how long a worker keeps a delivery whose task is not
// recorded yet (see unrecordedWait).
const keepUnrecorded = 2 * time.Second

// Claim implements transport.Transport (see broker.claim).
func (st *stored) Claim(ctx context.Context, p transport.ClaimParams) (transport.ClaimResult, error) {
	return st.claim(ctx, p, st.decide)
}

// decide leases the delivered tasks in the store, which keeps their state
// and fences every write. A task the store does not lease is settled:
// dropped when it is final (a duplicate copy, or a cancelled task) or was
// never recorded; kept here and judged again soon when its producer has
// only just published it; sent around the delay levels until the store
// says it is due (a retry not due yet, a copy of a task another worker
// holds under a live lease, a task still not recorded after
// keepUnrecorded); dead-lettered when its worker was lost too often.
func (st *stored) decide(ctx context.Context, s *session, p transport.ClaimParams, picked []*held) (verdict, error) {
	var v verdict
	var ids []string
	var good []*held
	for _, h := range picked {
		if h.bad != nil {
			v.settle = append(v.settle, settlement{h: h, out: []outgoing{st.undecodable(h)}})
			continue
		}
		ids = append(ids, h.msg.ID)
		good = append(good, h)
	}
	if len(ids) == 0 {
		return v, nil
	}
	res, err := st.claimer.ClaimIDs(ctx, transport.ClaimIDsParams{Now: p.Now, Owner: p.Owner, LeaseUntil: p.LeaseUntil, IDs: ids})
	if err != nil {
		return verdict{}, err
	}
	for i, r := range res {
		h := good[i]
		if age := p.Now.Sub(h.msg.Created); r.State == 0 && !r.Ended && age < keepUnrecorded {
			// Published, but its producer has not recorded it yet (it
			// publishes first, and records a moment later): judge it
			// again soon, keeping it here unacknowledged.
			h.notBefore = p.Now.Add(min(max(age/2, 10*time.Millisecond), keepUnrecorded/4))
			v.later = append(v.later, h)
			continue
		}
		if r.Delivery != nil {
			h.msg, h.attempt, h.lastErr = r.Delivery.Message, r.Delivery.Attempt, r.Delivery.LastError
			v.give = append(v.give, h)
			continue
		}
		if r.Ended {
			v.ended = append(v.ended, transport.Status{ID: ids[i], State: r.State, Name: h.msg.Name, Queue: h.msg.Queue, Attempt: h.attempt - 1})
		}
		set, err := st.notLeased(ctx, s, p.Now, h, r)
		if err != nil {
			return verdict{}, err
		}
		v.settle = append(v.settle, set)
	}
	if len(v.ended) > 0 {
		st.kickRelay() // a step's end may make the next step ready
	}
	return v, nil
}

// notLeased returns the settlement of a delivery whose task the store did
// not lease (see decide).
func (st *stored) notLeased(ctx context.Context, s *session, now time.Time, h *held, r transport.ClaimIDResult) (settlement, error) {
	var at time.Time
	switch {
	case r.Ended:
		set := settlement{h: h}
		if r.State == transport.StateFailed {
			set.out = append(set.out, st.deadLetter(h, "worker lost: delivered again after its last attempt"))
		}
		return set, nil
	case r.State == 0 && now.Sub(h.msg.Created) < st.giveUpAfter:
		// Still not recorded after keepUnrecorded (a producer stalled,
		// or the store refused the task, a unique key taken): ask
		// again after half its age, up to a second, round the delay
		// levels, holding no place in this worker's prefetch.
		at = now.Add(min(now.Sub(h.msg.Created)/2, time.Second))
	case r.State == 0:
		recorded, err := st.giveUp(ctx, now, h)
		if err != nil {
			return settlement{}, err
		}
		if !recorded {
			return settlement{h: h}, nil // given up: dropped
		}
		at = now // recorded after all, just now: deliver it again
	case r.State.Terminal() || r.State == transport.StateScheduled:
		if pending, age := st.actedPending(now, h); pending {
			// An action's copy, before the action reached the store
			// (see admin.go): ask again soon.
			at = now.Add(min(max(age/2, 10*time.Millisecond), time.Second))
			break
		}
		if r.State.Terminal() {
			// A copy of a task that already ended.
			return settlement{h: h}, nil
		}
		at = r.RunAt
	default:
		at = r.RunAt
	}
	c, err := st.copyOf(ctx, s, h, h.used, h.lastErr, at, now)
	if err != nil {
		return settlement{}, err
	}
	return settlement{h: h, out: []outgoing{c}}, nil
}

// giveUp records h's task in the store as given up (expired, with
// givenUpHeader), so that its producer can no longer record it. It reports
// whether the producer recorded it first.
func (st *stored) giveUp(ctx context.Context, now time.Time, h *held) (recorded bool, err error) {
	m := transport.Message{
		ID: h.msg.ID, Name: h.msg.Name, Queue: h.msg.Queue, Payload: h.msg.Payload,
		Headers:     map[string]string{givenUpHeader: "not recorded by its producer within " + st.giveUpAfter.String()},
		MaxAttempts: 1, Expires: now, ResultTTL: h.msg.ResultTTL, Created: now,
	}
	if m.ResultTTL <= 0 {
		m.ResultTTL = time.Hour
	}
	_, err = st.store.Enqueue(ctx, transport.EnqueueParams{Now: now, Messages: []transport.Message{m}})
	switch {
	case errors.Is(err, transport.ErrDuplicate):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("docket: amqp: give up unrecorded task %s: %w", h.msg.ID, err)
	}
	st.log.Warn("docket: amqp: a delivered task was never recorded by its producer; given up",
		slog.Group("task", "id", h.msg.ID, "name", h.msg.Name, "queue", h.msg.Queue, "attempt", h.attempt), "after", st.giveUpAfter)
	return false, nil
}

// Extend implements transport.Transport: it renews the store's leases, and
// reports cancels heard on the broadcast as well as the store's.
func (st *stored) Extend(ctx context.Context, p transport.ExtendParams) ([]transport.ExtendResult, error) {
	out, err := st.store.Extend(ctx, p)
	if err != nil {
		return nil, err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	for i, l := range p.Leases {
		out[i].CancelRequested = out[i].CancelRequested || st.isRevoked(l.ID)
	}
	return out, nil
}

// Finish implements transport.Transport. The outcomes are written to the
// store first, fenced on their leases; then what must follow (a retry's or
// a release's new copy) is published and confirmed, and the deliveries are
// acknowledged. A delivery whose outcome the store refused is an obsolete
// copy: acknowledged, like a settled one. A delivery whose connection died
// meanwhile is delivered again, and the store settles it.
func (st *stored) Finish(ctx context.Context, p transport.FinishParams) ([]transport.FinishResult, error) {
	if len(p.Items) == 0 {
		return []transport.FinishResult{}, nil
	}
	if err := checkOutcomes(p.Items); err != nil {
		return nil, err
	}
	// A step runs when RabbitMQ delivers it: the store leases nothing
	// here (see flows.go).
	p.Handoff = nil
	res, err := st.store.Finish(ctx, p)
	if err != nil {
		return nil, err
	}
	for i, o := range p.Items {
		if o.Flow != "" && !res[i].Lost {
			st.kickRelay() // the store may have made the next step ready
			break
		}
	}
	hs := make([]*held, len(p.Items))
	st.mu.Lock()
	for i, o := range p.Items {
		hs[i] = st.heldLease(o.Lease)
	}
	st.mu.Unlock()
	s, err := st.current()
	if err != nil {
		// The outcomes are written; the redelivered copies will be
		// settled by the store.
		st.forget(p.Items)
		return res, nil
	}
	run := slices.Clone(hs)
	for i := range res {
		if res[i].Lost {
			run[i] = nil
		}
	}
	out, err := st.outcomeCopies(ctx, s, p.Now, p.Items, run)
	if err != nil {
		return nil, err
	}
	if err := st.publish(ctx, s, out); err != nil {
		return nil, err
	}
	// An acknowledgement that fails (the channel is gone) needs nothing:
	// RabbitMQ delivers the task again, and the store settles that copy.
	_ = ackHeld(hs, st.consumingAny())
	st.release(p.Items, hs)
	return res, nil
}

// Cancel implements transport.Transport: the store records the request;
// for a running task it is also broadcast, so that its handler's ctx is
// cancelled at once wherever it runs.
func (st *stored) Cancel(ctx context.Context, p transport.CancelParams) (transport.CancelResult, error) {
	res, err := st.store.Cancel(ctx, p)
	if err == nil && res.State == transport.StateCancelled {
		st.kickRelay() // a step's end may make a collecting step ready
	}
	if err != nil || res.State != transport.StateRunning {
		return res, err
	}
	st.revoke([]string{p.ID})
	return res, st.broadcastCancel(ctx, []string{p.ID})
}

// Get implements transport.Transport, from the store.
func (st *stored) Get(ctx context.Context, p transport.GetParams) (transport.Info, error) {
	return st.store.Get(ctx, p)
}

// Lookup implements transport.Transport, from the store.
func (st *stored) Lookup(ctx context.Context, p transport.LookupParams) ([]transport.Status, error) {
	return st.store.Lookup(ctx, p)
}

// List implements transport.Lister, from the store.
func (st *stored) List(ctx context.Context, p transport.ListParams) ([]transport.Info, error) {
	return st.lister.List(ctx, p)
}

// Prune implements transport.Pruner, in the store.
func (st *stored) Prune(ctx context.Context, p transport.PruneParams) (int, error) {
	return st.pruner.Prune(ctx, p)
}

// ScheduleInit implements transport.ScheduleStore, in the store.
func (st *stored) ScheduleInit(ctx context.Context, p transport.ScheduleInitParams) (transport.ScheduleState, error) {
	return st.sched.ScheduleInit(ctx, p)
}

// ScheduleStates implements transport.ScheduleStore, from the store.
func (st *stored) ScheduleStates(ctx context.Context, p transport.ScheduleStatesParams) ([]transport.ScheduleState, error) {
	return st.sched.ScheduleStates(ctx, p)
}

// ScheduleDelete implements transport.ScheduleStore, in the store.
func (st *stored) ScheduleDelete(ctx context.Context, p transport.ScheduleDeleteParams) error {
	return st.sched.ScheduleDelete(ctx, p)
}

// ScheduleFire implements transport.ScheduleStore: the slot's task is
// published, then the store records the slot and the task in one step. If
// the store does not fire the slot (another process did, or this one died
// in between), the message finds no task and is dropped when delivered.
func (st *stored) ScheduleFire(ctx context.Context, p transport.ScheduleFireParams) (transport.ScheduleFireResult, error) {
	if p.Message != nil && !p.Slot.IsZero() {
		if p.Message.Created.IsZero() {
			p.Message.Created = p.Now
		}
		if err := st.publishNew(ctx, p.Now, []transport.Message{*p.Message}); err != nil {
			return transport.ScheduleFireResult{}, fmt.Errorf("docket: schedule %s: %w", p.Name, unrecorded(err))
		}
	}
	return st.sched.ScheduleFire(ctx, p)
}

// storedCounted is stored over a result store that other processes write
// to directly (a SQLite file): it passes the store's change counter on,
// so that docket notices those writes (transport.ChangeCounter).
type storedCounted struct {
	*stored
	counter transport.ChangeCounter
}

var _ transport.ChangeCounter = (*storedCounted)(nil)

// Changes implements transport.ChangeCounter with the store's counter.
func (st *storedCounted) Changes(ctx context.Context) (uint64, error) {
	return st.counter.Changes(ctx)
}

// Ping implements transport.Pinger: the broker, then the result store.
func (st *stored) Ping(ctx context.Context) error {
	if err := st.broker.Ping(ctx); err != nil {
		return err
	}
	if p, ok := st.store.(transport.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}
