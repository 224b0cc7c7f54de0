// Package transport is docket's delivery seam: the Transport interface the
// root package drives, the Message and Delivery types that cross it, and the
// URL-scheme registry that lets a backend plug in by import.
//
// A Transport moves tasks from producers to workers and keeps their state:
// it accepts messages (Enqueue), leases ready ones to a worker (Claim),
// extends leases while handlers run (Extend), records outcomes under a fence
// on (id, attempt, owner) (Finish), and answers questions about a task
// (Get, Lookup, Cancel). Every method takes a params struct that carries the
// caller's clock reading (Now), so a transport never calls time.Now for
// decisions that tests must control.
//
// Optional behaviour is discovered by type assertion, in the manner of
// database/sql/driver: ScheduleStore (durable periodic tasks), Lister,
// Pruner (retention), TxEnqueuer (enqueue inside a caller's *sql.Tx),
// DBProvider, IDClaimer (lease by id, for a broker's result store),
// Workflows and FlowOutbox (workflow steps, and those a broker must
// carry), ClaimStopper, Subscriber (push notifications) and ChangeCounter
// (writes by other processes). The rule that makes this work: a backend implements
// an optional interface only if it supports it, never to answer
// ErrUnsupported at run time. Package transport/transporttest checks it.
//
// The default backend is store/sqlite, registered for the "sqlite" and
// "memory" schemes. Broker transports register their own schemes from their
// own packages, so a program that only uses SQLite never links a broker client.
package transport

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"sync"
	"time"
)

// State is the lifecycle state of a task.
//
// A task moves Scheduled → Ready → Running and ends in exactly one terminal
// state: Succeeded, Failed, Cancelled or Expired. A retry moves Running back
// to Scheduled (or Ready when due); a lapsed lease or a graceful release moves
// Running back to Ready.
type State uint8

// Task states. The numeric values are stored; never renumber them.
const (
	StateScheduled State = 1 // waiting for its ETA or retry time
	StateReady     State = 2 // due, waiting for a worker
	StateRunning   State = 3 // leased to a worker
	StateSucceeded State = 4 // handler returned a result
	StateFailed    State = 5 // retries exhausted, permanent error, or worker lost
	StateCancelled State = 6 // cancelled before or while running
	StateExpired   State = 7 // not started before its expiry time
	// StateWaiting: a workflow step whose predecessors have not all
	// ended; it becomes Ready (with their results as its arguments) when
	// they have, or ends with them.
	StateWaiting State = 8
)

var stateNames = [...]string{"", "scheduled", "ready", "running", "succeeded", "failed", "cancelled", "expired", "waiting"}

// String returns the lower-case name of the state ("ready", "failed", ...).
func (s State) String() string {
	if int(s) < len(stateNames) && s != 0 {
		return stateNames[s]
	}
	return "unknown"
}

// Terminal reports whether s is a final state.
func (s State) Terminal() bool { return s >= StateSucceeded && s <= StateExpired }

// Valid reports whether s is one of the defined states.
func (s State) Valid() bool { return s >= StateScheduled && s <= StateWaiting }

// ParseState returns the state named name, as printed by State.String.
func ParseState(name string) (State, bool) {
	for i, n := range stateNames {
		if i > 0 && n == name {
			return State(i), true
		}
	}
	return 0, false
}

// Backoff is an exponential retry policy carried by a message: the n-th retry
// waits Base·2^(n-1), capped at Max, then spread by ±Jitter (a fraction in
// [0,1]).
type Backoff struct {
	Base   time.Duration
	Max    time.Duration
	Jitter float64
}

