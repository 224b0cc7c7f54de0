package docket

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/oklog/ulid/v2"

	"github.com/docketq/docket/internal/failpoint"
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
		return errors.New("docket: Run: no tasks registered; call Register first")
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
	q.mu.RLock()
	w := q.worker
	q.mu.RUnlock()
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
}

type finishReq struct {
	ex  *execution
	out transport.Outcome
}

type worker struct {
	q        *Queue
	owner    string
	conc     int
	prefetch int

	work     chan *execution
	finishCh chan finishReq
	freed    chan struct{}
	limits   limits

	started atomic.Int64 // tasks that began running (drives the prefetch)

	mu sync.Mutex
	// inflight holds every execution whose lease this worker still holds,
	// until its outcome is recorded; held counts those not yet run to the
	// end (waiting or running), which is what Concurrency+Prefetch bounds.
	inflight map[string]*execution
	held     int

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
	w.work = make(chan *execution, w.conc+w.prefetch)
	w.limits.init(q.cfg.nameLimits, q.cfg.rateLimits)
	return w
}

func (w *worker) start() {
	for range w.conc {
		w.execs.Add(1)
		go w.executor()
	}
	go w.fetchLoop()
	go w.completer()
	w.loops.Add(3)
	go w.heartbeatLoop()
	go w.pruneLoop()
	go w.beatLoop()
}

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
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := cs.StopClaims(ctx, w.owner); err != nil {
			w.q.cfg.logger.Warn("docket: stop receiving tasks", "err", err)
		}
		cancel()
	}
	// Tasks claimed but not started go back at once, attempt not consumed.
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
				w.q.cfg.logger.Warn("docket: handler ignored cancellation at shutdown; releasing its task", "task", ex.d.ID, "name", ex.d.Name)
				w.finish(ex, release(ex))
			}
		}
	}
	// Let the completer write what is queued, then stop the loops.
	close(w.quitLoops)
	<-w.completeDone
	w.loops.Wait()
	close(w.stopped)
}

