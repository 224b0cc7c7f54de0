package redis

import (
	"context"
	"fmt"
	"sync"

	"github.com/oklog/ulid/v2"

	"github.com/docketq/docket/internal/wire"
	"github.com/docketq/docket/transport"
)

// Concurrent Enqueue calls share script calls (group commit, as the SQLite
// store's writer does): while one call's script runs, the calls that
// arrive wait, and the first of them then sends all of them in one script
// call, each still all or nothing on its own. Eight goroutines enqueueing
// at once cost about one round trip and one script run, not eight. There
// is no background goroutine: the caller whose turn it is sends the batch
// and hands the turn to the first caller that arrived meanwhile. A call
// that waits for its batch waits for a definite outcome, as a call that
// was sent does, whatever its ctx says meanwhile (the client's timeouts
// bound the wait); a call whose ctx ended before its batch was sent is
// not sent.

// maxBatchMessages and maxBatchBytes bound one script call, so that a flood
// of callers cannot build a script run that blocks Redis for long or a
// command near Redis's query buffer limit. A single call is never split.
const (
	maxBatchMessages = 1024
	maxBatchBytes    = 8 << 20
)

type enqueueCall struct {
	ctx  context.Context
	args []any // token, now, n, then n messages' fields
	n    int
	size int // bytes of payloads and metadata, roughly
	out  []transport.EnqueueResult
	err  error
	turn chan bool // true: send the next batch; false: out and err are set
}

type enqueuer struct {
	mu      sync.Mutex
	busy    bool // a caller is sending a batch; only it takes from pending
	pending []*enqueueCall
}

// Enqueue implements transport.Transport.
func (t *Transport) Enqueue(ctx context.Context, p transport.EnqueueParams) ([]transport.EnqueueResult, error) {
	if len(p.Messages) == 0 {
		return nil, nil
	}
	c := &enqueueCall{ctx: ctx, n: len(p.Messages), turn: make(chan bool, 1)}
	c.args = make([]any, 0, 3+len(p.Messages)*15)
	c.args = append(c.args, ulid.Make().String(), wire.Millis(p.Now), len(p.Messages))
	for i := range p.Messages {
		if p.Messages[i].Created.IsZero() {
			p.Messages[i].Created = p.Now
		}
		var err error
		if c.args, err = messageArgs(c.args, &p.Messages[i]); err != nil {
			return nil, err
		}
		c.size += len(p.Messages[i].Payload) + 256
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	e := &t.enq
	e.mu.Lock()
	e.pending = append(e.pending, c)
	// Calls wait only while a batch is in flight, and the sender hands
	// the turn to the first of them, so whoever sends is first in pending
	// and in the batch it takes.
	lead := !e.busy
	e.busy = true
	e.mu.Unlock()
	// Once queued, the call waits for a definite outcome even if ctx ends
	// meanwhile: a call already sent may have been stored.
	if !lead && !<-c.turn {
		return c.out, c.err
	}
	// This call's turn: it is the first pending call, so it is in the
	// batch it sends.
	e.mu.Lock()
	batch := takeBatch(&e.pending)
	e.mu.Unlock()
	defer e.handOff()
	t.sendBatch(batch, c)
	return c.out, c.err
}

// handOff ends a sender's turn: the first waiting call sends next.
func (e *enqueuer) handOff() {
	e.mu.Lock()
	if len(e.pending) == 0 {
		e.busy = false
		e.mu.Unlock()
		return
	}
	next := e.pending[0]
	e.mu.Unlock()
	next.turn <- true
}

// takeBatch removes from pending the calls that fit in one script call.
func takeBatch(pending *[]*enqueueCall) []*enqueueCall {
	all, n, size, i := *pending, 0, 0, 0
	for i < len(all) && (i == 0 || n+all[i].n <= maxBatchMessages && size+all[i].size <= maxBatchBytes) {
		n += all[i].n
		size += all[i].size
		i++
	}
	batch := all[:i:i]
	*pending = append([]*enqueueCall(nil), all[i:]...)
	return batch
}

// sendBatch runs one script call for the calls of batch whose ctx has not
// ended, sets each call's outcome and tells every call but the sender,
// even if it panics.
func (t *Transport) sendBatch(batch []*enqueueCall, sender *enqueueCall) {
	defer func() {
		for _, c := range batch {
			if c.out == nil && c.err == nil {
				c.err = fmt.Errorf("docket: redis enqueue: the batch it was sent in failed: %w", transport.ErrOutcomeUnknown)
			}
			if c != sender {
				c.turn <- false
			}
		}
	}()
	args := []any{0}
	var live []*enqueueCall
	var ctx context.Context
	for _, c := range batch {
		if err := c.ctx.Err(); err != nil {
			c.err = err // not sent: certainly not stored
			continue
		}
		if ctx == nil {
			ctx = context.WithoutCancel(c.ctx)
		}
		live = append(live, c)
		args = append(args, c.args...)
	}
	args[0] = len(live)
	if len(live) > 0 {
		v, err := t.run(ctx, enqueueScript, args...)
		groups, _ := v.([]any)
		for i, c := range live {
			switch {
			case err != nil && outcomeUnknown(err):
				c.err = fmt.Errorf("docket: redis enqueue: %w: %w", transport.ErrOutcomeUnknown, err)
			case err != nil:
				c.err = fmt.Errorf("docket: redis enqueue: %w", err)
			case i >= len(groups) || len(row(groups[i])) == 0:
				c.err = fmt.Errorf("docket: redis enqueue: the script answered %d of %d calls: %w", len(groups), len(live), transport.ErrOutcomeUnknown)
			default:
				c.out, c.err = enqueueResults(row(groups[i]))
			}
		}
	}
}

// enqueueResults reads one call's reply rows.
func enqueueResults(rows []any) ([]transport.EnqueueResult, error) {
	if r := row(rows[0]); str(r, 0) == "dup" {
		return nil, &transport.DuplicateError{ID: str(r, 1), UniqueKey: str(r, 2), ExistingID: str(r, 3)}
	}
	out := make([]transport.EnqueueResult, len(rows))
	for i, x := range rows {
		r := row(x)
		out[i] = transport.EnqueueResult{ID: str(r, 1), Existing: str(r, 0) == "existing"}
	}
	return out, nil
}