// Message is a task as it travels: everything a worker on any host needs to
// run it. The producer fills every field; transports store them verbatim.
type Message struct {
	ID       string            // unique task id (a ULID unless the producer chose one)
	Name     string            // registered task name
	Queue    string            // queue name
	Payload  []byte            // encoded arguments (JSON)
	Headers  map[string]string // free-form metadata
	Priority int               // 0..9, higher runs first within a queue
	ETA      time.Time         // not before; zero means as soon as possible
	Expires  time.Time         // do not start after; zero means never
	// MaxAttempts is the number of claims allowed, MaxRetries+1.
	MaxAttempts int
	Timeout     time.Duration // per-attempt handler timeout; zero means none
	Backoff     *Backoff      // nil: the worker's policy for the task name
	ResultTTL   time.Duration // how long the finished task and its result are kept
	// IgnoreResult drops the handler's return value; the state is still
	// kept by every backend that shares state (RabbitMQ alone reports
	// nothing of such a task to its producer).
	IgnoreResult bool
	// UniqueKey, when set, admits at most one non-terminal task with this key.
	UniqueKey string
	Created   time.Time
	// ReturnExisting, at enqueue only (never stored), asks for the existing
	// task's id instead of a DuplicateError when the id or unique key is taken.
	ReturnExisting bool
	// Flow links a workflow step to the rest of its workflow; nil for a
	// plain task. Only a transport that implements Workflows accepts it.
	Flow *FlowStep
}

// FlowStep is a task's place in a workflow (chain, group, chord). The
// steps of one workflow are enqueued in one Enqueue call; the backend
// advances the workflow in the same write that records each step's
// terminal state, whatever recorded it (Finish, a claim that found it
// expired or its worker lost, Cancel, an operator's action):
//
//   - A step that succeeds, or whose Next collects, counts down Next's
//     Waits. At zero Next gets its arguments from its predecessors:
//     the one predecessor's result (Slot -1), or an array of their
//     results in Slot order (FlowArray), or of their outcomes
//     ({"result": r} or {"error": "..."}, FlowCollect). Then Next becomes
//     ready, or, for a FlowPass step, succeeds at once with that array
//     as its result.
//   - A step that ends otherwise, with a Catch, fails the steps of its
//     branch (Catch and Branch equal to its own) that have not ended, so
//     that the branch's last step reports the error to Catch.
//   - A step that ends otherwise without a Catch fails the workflow: its
//     last step (whose id is the workflow's ID) fails with the cause, and
//     every other step that has not ended is cancelled (running ones are
//     asked to stop).
type FlowStep struct {
	ID     string // the workflow: the id of its last step
	Next   string // the step that takes this step's result; empty for the last
	Slot   int    // -1: Next's whole argument; else the index in Next's array
	Waits  int    // predecessors this step waits for; 0 means it is ready now
	Mode   FlowMode
	Catch  string // the nearest collecting step this step's result leads to
	Branch int    // the slot of Catch this step's result leads to
}

// FlowMode says how a workflow step takes its predecessors' results.
type FlowMode uint8

// Flow modes (bits).
const (
	FlowArray   FlowMode = 1 << iota // the argument is the array of results in slot order
	FlowCollect                      // the array holds outcomes, and a failed predecessor counts
	FlowPass                         // the step does not run: its result is its argument
	// FlowPublish marks a step that a broker carries once it is ready (a
	// broker's result store): when its join makes it ready, the store
	// lists it in FlowOutbox.Outbox until it is marked Published.
	FlowPublish
)

// Workflows is implemented by transports that store workflow steps
// (Message.Flow) and advance them. Steps lists the steps of a workflow,
// in id order, with their Flow's ID, Next, Slot and Waits (never below
// zero) filled in. Get, List and a backend's searches fill those too.
type Workflows interface {
	Steps(ctx context.Context, p StepsParams) ([]Info, error)
	// CancelFlow cancels every step of the workflow p.ID that has not
	// started and flags the running ones, in one write; the workflow's
	// last step ends cancelled. It returns an error wrapping ErrNotFound
	// when no such workflow exists.
	CancelFlow(ctx context.Context, p CancelParams) (CancelFlowResult, error)
}

