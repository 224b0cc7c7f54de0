package docket

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/docketq/docket/transport"
)

// maxProgress bounds a progress value's encoded size.
const maxProgress = 1024

// progressEvery is the most often a task's progress is written.
const progressEvery = time.Second

// ProgressValue is what Progress reports: done out of total.
type ProgressValue struct {
	Done  int64 `json:"done"`
	Total int64 `json:"total"`
}

// Progress reports a running task's progress as done out of total. It is
// stored (at most once a second; the latest value is written when the
// attempt ends) and shown by Info, Search, the docket command and the
// dashboard. It returns an error wrapping ErrInvalid outside a handler,
// and ErrUnsupported on a backend that keeps no task state an operator can
// search. A lost lease is not an error: the value is dropped.
func Progress(ctx context.Context, done, total int64) error {
	return ReportProgress(ctx, ProgressValue{Done: done, Total: total})
}

// ReportProgress reports a running task's progress as any small value that
// encodes to JSON (at most 1 KiB), such as {"stage": "upload", "files": 3}.
// See Progress.
func ReportProgress(ctx context.Context, v any) error {
	ts, ok := ctx.Value(ctxKey{}).(*taskState)
	if !ok {
		return fmt.Errorf("docket: progress: %w", invalid("ctx", nil, "the ctx of a running task's handler"))
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("docket: progress: %w", invalid("value", fmt.Sprintf("%T", v), "a value that encodes to JSON: "+err.Error()))
	}
	if len(raw) > maxProgress {
		return fmt.Errorf("docket: progress: %w", &TooLargeError{What: "progress", Size: len(raw), Limit: maxProgress})
	}
	return ts.progress.report(ctx, raw)
}

// progress writes one attempt's progress, at most once per progressEvery.
// A value reported sooner waits, and the latest one is written by a timer
// or when the attempt ends (end), whichever comes first.
type progress struct {
	q     *Queue
	lease transport.Lease
	d     *transport.Delivery // for log lines
	used  atomic.Bool         // report was called: end has work to do

	// write is held while a value is taken and written, so that end
	// returns only after every write it did not make itself.
	write sync.Mutex

	mu      sync.Mutex
	last    time.Time // the last write
	pending []byte    // the latest value not written yet
	timer   *time.Timer
	ended   bool
}

func (p *progress) report(ctx context.Context, raw []byte) error {
	a, ok := p.q.t.(transport.Admin)
	if !ok {
		_, err := p.q.admin("progress")
		return err
	}
	p.used.Store(true)
	p.mu.Lock()
	if p.ended {
		p.mu.Unlock()
		return nil
	}
	if wait := progressEvery - time.Since(p.last); wait > 0 {
		p.pending = raw
		if p.timer == nil {
			p.timer = time.AfterFunc(wait, p.tick)
		}
		p.mu.Unlock()
		return nil
	}
	p.last = time.Now()
	p.pending = nil
	p.mu.Unlock()
	p.write.Lock()
	defer p.write.Unlock()
	_, err := a.SetProgress(ctx, transport.ProgressParams{Now: p.q.now(), Lease: p.lease, Value: raw})
	return err
}

// tick writes the pending value once its turn came.
func (p *progress) tick() {
	p.mu.Lock()
	p.timer = nil
	p.mu.Unlock()
	p.flush(p.q.life)
}

// flush writes the pending value, if any, now.
func (p *progress) flush(ctx context.Context) {
	p.write.Lock()
	defer p.write.Unlock()
	p.mu.Lock()
	raw := p.pending
	p.pending = nil
	if raw == nil || p.ended {
		p.mu.Unlock()
		return
	}
	p.last = time.Now()
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := p.q.t.(transport.Admin).SetProgress(ctx, transport.ProgressParams{Now: p.q.now(), Lease: p.lease, Value: raw}); err != nil {
		p.q.cfg.logger.Warn("docket: could not record progress", deliveryAttr(p.d), "err", err)
	}
}

// end writes what is pending and stops further writes: the attempt is
// over, and its outcome is written next. It returns after any write in
// flight, so no progress write lands after the outcome.
func (p *progress) end(ctx context.Context) {
	if !p.used.Load() {
		return
	}
	p.mu.Lock()
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
	p.mu.Unlock()
	p.flush(ctx)
	p.write.Lock()
	p.mu.Lock()
	p.ended = true
	p.pending = nil
	p.mu.Unlock()
	p.write.Unlock()
}