func release(ex *execution) transport.Outcome {
	return transport.Outcome{Lease: ex.d.Lease(), State: transport.StateReady}
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

// fetchLoop claims tasks while there is room, and sleeps until new work is
// announced, a slot frees up, a scheduled task falls due or a rate limit
// refills.
func (w *worker) fetchLoop() {
	defer close(w.fetchDone)
	q := w.q
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	failures := 0
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	pf := prefetcher{max: w.prefetch, started: &w.started, last: time.Now()}
	for !w.stopping() {
		sleep := time.Second
		capacity := w.conc + pf.size()
		free := capacity - w.heldCount()
		// Claim in batches: wait for half the capacity to free up, unless
		// executors are about to run out of work.
		if free > 0 && (len(w.work) == 0 || free >= max(1, capacity/2)) {
			now := q.now()
			exclude, refill := w.limits.excluded(time.Now())
			limit := min(free, 256)
			res, err := q.claim(ctx, transport.ClaimParams{
				Now: now, Owner: w.owner, Queues: w.queueOrder(), Limit: limit,
				LeaseUntil: now.Add(q.cfg.lease), Exclude: exclude, Capacity: w.conc + w.prefetch,
			})
			if err != nil {
				failures++
				if failures == 1 || failures%100 == 0 {
					q.cfg.logger.Error("docket: claim failed", "err", err, "failures", failures)
				}
				// Back off exponentially, with full jitter so that workers
				// of many hosts do not reconnect in step.
				backoff := min(float64(5*time.Second), float64(50*time.Millisecond)*math.Pow(2, float64(min(failures, 10))))
				sleep = time.Duration(backoff/2 + rand.Float64()*backoff/2)
			} else {
				failures = 0
				for i := range res.Deliveries {
					w.accept(res.Deliveries[i])
				}
				if len(res.Deliveries) == limit {
					continue // there may be more
				}
				if !res.NextAt.IsZero() {
					sleep = min(sleep, max(res.NextAt.Sub(now), time.Millisecond))
				}
			}
			if !refill.IsZero() {
				sleep = min(sleep, max(time.Until(refill), time.Millisecond))
			}
		}
		timer.Reset(sleep)
		select {
		case <-w.stopFetch:
			return
		case <-q.wake:
		case <-w.freed:
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// until returns the end of ex's lease as last renewed.
func (ex *execution) until() time.Time {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	return ex.leaseUntil
}

func (w *worker) accept(d transport.Delivery) {
	ctx, cancel := context.WithCancelCause(context.Background())
	ex := &execution{d: d, ctx: ctx, cancel: cancel, leaseUntil: d.LeaseUntil}
	ex.held = true
	w.mu.Lock()
	w.inflight[d.ID] = ex
	w.held++
	w.mu.Unlock()
	w.limits.hold(d.Name)
	w.work <- ex // never blocks: capacity is conc+prefetch, and so is inflight
}

// prefetcher sizes the prefetch to the observed pace: enough waiting tasks
// for about prefetchWindow of work, between 1 and the configured maximum.
// Fast tasks get large claim batches (few transactions per task); slow
// tasks get a prefetch of 1, so no task waits behind a long one in this
// worker while another worker could take it.
type prefetcher struct {
	max     int
	started *atomic.Int64
	last    time.Time
	count   int64
	rate    float64 // tasks started per second, smoothed
}

const prefetchWindow = 5 * time.Millisecond

func (p *prefetcher) size() int {
	if p.max <= 1 {
		return p.max
	}
	now := time.Now()
	if el := now.Sub(p.last); el >= 10*time.Millisecond {
		n := p.started.Load()
		cur := float64(n-p.count) / el.Seconds()
		p.rate = 0.5*p.rate + 0.5*cur
		p.count, p.last = n, now
	}
	return max(1, min(p.max, int(p.rate*prefetchWindow.Seconds())))
}

// queueOrder returns this worker's queues in a weighted random order.
func (w *worker) queueOrder() []string {
	q := w.q
	if len(q.cfg.queues) == 0 {
		qs := q.allQueues()
		rand.Shuffle(len(qs), func(i, j int) { qs[i], qs[j] = qs[j], qs[i] })
		return qs
	}
	type kv struct {
		name string
		key  float64
	}
	keys := make([]kv, 0, len(q.cfg.queues))
	for name, weight := range q.cfg.queues {
		// Efraimidis–Spirakis: sorting by u^(1/w) samples by weight.
		keys = append(keys, kv{name, math.Pow(rand.Float64(), 1/float64(weight))})
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].key > keys[j].key })
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.name
	}
	return out
}

func (w *worker) executor() {
	defer w.execs.Done()
	for ex := range w.work {
		if context.Cause(ex.ctx) == errLeaseLost {
			w.done(ex)
			continue
		}
		if !w.limits.acquire(ex.d.Name, w.stopFetch) {
			w.finish(ex, release(ex))
			continue
		}
		ex.mu.Lock()
		ex.running = true
		ex.mu.Unlock()
		w.started.Add(1)
		out, skip := w.q.execute(ex.ctx, &ex.d)
		failpoint.Hit("handler.after")
		if out.State == StateScheduled {
			failpoint.Hit("retry.before-record")
		}
		w.limits.release(ex.d.Name)
		ex.mu.Lock()
		ex.running = false
		ex.mu.Unlock()
		if skip {
			w.done(ex)
			continue
		}
		w.finish(ex, out)
	}
}

// finish hands an outcome to the completer, which writes outcomes in
// batches. The task no longer counts against the capacity, so the next
// claim can share a transaction with this outcome; its lease is still
// renewed until the outcome is recorded. After the completer stopped (a
// handler that outlived a hard stop), the outcome is dropped: its task was
// already released.
func (w *worker) finish(ex *execution, out transport.Outcome) {
	ex.mu.Lock()
	ex.finished = true
	ex.mu.Unlock()
	w.unhold(ex)
	select {
	case w.finishCh <- finishReq{ex, out}:
	case <-w.completeDone:
	}
}

// done forgets an execution: its outcome is recorded, or must not be.
func (w *worker) done(ex *execution) {
	w.unhold(ex)
	ex.cancel(nil)
	w.mu.Lock()
	if w.inflight[ex.d.ID] == ex {
		delete(w.inflight, ex.d.ID)
	}
	w.mu.Unlock()
}

// completer writes attempt outcomes in batches, retrying transient errors
// while the leases are still held.
func (w *worker) completer() {
	defer close(w.completeDone)
	q := w.q
	batch := make([]finishReq, 0, 256)
	ctx := context.Background()
	for {
		var first finishReq
		select {
		case first = <-w.finishCh:
		case <-w.quitLoops:
			// Flush what is queued, then stop.
			select {
			case first = <-w.finishCh:
			default:
				return
			}
		}
		batch = append(batch[:0], first)
	gather:
		for len(batch) < cap(batch) {
			select {
			case r := <-w.finishCh:
				batch = append(batch, r)
			default:
				break gather
			}
		}
		items := make([]transport.Outcome, len(batch))
		for i, r := range batch {
			items[i] = r.out
		}
		var res []transport.FinishResult
		var err error
		giveUp := time.Now().Add(q.cfg.lease)
		for attempt := 0; ; attempt++ {
			res, err = q.finish(ctx, transport.FinishParams{Now: q.now(), Items: items})
			if err == nil || time.Now().After(giveUp) {
				break
			}
			if attempt == 0 {
				q.cfg.logger.Warn("docket: recording outcomes failed; retrying", "err", err, "tasks", len(items))
			}
			time.Sleep(min(time.Second, 20*time.Millisecond<<min(attempt, 6)))
		}
		if err != nil {
			q.cfg.logger.Error("docket: recording outcomes failed; the tasks will run again after their lease", "err", err, "tasks", len(items))
		}
		for i, r := range batch {
			if err == nil && res[i].Lost {
				q.cfg.logger.Warn("docket: lease lost before the outcome was recorded; discarded", "task", r.ex.d.ID, "attempt", r.ex.d.Attempt, "outcome", r.out.State, "lease_until", r.ex.until())
			}
			w.done(r.ex)
		}
	}
}

// heartbeatLoop extends the leases of every held task every lease/3 and
// cancels handlers whose lease was lost or whose task was cancelled.
func (w *worker) heartbeatLoop() {
	defer w.loops.Done()
	q := w.q
	tick := time.NewTicker(q.cfg.lease / 3)
	defer tick.Stop()
	ctx := context.Background()
	for {
		select {
		case <-w.quitLoops:
			return
		case <-tick.C:
		}
		w.mu.Lock()
		exs := make([]*execution, 0, len(w.inflight))
		leases := make([]transport.Lease, 0, len(w.inflight))
		for _, ex := range w.inflight {
			exs = append(exs, ex)
			leases = append(leases, ex.d.Lease())
		}
		w.mu.Unlock()
		if len(leases) == 0 {
			continue
		}
		now := q.now()
		until := now.Add(q.cfg.lease)
		res, err := q.t.Extend(ctx, transport.ExtendParams{Now: now, Leases: leases, Until: until})
		if err != nil {
			q.cfg.logger.Warn("docket: lease renewal failed", "err", err, "tasks", len(leases))
			// Without a renewal, a lease that has run out is lost: stop
			// those handlers, another worker may already run the task.
			for _, ex := range exs {
				ex.mu.Lock()
				expired := !now.Before(ex.leaseUntil)
				ex.mu.Unlock()
				if expired {
					ex.cancel(errLeaseLost)
				}
			}
			continue
		}
		for i, ex := range exs {
			ex.mu.Lock()
			finished := ex.finished
			ex.mu.Unlock()
			switch {
			case res[i].Lost && finished:
				// Recorded, or about to be refused and reported by the
				// completer: no handler is left to stop.
			case res[i].Lost:
				q.cfg.logger.Warn("docket: lease lost; stopping the handler", "task", ex.d.ID, "attempt", ex.d.Attempt, "lease_until", ex.until())
				ex.cancel(errLeaseLost)
			case res[i].CancelRequested:
				ex.cancel(errCancelRequested)
				fallthrough
			default:
				ex.mu.Lock()
				ex.leaseUntil = until
				ex.mu.Unlock()
			}
		}
	}
}

// pruneLoop deletes finished tasks whose result TTL passed, in batches.
func (w *worker) pruneLoop() {
	defer w.loops.Done()
	q := w.q
	pr, ok := q.t.(transport.Pruner)
	if !ok {
		return
	}
	tick := time.NewTicker(q.cfg.pruneInterval)
	defer tick.Stop()
	ctx := context.Background()
	const batch = 1000
	for {
		select {
		case <-w.quitLoops:
			return
		case <-tick.C:
		}
		for !w.stopping() {
			n, err := pr.Prune(ctx, transport.PruneParams{Now: q.now(), Limit: batch})
			if err != nil {
				if !errors.Is(err, transport.ErrUnsupported) {
					q.cfg.logger.Warn("docket: prune failed", "err", err)
				}
				break
			}
			if n < batch {
				break
			}
		}
	}
}

// execute runs one delivery's handler and decides the outcome. skip means
// no outcome may be written (the lease was lost).
func (q *Queue) execute(parent context.Context, d *transport.Delivery) (out transport.Outcome, skip bool) {
	out.Lease = d.Lease()
	t := q.lookupTask(d.Name)
	if t == nil {
		out.State = StateFailed
		out.Error = fmt.Sprintf("docket: task name %q is not registered in the worker that claimed it", d.Name)
		return out, false
	}
	tc := &TaskContext{ID: d.ID, Name: d.Name, Queue: d.Queue, Attempt: d.Attempt, MaxRetries: d.MaxAttempts - 1, Headers: d.Headers, LastError: d.LastError}
	ctx := context.WithValue(parent, ctxKey{}, tc)
	var timeoutCancel context.CancelFunc = func() {}
	if d.Timeout > 0 {
		ctx, timeoutCancel = context.WithTimeoutCause(ctx, d.Timeout, fmt.Errorf("docket: attempt timed out after %s", d.Timeout))
	}
	var result []byte
	var err error
	if len(d.Payload) > q.cfg.maxPayload {
		err = Permanent(&TooLargeError{What: "arguments", Size: len(d.Payload), Limit: q.cfg.maxPayload})
	} else {
		result, err = invoke(ctx, t, d.Payload, q.cfg.maxResult)
	}
	if err != nil && ctx.Err() != nil && context.Cause(parent) == nil {
		if cause := context.Cause(ctx); cause != nil && cause != err && !errors.Is(err, cause) {
			err = fmt.Errorf("%w: %w", cause, err)
		}
	}
	timeoutCancel()
	cause := context.Cause(parent)
	switch {
	case cause == errLeaseLost:
		return out, true
	case err == nil:
		out.State = StateSucceeded
		if !d.IgnoreResult {
			out.Result = result
		}
	case cause == errShutdown:
		out.State = StateReady
	case cause == errCancelRequested:
		out.State, out.Error = StateCancelled, errText(err)
	default:
		out.Error = errText(err)
		var perm *PermanentError
		var retry *RetryError
		switch {
		case errors.As(err, &perm):
			out.State = StateFailed
		case d.Attempt >= d.MaxAttempts:
			out.State = StateFailed
		default:
			var delay time.Duration
			if errors.As(err, &retry) {
				delay = max(retry.Delay, 0)
			} else {
				delay = q.backoffFor(d, t).Delay(d.Attempt, err)
			}
			now := q.now()
			runAt, ok := addDelay(now, delay)
			if !ok {
				runAt, _ = addDelay(now, maxDelay)
			}
			out.State, out.RunAt = StateScheduled, runAt
		}
	}
	return out, false
}

func (q *Queue) backoffFor(d *transport.Delivery, t Registrable) Backoff {
	if b := d.Backoff; b != nil {
		return Exponential{Base: b.Base, Max: b.Max, Jitter: b.Jitter}
	}
	if b := t.taskOptions().backoff; b != nil {
		return b
	}
	return defaultBackoff()
}

// invoke calls the handler, turning a panic into an error with its stack.
func invoke(ctx context.Context, t Registrable, payload []byte, maxResult int) (result []byte, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &PanicError{Value: v, Stack: string(debug.Stack())}
		}
	}()
	return t.invoke(ctx, payload, maxResult)
}