// FlowOutbox is implemented by workflow stores that can serve as a
// broker's result store. The broker publishes the steps that are ready at
// enqueue; the others are made ready later, by a join in the store, and
// must then reach the broker. The store lists them, from the write that
// made them ready, until the broker confirmed their publication: a
// process that dies in between leaves them listed for another (or its
// restart) to publish. A step may so be published twice; the store's
// lease by id runs it once.
type FlowOutbox interface {
	// Outbox returns up to p.Limit steps marked FlowPublish that a join
	// made ready and that were not marked Published since, oldest first.
	Outbox(ctx context.Context, p OutboxParams) ([]Message, error)
	// Published takes the steps p.IDs off the outbox.
	Published(ctx context.Context, p PublishedParams) error
}

// OutboxParams are the arguments of FlowOutbox.Outbox.
type OutboxParams struct {
	Now   time.Time
	Limit int
}

// PublishedParams are the arguments of FlowOutbox.Published.
type PublishedParams struct {
	Now time.Time
	IDs []string
}

// Overdue is implemented by result stores that can serve a broker which
// may lose a message: a RabbitMQ cluster can drop a copy that moves
// between its delay queues while a node goes down. The store knows every
// task that should have a message somewhere; Overdue lists those long past
// their time, which the broker then publishes again. A task may so be
// published twice; that adds no run: the store's lease by id keeps a copy
// of a running task waiting until its lease ends, and a copy of a
// finished task is dropped.
type Overdue interface {
	// Overdue returns up to p.Limit tasks of p.Queues that are scheduled
	// or ready with a time before p.Before, or running under a lease that
	// ended before it, earliest first.
	Overdue(ctx context.Context, p OverdueParams) ([]Message, error)
}

// OverdueParams are the arguments of Overdue.Overdue.
type OverdueParams struct {
	Now    time.Time // the caller's time
	Before time.Time // the tasks' time (run at, or lease end) must be before it
	Queues []string  // the queues to look in; none returns nothing
	Limit  int       // at most this many tasks (at least one)
}

// CancelFlowResult is the outcome of Workflows.CancelFlow.
type CancelFlowResult struct {
	Ended   []string // steps the call cancelled
	Running []string // running steps asked to stop
}

// StepsParams are the arguments of Workflows.Steps.
type StepsParams struct {
	Now time.Time
	ID  string // the workflow's id
}

// Lease identifies one attempt of a task held by one worker. Every state
// write a worker makes is fenced on all three fields.
type Lease struct {
	ID      string
	Attempt int
	Owner   string
}

// Delivery is a message leased to a worker by Claim.
type Delivery struct {
	Message
	Attempt    int       // 1 for the first claim; counted at claim time
	Owner      string    // the claiming worker
	LeaseUntil time.Time // the lease deadline; Extend moves it
	LastError  string    // error recorded by the previous attempt, if any
}

// Lease returns the fencing token of d.
func (d *Delivery) Lease() Lease { return Lease{ID: d.ID, Attempt: d.Attempt, Owner: d.Owner} }

// FlowID returns the workflow d is a step of, or "" for a plain task.
func (d *Delivery) FlowID() string {
	if d.Flow == nil {
		return ""
	}
	return d.Flow.ID
}

// Info is what a transport knows about one task.
type Info struct {
	Message
	State           State
	Attempt         int       // claims so far
	RunAt           time.Time // next run (scheduled/ready), lease deadline (running) or prune time (terminal)
	Started         time.Time // start of the latest attempt
	Finished        time.Time // when it reached its terminal state
	Result          []byte    // encoded result of a succeeded task, unless ignored
	Error           string    // last attempt's error, or the reason it ended
	CancelRequested bool      // cancel asked while running
	// Owner is the worker run holding the task, or that held its latest
	// attempt (kept after the task ends; empty if never claimed).
	Owner string
	// Progress is the latest value the handler reported (JSON), if any.
	Progress []byte
	// Attempts records the attempts that ended without success, oldest
	// first (Get fills it; listings leave it nil).
	Attempts []Attempt
}

// Status is the small, cheap subset of Info used to poll many tasks at once.
type Status struct {
	ID              string
	State           State
	CancelRequested bool
	// Name, Queue and Attempt (claims so far) are filled in
	// ClaimResult.Ended, for the worker's events and metrics.
	Name    string
	Queue   string
	Attempt int
}

