package docket

import (
	"sync"
	"time"
)

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