// PanicError is the error recorded for an attempt whose handler panicked.
// A panic counts as a failed attempt and is retried like any error.
type PanicError struct {
	Value any
	Stack string
}

func (e *PanicError) Error() string { return fmt.Sprintf("panic: %v\n\n%s", e.Value, e.Stack) }

const maxErrText = 64 << 10

func errText(err error) string {
	s := err.Error()
	if len(s) > maxErrText {
		s = s[:maxErrText]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
		s += "…"
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// Drain runs every task that is due, one at a time in the caller's
// goroutine, through the same execution path as Run (decoding, timeouts,
// panics, retries, results), until none is due; tasks that handlers enqueue
// run too if due. Retries and countdowns in the future are left alone:
// advance the clock (see dockettest) and Drain again. It returns how many
// attempts ran. Drain takes the queues this Queue knows: those of registered
// tasks, those it enqueued to, those named by the Queues option, and
// "default". Per-task concurrency and rate limits do not apply.
func (q *Queue) Drain(ctx context.Context) (int, error) {
	if q.isClosed() {
		return 0, ErrClosed
	}
	owner := "drain:" + ulid.Make().String()
	n := 0
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		if _, err := q.fireDue(ctx); err != nil {
			return n, err
		}
		now := q.now()
		res, err := q.claim(ctx, transport.ClaimParams{
			Now: now, Owner: owner, Queues: q.allQueues(), Limit: 1, LeaseUntil: now.Add(q.cfg.lease),
		})
		if err != nil {
			return n, err
		}
		if len(res.Deliveries) == 0 {
			if len(res.Ended) > 0 {
				continue
			}
			return n, nil
		}
		for i := range res.Deliveries {
			d := &res.Deliveries[i]
			dctx, cancel := context.WithCancelCause(ctx)
			out, skip := q.execute(dctx, d)
			cancel(nil)
			n++
			if skip {
				continue
			}
			if _, err := q.finish(context.WithoutCancel(ctx), transport.FinishParams{Now: q.now(), Items: []transport.Outcome{out}}); err != nil {
				return n, err
			}
		}
	}
}

// limits enforces per-process, per-task-name concurrency caps and rate
// limits. Names at their cap or out of tokens are excluded from claims;
// executors wait for a slot and a token before starting a task.
type limits struct {
	mu      sync.Mutex
	caps    map[string]int
	held    map[string]int
	sems    map[string]chan struct{}
	buckets map[string]*bucket
}

type bucket struct {
	rate, burst, tokens float64
	last                time.Time
}

func (b *bucket) refill(now time.Time) {
	if b.last.IsZero() {
		b.tokens, b.last = b.burst, now
		return
	}
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
}

func (l *limits) init(caps map[string]int, rates map[string]rateLimit) {
	l.caps, l.held = caps, map[string]int{}
	l.sems, l.buckets = map[string]chan struct{}{}, map[string]*bucket{}
	for name, n := range caps {
		l.sems[name] = make(chan struct{}, n)
	}
	for name, r := range rates {
		l.buckets[name] = &bucket{rate: r.perSecond, burst: float64(r.burst)}
	}
}

func (l *limits) hold(name string) {
	if l.caps[name] == 0 && l.buckets[name] == nil {
		return
	}
	l.mu.Lock()
	l.held[name]++
	l.mu.Unlock()
}

func (l *limits) unhold(name string) {
	if l.caps[name] == 0 && l.buckets[name] == nil {
		return
	}
	l.mu.Lock()
	l.held[name]--
	l.mu.Unlock()
}

// excluded returns the names not to claim now, and when the earliest rate
// limit refills (zero if none is empty).
func (l *limits) excluded(now time.Time) (names []string, refill time.Time) {
	if len(l.caps) == 0 && len(l.buckets) == 0 {
		return nil, time.Time{}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for name, n := range l.caps {
		if l.held[name] >= n {
			names = append(names, name)
		}
	}
	for name, b := range l.buckets {
		b.refill(now)
		// Tokens are taken at start; count held tasks as spoken for.
		if avail := b.tokens - float64(l.held[name]); avail < 1 {
			names = append(names, name)
			at := now.Add(time.Duration((1 - avail) / b.rate * float64(time.Second)))
			if refill.IsZero() || at.Before(refill) {
				refill = at
			}
		}
	}
	return names, refill
}

// acquire waits for a concurrency slot and a rate token for name; false if
// stop closed first.
func (l *limits) acquire(name string, stop <-chan struct{}) bool {
	if sem := l.sems[name]; sem != nil {
		select {
		case sem <- struct{}{}:
		case <-stop:
			return false
		}
	}
	b := l.buckets[name]
	if b == nil {
		return true
	}
	for {
		l.mu.Lock()
		b.refill(time.Now())
		if b.tokens >= 1 {
			b.tokens--
			l.mu.Unlock()
			return true
		}
		wait := time.Duration((1 - b.tokens) / b.rate * float64(time.Second))
		l.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-stop:
			t.Stop()
			if sem := l.sems[name]; sem != nil {
				<-sem
			}
			return false
		}
	}
}

func (l *limits) release(name string) {
	if sem := l.sems[name]; sem != nil {
		<-sem
	}
}