// EnqueueParams are the arguments of Transport.Enqueue.
type EnqueueParams struct {
	Now      time.Time
	Messages []Message
}

// EnqueueResult reports what happened to one message of an Enqueue call.
type EnqueueResult struct {
	ID       string // the task's id: the message's, or the existing task's
	Existing bool   // the id or unique key was taken and ReturnExisting was set
}

// ClaimParams are the arguments of Transport.Claim.
type ClaimParams struct {
	Now        time.Time
	Owner      string    // unique per worker run; part of every lease
	Queues     []string  // queues to take from, in this order
	Limit      int       // at most this many deliveries
	LeaseUntil time.Time // initial lease deadline of each delivery
	Exclude    []string  // task names not to claim now (concurrency or rate limits)
	// Capacity is the most deliveries this worker holds at once (running
	// plus prefetched). Push-based transports size the broker's prefetch
	// by it; zero means unknown (use Limit).
	Capacity int
}

// ClaimResult is the outcome of Transport.Claim.
type ClaimResult struct {
	Deliveries []Delivery
	// Ended lists tasks the claim moved to a terminal state instead of
	// delivering them: expired before start, or failed because a lapsed lease
	// used up their last attempt ("worker lost").
	Ended []Status
	// NextAt, when the claim returned fewer than Limit deliveries, is the
	// earliest time a scheduled task becomes due or a lease lapses; zero when
	// nothing is pending. Workers sleep until then unless woken earlier.
	NextAt time.Time
}

// ExtendParams are the arguments of Transport.Extend (the heartbeat).
type ExtendParams struct {
	Now    time.Time
	Leases []Lease
	Until  time.Time
}

// ExtendResult reports one lease of an Extend call.
type ExtendResult struct {
	Lost            bool // the lease is no longer held: stop and do not finish
	CancelRequested bool // another caller asked to cancel this task
}

// FinishParams are the arguments of Transport.Finish.
type FinishParams struct {
	Now   time.Time
	Items []Outcome
	// Handoff, when set, asks a backend that implements Workflows to
	// lease, in the same write, the workflow steps that successes among
	// Items made ready, as a claim would (FinishResult.Next), so that a
	// chain goes on in the worker that ran its last step without another
	// claim. Others ignore it, and so may a backend that cannot.
	Handoff *Handoff
}

// Handoff bounds what Finish may lease (see FinishParams.Handoff).
type Handoff struct {
	Owner      string
	Queues     []string // only steps of these queues
	Exclude    []string // and of none of these task names
	Limit      int      // at most this many, over the whole call
	LeaseUntil time.Time
}

// Outcome is the result of one attempt.
//
// State is the state to move to: Succeeded, Failed, Cancelled; Scheduled
// to retry at RunAt; or Ready to release the lease without consuming the
// attempt (graceful shutdown).
type Outcome struct {
	Lease
	// Queue is the task's queue, as delivered: backends that count
	// outcomes per queue (Admin's history) use it; empty means unknown
	// (the backend looks it up).
	Queue string
	// Flow is the workflow of a step, as delivered (Message.Flow.ID);
	// empty for a plain task. The Queue wakes its workers when a step
	// ends, since the backend may have made the next one ready.
	Flow   string
	State  State
	Result []byte
	Error  string
	RunAt  time.Time
}

// FinishResult reports one outcome of a Finish call.
type FinishResult struct {
	Lost bool // fenced out: the lease was lost, the write did nothing
	// Cancelled: a release or retry ended the task cancelled instead,
	// because a cancel was pending.
	Cancelled bool
	// FlowEnded: the outcome was a workflow step's success, and its
	// workflow has ended (its last step is terminal: perhaps one no
	// worker runs, which this write completed). The Queue wakes the
	// workflow's Wait only then, not at every step.
	FlowEnded bool
	// Next is the step this outcome made ready, leased to
	// FinishParams.Handoff's owner; nil otherwise.
	Next *Delivery
}

