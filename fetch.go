package docket

import (
	"context"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"sync/atomic"
	"time"

	"github.com/docketq/docket/internal/backoff"
	"github.com/docketq/docket/transport"
)

// claimBackoff spaces claims after failures, jittered so that workers of
// many hosts do not reconnect in step.
var claimBackoff = backoff.Policy{Min: 50 * time.Millisecond, Max: 5 * time.Second}

// fetchLoop claims tasks while there is room, and sleeps until new work is
// announced, a slot frees up, a scheduled task falls due or a rate limit
// refills.
func (w *worker) fetchLoop() {
	defer close(w.fetchDone)
	q := w.q
	failures := 0
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	pf := prefetcher{max: w.prefetch, started: &w.started, last: time.Now()}
	var paused []string // the paused queues this loop last acted on
	for !w.stopping() {
		w.tick(&w.fetchTick)
		sleep := time.Second
		capacity := w.conc + pf.size()
		free := capacity - w.heldCount()
		if now := w.pausedNow(); !slices.Equal(now, paused) {
			w.pausesChanged(paused, now)
			paused = now
		}
		// Claim in batches: wait for half the capacity to free up, unless
		// executors are about to run out of work.
		var queues []string
		if free > 0 && (len(w.work) == 0 || free >= max(1, capacity/2)) {
			queues = w.claimable(paused)
		}
		if len(queues) > 0 {
			now := q.now()
			exclude, refill := w.limits.excluded(time.Now())
			limit := min(free, 256)
			ctx, cancel := w.call(w.loopCall())
			res, err := q.claim(ctx, transport.ClaimParams{
				Now: now, Owner: w.owner, Queues: queues, Limit: limit,
				LeaseUntil: now.Add(q.cfg.lease), Exclude: exclude, Capacity: w.conc + w.prefetch,
			})
			cancel()
			if err != nil {
				failures++
				if failures == 1 || failures%100 == 0 {
					q.cfg.logger.Error("docket: claim failed", "err", err, "failures", failures)
				}
				sleep = claimBackoff.Delay(failures)
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

// pausesChanged acts on a change of the paused queues: a transport that
// receives tasks ahead of claims (RabbitMQ's consumers) is told to stop
// and give back what it holds, so that nothing of a newly paused queue
// waits unacknowledged in this process for as long as the pause lasts;
// the next claim consumes the queues still claimable.
func (w *worker) pausesChanged(before, after []string) {
	cs, ok := w.q.t.(transport.ClaimStopper)
	if !ok || !slices.ContainsFunc(after, func(q string) bool { return !slices.Contains(before, q) }) {
		return
	}
	ctx, cancel := w.call(10 * time.Second)
	defer cancel()
	if err := cs.StopClaims(ctx, w.owner); err != nil {
		w.q.cfg.logger.Warn("docket: could not give back the tasks of a paused queue", "err", err)
	}
}

// until returns the end of ex's lease as last renewed.
func (ex *execution) until() time.Time {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	return ex.leaseUntil
}

func (w *worker) accept(d transport.Delivery) {
	w.mu.Lock()
	w.held++
	ex := w.track(d)
	w.mu.Unlock()
	w.work <- ex // never blocks: capacity is conc+prefetch, and so is held
}

// track makes an execution of d, whose place in the capacity (held) is
// counted, and adds it to the inflight tasks; w.mu is held.
func (w *worker) track(d transport.Delivery) *execution {
	ctx, cancel := context.WithCancelCause(w.ctx)
	ex := &execution{d: d, ctx: ctx, cancel: cancel, leaseUntil: d.LeaseUntil, held: true}
	w.inflight[d.ID] = ex
	w.limits.hold(d.Name)
	return ex
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
