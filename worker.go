package docket

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/docketq/docket/transport"
)

// Run works on tasks until ctx ends, then stops gracefully: it stops
// claiming, lets running handlers finish for up to ShutdownGrace, then
// cancels their ctx and releases their tasks without consuming an attempt.
// It returns nil after a graceful stop. Only one Run per Queue may be active;
// at least one task must be registered.
//
// A worker never holds more tasks than Concurrency plus Prefetch; it extends
// their leases every LeaseDuration/3 while they wait or run.
func (q *Queue) Run(ctx context.Context) error {
	if q.isClosed() {
		return ErrClosed
	}
	q.mu.Lock()
	if q.worker != nil {
		q.mu.Unlock()
		return ErrRunning
	}
	if len(q.tasks) == 0 && len(q.schedules) == 0 {
		q.mu.Unlock()
		return fmt.Errorf("docket: run: %w: no tasks or schedules registered; call Register first", ErrInvalid)
	}
	// Start before publishing the worker, so that a concurrent Close or
	// Shutdown always sees a fully started one.
	w := newWorker(q)
	w.start()
	q.worker = w
	q.mu.Unlock()

	select {
	case <-ctx.Done():
		gctx, cancel := context.WithTimeout(context.Background(), q.cfg.grace)
		w.shutdown(gctx)
		cancel()
	case <-w.stopped:
	}
	<-w.stopped
	q.mu.Lock()
	q.worker = nil
	q.mu.Unlock()
	return nil
}

// Shutdown stops the running workers gracefully: no new claims, running
// handlers may finish until ctx ends; then their ctx is cancelled and their
// tasks are released. It returns when Run has stopped: nil if every handler
// finished in time, ctx's error otherwise. Without a running worker it
// returns nil at once.
func (q *Queue) Shutdown(ctx context.Context) error {
	w := q.running()
	if w == nil {
		return nil
	}
	return w.shutdown(ctx)
}

type execution struct {
	d      transport.Delivery
	ctx    context.Context
	cancel context.CancelCauseFunc

	mu         sync.Mutex
	leaseUntil time.Time
	running    bool
	// finished: the outcome is with the completer. A renewal that finds
	// the lease gone then means the outcome was recorded first; a lease
	// that was really lost is reported by the completer, whose write the
	// fence refuses.
	finished bool

	held bool // counts against the worker's capacity; guarded by worker.mu

	run attemptRun // the handler's run, once it returned; guarded by mu
}

type worker struct {
	q *Queue
	// ctx is the worker's lifetime, under the Queue's: its loops' calls
	// and its handlers derive from it, and it ends once the worker stopped.
	ctx    context.Context
	endCtx context.CancelFunc

	owner    string
	conc     int
	prefetch int

	work     chan *execution
	finishCh chan finishReq
	freed    chan struct{}
	limits   limits

	started atomic.Int64             // tasks that began running (drives the prefetch)
	paused  atomic.Pointer[[]string] // paused queues, sorted (pauseLoop)
	// fetchTick and beatTick: when the claim loop and the heartbeat last
	// came round (CheckLive), as nanoseconds since born
	fetchTick, beatTick atomic.Int64
	born                time.Time

	mu sync.Mutex
	// inflight holds every execution whose lease this worker still holds,
	// until its outcome is recorded; held counts those not yet run to the
	// end (waiting or running), which is what Concurrency+Prefetch bounds.
	inflight map[string]*execution
	held     int
	// workClosed: the stop sequence took what waited in work, and no
	// more may be added (see takeHandoffs).
	workClosed bool

	stopFetch chan struct{} // closed: stop claiming
	hardStop  chan struct{} // closed: cancel running handlers
	stopped   chan struct{} // closed: Run may return
	stopOnce  sync.Once
	hardOnce  sync.Once

	fetchDone    chan struct{}
	execs        sync.WaitGroup
	loops        sync.WaitGroup // heartbeat, pruner
	completeDone chan struct{}
	quitLoops    chan struct{}
}

func newWorker(q *Queue) *worker {
	host, _ := os.Hostname()
	if len(host) > 40 {
		host = host[:40]
	}
	w := &worker{
		q:            q,
		owner:        fmt.Sprintf("%s:%d:%s", host, os.Getpid(), ulid.Make()),
		born:         time.Now(),
		conc:         q.cfg.concurrency,
		prefetch:     q.cfg.prefetch,
		finishCh:     make(chan finishReq, q.cfg.concurrency+q.cfg.prefetch),
		freed:        make(chan struct{}, 1),
		inflight:     map[string]*execution{},
		stopFetch:    make(chan struct{}),
		hardStop:     make(chan struct{}),
		stopped:      make(chan struct{}),
		fetchDone:    make(chan struct{}),
		completeDone: make(chan struct{}),
		quitLoops:    make(chan struct{}),
	}
	w.ctx, w.endCtx = context.WithCancel(q.life)
	w.work = make(chan *execution, w.conc+w.prefetch)
	w.limits.init(q.cfg.nameLimits, q.cfg.rateLimits)
	return w
}