// GetParams are the arguments of Transport.Get.
type GetParams struct {
	Now time.Time
	ID  string
}

// LookupParams are the arguments of Transport.Lookup.
type LookupParams struct {
	Now time.Time
	IDs []string
}

// CancelParams are the arguments of Transport.Cancel.
type CancelParams struct {
	Now time.Time
	ID  string
}

// CancelResult is the outcome of Transport.Cancel.
type CancelResult struct {
	// State is the task's state after the call: Cancelled when it had not
	// started, Running (with the cancel flag set) when a worker holds it, or
	// the terminal state it had already reached.
	State State
}

// Transport is the seam between docket and a backend. Implementations must be
// safe for concurrent use.
type Transport interface {
	// Enqueue stores all messages or none (one transaction). A taken id or
	// unique key fails the whole call with a *DuplicateError unless the
	// message asked for ReturnExisting.
	Enqueue(ctx context.Context, p EnqueueParams) ([]EnqueueResult, error)
	// Claim leases up to p.Limit due tasks to p.Owner, counting an attempt
	// for each. It also makes due scheduled tasks ready and rescues tasks
	// whose lease lapsed.
	Claim(ctx context.Context, p ClaimParams) (ClaimResult, error)
	// Extend moves the deadline of the given leases; results are in order.
	Extend(ctx context.Context, p ExtendParams) ([]ExtendResult, error)
	// Finish records outcomes, each fenced on its lease; results in order.
	Finish(ctx context.Context, p FinishParams) ([]FinishResult, error)
	// Get returns one task, or an error wrapping ErrNotFound.
	Get(ctx context.Context, p GetParams) (Info, error)
	// Lookup returns the status of those ids that exist, in any order.
	Lookup(ctx context.Context, p LookupParams) ([]Status, error)
	// Cancel cancels a task that has not started, or flags a running one.
	Cancel(ctx context.Context, p CancelParams) (CancelResult, error)
	// Close releases what the transport holds.
	Close() error
}

// EventKind says what an Event reports.
type EventKind uint8

// Event kinds.
const (
	// EventReady: new work may be due (IDs empty; Queue set when known).
	EventReady EventKind = iota + 1
	// EventFinished: the tasks in IDs reached a terminal state.
	EventFinished
	// EventCancel: cancel was requested for the running tasks in IDs.
	EventCancel
	// EventChanged: something changed that this process did not see directly
	// (another process wrote); listeners re-check what they wait for.
	EventChanged
	// EventLost: the leases of the running tasks in IDs are gone (the
	// broker connection that held them died); their handlers stop, and
	// their outcomes will be refused.
	EventLost
)

// Event is a notification pushed by a Subscriber.
type Event struct {
	Kind  EventKind
	Queue string
	IDs   []string
}

// Subscriber is implemented by transports that push notifications. The
// callback runs on the transport's goroutine and must not block.
type Subscriber interface {
	Subscribe(fn func(Event)) (unsubscribe func())
}

// Watcher is implemented by transports that hear of another process's
// outcome for a task only while asked to listen for it (Celery's Redis
// result backend publishes each record on a channel of the task's own).
// Watch listens for id until stop is called, reporting what it hears to
// the Subscriber's callback as EventFinished. A Queue watches each task
// it waits for; what a watch misses (a record published before the
// subscription took effect), the Queue's look-ups find.
type Watcher interface {
	Watch(ctx context.Context, id string) (stop func())
}

// ChangeCounter is implemented by backends that other processes write to
// directly (a database file): Changes returns a number that differs from
// its previous value whenever another connection or process committed a
// change since the last call (for SQLite, PRAGMA data_version). It must be
// cheap: docket polls it every few milliseconds while anyone waits, to wake
// workers and waiters on writes it did not make itself.
type ChangeCounter interface {
	Changes(ctx context.Context) (uint64, error)
}

// IDClaimer is implemented by transports that can lease given tasks by id.
// A broker transport that keeps task state in another transport (its
// result store) uses it: the broker decides which task runs when, the
// store keeps the state and fences every write.
type IDClaimer interface {
	ClaimIDs(ctx context.Context, p ClaimIDsParams) ([]ClaimIDResult, error)
}

// ClaimIDsParams are the arguments of IDClaimer.ClaimIDs.
type ClaimIDsParams struct {
	Now        time.Time
	Owner      string
	LeaseUntil time.Time
	IDs        []string
}

// ClaimIDResult is the outcome of ClaimIDs for one id.
//
// A task that is due (ready, or scheduled and due, or running under a
// lapsed lease) is leased as its next attempt. A task that is not due, or
// held under a live lease (a duplicate delivery, or a redelivery while the
// first holder may still run it), is left alone with RunAt saying when to
// ask again. Final and unknown tasks are left alone.
type ClaimIDResult struct {
	Delivery *Delivery // the task, leased; nil when it was not
	State    State     // otherwise its state; 0 when there is no such task
	RunAt    time.Time // Scheduled: when it falls due; Running: when the lease ends
	// Ended: this call moved the task to its terminal State (it expired,
	// or its worker was lost with no attempt left).
	Ended bool
}

// Retainer is implemented by a transport that keeps the state of the
// tasks this process enqueued in its own memory (RabbitMQ alone), so that
// it can keep what someone here may still ask about and forget the rest.
// Each task a successful Enqueue returns counts one handle on its result
// (the one the Queue gives its caller); the Queue calls Retain for every
// other handle it gives out (ResultOf), and Release with the task's id
// once a handle is garbage. Release runs on the runtime's cleanup
// goroutine and must not block.
type Retainer interface {
	Retain(id string)
	Release(id string)
}

// ClaimStopper is implemented by push-based transports that receive tasks
// on a worker's behalf between claims (a broker consumer with a prefetch).
// A worker calls StopClaims once its last Claim returned: the transport
// stops receiving for owner and gives back, attempt not consumed, what it
// received but did not hand out. A later Claim starts receiving again.
type ClaimStopper interface {
	StopClaims(ctx context.Context, owner string) error
}

// Pinger is implemented by transports that can check, with one round
// trip, that their backend answers: the health checks' readiness.
type Pinger interface {
	Ping(ctx context.Context) error
}

// PruneParams are the arguments of Pruner.Prune.
type PruneParams struct {
	Now   time.Time
	Limit int // delete at most this many tasks in one call
}

// Pruner is implemented by transports that keep finished tasks and need them
// deleted once their result TTL has passed.
type Pruner interface {
	Prune(ctx context.Context, p PruneParams) (int, error)
}

// TxEnqueuer is implemented by transports that can write tasks inside a
// caller's database transaction, so the tasks exist only if it commits.
type TxEnqueuer interface {
	EnqueueTx(ctx context.Context, tx *sql.Tx, p EnqueueParams) ([]EnqueueResult, error)
}

// DBProvider is implemented by SQL-backed transports that share their
// database with the application.
type DBProvider interface {
	DB() *sql.DB
}

// ListParams are the arguments of Lister.List.
type ListParams struct {
	Now    time.Time
	Name   string  // exact task name; empty for all
	Queue  string  // exact queue; empty for all
	States []State // empty for all
	After  string  // return ids greater than this (paging)
	Limit  int
}

// Lister is implemented by transports that can enumerate tasks, oldest id
// first.
type Lister interface {
	List(ctx context.Context, p ListParams) ([]Info, error)
}