func (w *worker) start() {
	w.tick(&w.fetchTick)
	w.tick(&w.beatTick)
	for range w.conc {
		w.execs.Add(1)
		go w.executor()
	}
	if a, ok := w.q.t.(transport.Admin); ok {
		// The first read is made before the first claim, so a queue
		// paused before the worker started is never claimed.
		if err := w.readPaused(a); err != nil {
			w.q.cfg.logger.Warn("docket: could not read paused queues", "err", err)
		}
		w.loops.Add(1)
		go w.pauseLoop(a)
	}
	go w.fetchLoop()
	go w.completer()
	w.loops.Add(4)
	go w.registryLoop()
	go w.heartbeatLoop()
	go w.pruneLoop()
	go w.beatLoop()
}

// running returns the worker while Run is active, or nil.
func (q *Queue) running() *worker {
	q.mu.RLock()
	defer q.mu.RUnlock()
	return q.worker
}

// call returns the context of one call a worker loop makes to the backend:
// bounded by d, and ended with the worker.
func (w *worker) call(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(w.ctx, d)
}

// loopCall bounds a claim, a prune or a scheduler pass: at least a lease,
// and never less than half a minute, so that a broker slow to declare a
// queue or start a consumer is waited for rather than dropped.
func (w *worker) loopCall() time.Duration { return max(w.q.cfg.lease, 30*time.Second) }

func (w *worker) stopping() bool {
	select {
	case <-w.stopFetch:
		return true
	default:
		return false
	}
}

// shutdown starts the stop sequence once; if ctx ends first, it escalates to
// a hard stop. It returns when the worker has stopped.
func (w *worker) shutdown(ctx context.Context) error {
	w.stopOnce.Do(func() { go w.stopSequence() })
	select {
	case <-w.stopped:
		return nil
	case <-ctx.Done():
		w.hardOnce.Do(func() { close(w.hardStop) })
		<-w.stopped
		return ctx.Err()
	}
}

func (w *worker) stopSequence() {
	close(w.stopFetch)
	<-w.fetchDone
	if cs, ok := w.q.t.(transport.ClaimStopper); ok {
		ctx, cancel := context.WithTimeout(w.ctx, 10*time.Second)
		if err := cs.StopClaims(ctx, w.owner); err != nil {
			w.q.cfg.logger.Warn("docket: stop receiving tasks", "err", err)
		}
		cancel()
	}
	// Tasks claimed but not started go back at once, attempt not consumed.
	w.mu.Lock()
	w.workClosed = true
	w.mu.Unlock()
	var pending []*execution
drain:
	for {
		select {
		case ex := <-w.work:
			pending = append(pending, ex)
		default:
			break drain
		}
	}
	close(w.work)
	for _, ex := range pending {
		w.finish(ex, release(ex))
	}
	execsDone := make(chan struct{})
	go func() { w.execs.Wait(); close(execsDone) }()
	select {
	case <-execsDone:
	case <-w.hardStop:
		w.cancelAll(errShutdown)
		// Handlers that honour ctx return now and release their own tasks.
		// Give them a moment, then release for those that ignore ctx: their
		// late results are fenced out.
		select {
		case <-execsDone:
		case <-time.After(min(w.q.cfg.lease/3, 2*time.Second)):
			for _, ex := range w.runningExecutions() {
				w.q.cfg.logger.Warn("docket: handler ignored cancellation at shutdown; releasing its task", deliveryAttr(&ex.d))
				w.finish(ex, release(ex))
			}
		}
	}
	// Let the completer write what is queued, then stop the loops.
	close(w.quitLoops)
	<-w.completeDone
	w.loops.Wait()
	w.endCtx()
	close(w.stopped)
}

func release(ex *execution) transport.Outcome {
	return transport.Outcome{Lease: ex.d.Lease(), Queue: ex.d.Queue, Flow: ex.d.FlowID(), State: transport.StateReady}
}

func (w *worker) heldCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.held
}

// unhold frees ex's place in the worker's capacity (once).
func (w *worker) unhold(ex *execution) {
	w.mu.Lock()
	was := ex.held
	if was {
		ex.held = false
		w.held--
	}
	w.mu.Unlock()
	if was {
		w.limits.unhold(ex.d.Name)
		signal(w.freed)
	}
}

// passOn ends ex's hold on the capacity like unhold, but keeps its place
// counted, for the step its success may make ready (see reserveHandoff).
// It reports false, doing nothing, when ex no longer holds a place.
func (w *worker) passOn(ex *execution) bool {
	w.mu.Lock()
	was := ex.held
	ex.held = false
	w.mu.Unlock()
	if was {
		w.limits.unhold(ex.d.Name)
	}
	return was
}

func (w *worker) runningIDs() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Collect(maps.Keys(w.inflight))
}

func (w *worker) runningExecutions() []*execution {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []*execution
	for _, ex := range w.inflight {
		ex.mu.Lock()
		if ex.running {
			out = append(out, ex)
		}
		ex.mu.Unlock()
	}
	return out
}

func (w *worker) cancelTasks(ids []string, cause error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, id := range ids {
		if ex := w.inflight[id]; ex != nil {
			ex.cancel(cause)
		}
	}
}

func (w *worker) cancelAll(cause error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ex := range w.inflight {
		ex.cancel(cause)
	}
}

// errors used as cancellation causes of a handler's ctx.
var (
	errCancelRequested = errors.New("docket: task cancelled")
	errShutdown        = errors.New("docket: worker shutting down")
	errLeaseLost       = errors.New("docket: lease lost")
)