// Errors shared by transports. Implementations wrap them with context.
var (
	// ErrNotFound: no task with that id (never existed, or pruned).
	ErrNotFound = errors.New("docket: task not found")
	// ErrClosed: the transport, or the Queue on it, was closed.
	// docket.ErrClosed is the same error.
	ErrClosed = errors.New("docket: closed")
	// ErrUnsupported: the transport cannot do what was asked.
	ErrUnsupported = errors.New("docket: not supported by this transport")
	// ErrDuplicate: an id or unique key is already taken.
	ErrDuplicate = errors.New("docket: duplicate task")
	// ErrBusy: the backend is locked by someone else for longer than it
	// waits (SQLite's busy_timeout); nothing was written. Retry later.
	ErrBusy = errors.New("docket: backend busy")
	// ErrStorageFull: the backend is out of space (disk full, maxmemory);
	// nothing was written.
	ErrStorageFull = errors.New("docket: storage full")
	// ErrReadOnly: the backend refuses writes.
	ErrReadOnly = errors.New("docket: backend is read-only")
	// ErrOutcomeUnknown: a write was sent but its outcome was never
	// confirmed (the connection broke after the request left): it may or
	// may not have been stored. Retrying an enqueue with the same task id
	// is safe: it finds the stored task instead of making a duplicate.
	ErrOutcomeUnknown = errors.New("docket: outcome unknown")
	// ErrIncompatible: the backend holds data docket cannot use: another
	// application's database, a file that is not a database, or a schema
	// written by a newer docket. Nothing was written.
	ErrIncompatible = errors.New("docket: incompatible backend data")
	// ErrInvalid: bad input, such as a malformed URL or an unknown URL
	// parameter; nothing was done. docket.ErrInvalid is the same error.
	ErrInvalid = errors.New("docket: invalid input")
	// ErrOtherDatabase: a transaction given for a transactional enqueue
	// belongs to another database than the queue's; nothing was written.
	// It also matches ErrInvalid.
	ErrOtherDatabase error = otherDatabase{}
)

type otherDatabase struct{}

func (otherDatabase) Error() string        { return "docket: transaction on another database" }
func (otherDatabase) Is(target error) bool { return target == ErrInvalid }

// DuplicateError reports a taken id or unique key. It matches ErrDuplicate
// with errors.Is.
type DuplicateError struct {
	ID         string // the id of the message that was refused
	UniqueKey  string // the key that was taken, if it was the key
	ExistingID string // the task holding the id or key
}

func (e *DuplicateError) Error() string {
	if e.UniqueKey != "" {
		return "docket: unique key " + quote(e.UniqueKey) + " is held by task " + e.ExistingID
	}
	return "docket: task id " + quote(e.ID) + " already exists"
}

// Is reports whether target is ErrDuplicate.
func (e *DuplicateError) Is(target error) bool { return target == ErrDuplicate }

func quote(s string) string {
	const max = 64
	if len(s) > max {
		s = s[:max] + "..."
	}
	return strconv.Quote(s)
}

// Listeners is a helper for Subscriber implementations: the set of
// subscribed callbacks, with a background watcher that runs while at least
// one is subscribed.
type Listeners struct {
	mu     sync.Mutex
	subs   map[int]func(Event)
	next   int
	stopFn func() // stops the watcher; nil while none runs
}

// Add subscribes fn. When fn is the first subscriber, start is called to
// start the watcher; the function it returns stops it (and must wait for it)
// when the last subscriber leaves. Add returns the unsubscribe function.
func (l *Listeners) Add(fn func(Event), start func() (stop func())) (remove func()) {
	l.mu.Lock()
	if l.subs == nil {
		l.subs = map[int]func(Event){}
	}
	id := l.next
	l.next++
	l.subs[id] = fn
	if len(l.subs) == 1 && start != nil {
		l.stopFn = start()
	}
	l.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			delete(l.subs, id)
			var stop func()
			if len(l.subs) == 0 {
				stop, l.stopFn = l.stopFn, nil
			}
			l.mu.Unlock()
			if stop != nil {
				stop()
			}
		})
	}
}

// Publish calls every subscriber with e.
func (l *Listeners) Publish(e Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, fn := range l.subs {
		fn(e)
	}
}

// Stop stops the watcher, if one runs (for Close).
func (l *Listeners) Stop() {
	l.mu.Lock()
	stop := l.stopFn
	l.stopFn = nil
	l.mu.Unlock()
	if stop != nil {
		stop()
	}
}
