package celery

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"time"

	wire "github.com/docketq/docket/internal/celery"
	"github.com/docketq/docket/transport"
)

// DeadList is where a queue's refused messages go: on Redis a list whose
// items are JSON objects with the reason, the time and the message as it
// was; on RabbitMQ a queue of that name, each message as it was with the
// reason in its x-docket-reason header.
func DeadList(queue string) string { return "docket.dead." + queue }

// Claim delivers the messages this process holds that are due, then
// fetches new ones from p.Queues in order (on Redis, each queue's lists in
// kombu's order: priority 0 first). A fetched message whose ETA is ahead,
// or whose task name is excluded for now, is held unacknowledged until it
// can run, as Celery's worker holds it. Expired messages are recorded
// REVOKED, and messages docket cannot run go to the dead list, recorded
// FAILURE when they have an id.
func (t *Transport) Claim(ctx context.Context, p transport.ClaimParams) (transport.ClaimResult, error) {
	var res transport.ClaimResult
	t.upkeep(ctx, p.Now)
	t.mu.Lock()
	held := t.held
	t.held = nil
	t.mu.Unlock()
	var keep []*fetched
	take := func(f *fetched) {
		switch {
		case f.err != nil:
			if !t.refuse(ctx, f, p.Now, f.err.Error(), nil) {
				keep = append(keep, f) // tried again at the next claim
			}
		case len(res.Deliveries) < p.Limit && t.due(f, p):
			t.deliver(ctx, f, p, &res, &keep)
		default:
			keep = append(keep, f)
		}
	}
	// A held message that is due is delivered only if it is still this
	// process's (a restore, or a lost connection, gives it to others).
	var due []*fetched
	for _, f := range held {
		if f.err == nil && t.due(f, p) {
			due = append(due, f)
		} else {
			keep = append(keep, f)
		}
	}
	if len(due) > 0 {
		mine, err := t.b.touch(ctx, p.Now, due)
		for i, f := range due {
			switch {
			case err != nil:
				keep = append(keep, f)
			case mine[i]:
				take(f)
			}
		}
	}
	// Fetch no more than the worker can hold beside what waits here: the
	// rest stays on the broker for other workers, Celery's included.
	want := p.Limit - len(res.Deliveries)
	if p.Capacity > 0 {
		want = min(want, p.Capacity-len(keep))
	}
	if want > 0 && len(p.Queues) > 0 {
		fs, err := t.b.fetch(ctx, p.Now, p.Queues, want, p.Capacity)
		if err != nil {
			// What was delivered above must reach the worker: report the
			// fetch's failure in the log, not to the worker, which would
			// drop the deliveries with the error.
			t.opts.Logger.WarnContext(ctx, "docket: celery: fetch failed", "err", err)
			if len(res.Deliveries) == 0 && len(res.Ended) == 0 {
				t.keep(keep, p.Now)
				return res, t.wrap(err)
			}
		}
		for _, f := range fs {
			take(f)
		}
	}
	waiting := t.keep(keep, p.Now)
	for _, f := range keep {
		if f.task.ETA.After(p.Now) && (res.NextAt.IsZero() || f.task.ETA.Before(res.NextAt)) {
			res.NextAt = f.task.ETA
		}
	}
	if poll := t.b.poll(); poll > 0 && len(res.Deliveries) < p.Limit && (res.NextAt.IsZero() || res.NextAt.After(p.Now.Add(poll))) {
		res.NextAt = p.Now.Add(poll)
	}
	t.b.held(waiting)
	if t.opts.TrackStarted {
		host, _ := os.Hostname()
		for _, d := range res.Deliveries {
			if !d.IgnoreResult {
				t.mu.Lock()
				f := t.running[d.ID]
				t.mu.Unlock()
				if err := t.res.write(ctx, f, wire.StartedBy(d.ID, os.Getpid(), host)); err != nil {
					t.opts.Logger.WarnContext(ctx, "docket: celery: a STARTED record was not written", "task_id", d.ID, "err", err)
				}
			}
		}
	}
	return res, nil
}

// keep puts fs back among the held messages (unless the Transport closed
// meanwhile: then they go back to their broker) and returns how many held
// messages wait for their ETA at now.
func (t *Transport) keep(fs []*fetched, now time.Time) int {
	t.mu.Lock()
	closed := t.closed
	if !closed {
		t.held = append(t.held, fs...)
	}
	waiting := 0
	for _, f := range t.held {
		if f.task.ETA.After(now) {
			waiting++
		}
	}
	t.mu.Unlock()
	if closed {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, f := range fs {
			t.b.settle(ctx, f, settlement{giveBack: true})
		}
	}
	return waiting
}

// due reports whether f may run now for p: its ETA has come, its name is
// not excluded, and no attempt of the same id runs here.
func (t *Transport) due(f *fetched, p transport.ClaimParams) bool {
	if f.task.ETA.After(p.Now) || slices.Contains(p.Exclude, f.task.Name) {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.running[f.task.ID] == nil
}

// deliver turns f into a delivery of res, or ends it: expired, a chord,
// or arguments docket cannot take.
func (t *Transport) deliver(ctx context.Context, f *fetched, p transport.ClaimParams, res *transport.ClaimResult, keep *[]*fetched) {
	task := f.task
	ended := func(s transport.State) {
		res.Ended = append(res.Ended, transport.Status{ID: task.ID, State: s, Name: task.Name, Queue: f.queue, Attempt: task.Retries + 1})
	}
	if !task.Expires.IsZero() && !p.Now.Before(task.Expires) {
		lost, err := t.settle(ctx, f, outcome{record: resultOf(task, wire.Revoked(task.ID, "expired", p.Now))})
		switch {
		case err != nil:
			*keep = append(*keep, f)
		case !lost:
			ended(transport.StateExpired)
		}
		return
	}
	if task.Embed.Chord != nil {
		if !t.refuse(ctx, f, p.Now, "a chord: docket runs Celery's links and chains, not chords (their counters live in Celery's result backend)", &wire.Exception{Type: "NotImplementedError", Module: "builtins",
			Message: []string{"docket: chords are not supported by docket workers; run the chord's members on Celery workers"}}) {
			*keep = append(*keep, f)
		}
		return
	}
	payload, err := wire.Payload(task.Args, task.Kwargs)
	if err != nil {
		if !t.refuse(ctx, f, p.Now, err.Error(), &wire.Exception{Type: "TypeError", Module: "builtins", Message: []string{err.Error()}}) {
			*keep = append(*keep, f)
		}
		return
	}
	timeout := task.SoftLimit
	if timeout == 0 || (task.HardLimit > 0 && task.HardLimit < timeout) {
		timeout = task.HardLimit
	}
	d := transport.Delivery{
		Message: transport.Message{
			ID: task.ID, Name: task.Name, Queue: f.queue, Payload: payload, Headers: headers(task),
			Priority: task.Priority, ETA: task.ETA, Expires: task.Expires, MaxAttempts: t.opts.MaxRetries + 1,
			Timeout: timeout, ResultTTL: t.opts.ResultExpires, IgnoreResult: task.IgnoreResult,
		},
		Attempt: task.Retries + 1, Owner: p.Owner, LeaseUntil: p.LeaseUntil,
	}
	f.lease, f.until = d.Lease(), p.LeaseUntil
	t.mu.Lock()
	t.running[task.ID] = f
	t.mu.Unlock()
	res.Deliveries = append(res.Deliveries, d)
}

// headers returns the headers of task docket does not read itself, as
// strings (others as JSON), so that middleware sees what the producer
// added (a trace context, say).
func headers(task wire.Task) map[string]string {
	if len(task.Other) == 0 {
		return nil
	}
	h := make(map[string]string, len(task.Other))
	for k, v := range task.Other {
		if s, ok := v.(string); ok {
			h[k] = s
		} else if b, err := json.Marshal(v); err == nil {
			h[k] = string(b)
		}
	}
	return h
}

// refuse records a message docket cannot run: logged with the reason,
// moved to its queue's dead list, and, when exc is set, recorded FAILURE
// so that a Celery client waiting for it raises.
// It reports false when that could not be written: the caller keeps the
// message and tries again at the next claim.
func (t *Transport) refuse(ctx context.Context, f *fetched, now time.Time, reason string, exc *wire.Exception) bool {
	o := outcome{dead: reason}
	if exc != nil && f.task.ID != "" {
		o.record = resultOf(f.task, wire.Failed(f.task.ID, *exc, reason, now))
	}
	lost, err := t.settle(ctx, f, o)
	if err != nil {
		t.opts.Logger.WarnContext(ctx, "docket: celery: a refused message could not be moved to the dead list yet", "task_id", f.task.ID, "err", err)
		return false
	}
	if !lost {
		t.opts.Logger.WarnContext(ctx, "docket: celery: a message was refused and moved to the dead list", "task_id", f.task.ID, "task", f.task.Name, "queue", f.queue, "reason", reason, "dead_list", DeadList(f.queue))
	}
	return true
}

// deadEntry is the dead list's item on Redis for f, refused for reason.
func deadEntry(f *fetched, reason string) string {
	b, _ := json.Marshal(map[string]string{"reason": reason, "at": time.Now().UTC().Format(time.RFC3339Nano), "message": f.raw})
	return string(b)
}

// upkeep refreshes what keeps the messages this process holds its own
// (on Redis, so that no restore, Celery's or docket's, gives them away
// while they wait or run), and runs the broker's own upkeep. Each runs at
// most once in a tenth of the visibility timeout, and at least once a
// minute.
func (t *Transport) upkeep(ctx context.Context, now time.Time) {
	every := min(t.opts.VisibilityTimeout/10, time.Minute)
	t.mu.Lock()
	refresh := now.Sub(t.refreshed) >= every
	if refresh {
		t.refreshed = now
	}
	var fs, lapsed []*fetched
	if refresh {
		fs = slices.Clone(t.held)
		for id, f := range t.running {
			if f.until.Before(now) {
				// The worker let the lease lapse (its Finish failed, or
				// its heartbeats): the message goes back for another
				// attempt, as the lease's end promises.
				lapsed = append(lapsed, f)
				delete(t.running, id)
				continue
			}
			fs = append(fs, f)
		}
	}
	t.mu.Unlock()
	if !refresh {
		return
	}
	for _, f := range lapsed {
		if _, err := t.b.settle(ctx, f, settlement{giveBack: true}); err != nil {
			t.opts.Logger.WarnContext(ctx, "docket: celery: a message whose lease lapsed was not given back (it comes back with its connection, or after the visibility timeout)", "task_id", f.task.ID, "err", err)
		}
	}
	if len(fs) > 0 {
		mine, err := t.b.touch(ctx, now, fs)
		if err != nil {
			t.opts.Logger.WarnContext(ctx, "docket: celery: the held messages' times not refreshed", "err", err)
		}
		lost := map[*fetched]bool{}
		for i, ok := range mine {
			if !ok {
				lost[fs[i]] = true
			}
		}
		if len(lost) > 0 {
			// A held message someone else took back is theirs now; a
			// running one is reported lost by Extend.
			t.mu.Lock()
			t.held = slices.DeleteFunc(t.held, func(f *fetched) bool { return lost[f] })
			t.mu.Unlock()
		}
	}
	t.b.upkeep(ctx, now)
}

// Extend refreshes what keeps the leases' messages this process's. A lease
// whose message is no longer this process's (on Redis, restored after the
// visibility timeout; on RabbitMQ, its connection lost) is lost.
func (t *Transport) Extend(ctx context.Context, p transport.ExtendParams) ([]transport.ExtendResult, error) {
	out := make([]transport.ExtendResult, len(p.Leases))
	var fs []*fetched
	var at []int
	t.mu.Lock()
	for i, l := range p.Leases {
		f := t.running[l.ID]
		if f == nil || f.lease != l {
			out[i].Lost = true
			continue
		}
		fs = append(fs, f)
		at = append(at, i)
	}
	t.mu.Unlock()
	if len(fs) == 0 {
		return out, nil
	}
	mine, err := t.b.touch(ctx, p.Now, fs)
	if err != nil {
		return nil, t.wrap(err)
	}
	t.mu.Lock()
	for j, ok := range mine {
		out[at[j]].Lost = !ok
		if ok {
			fs[j].until = p.Until
		}
	}
	t.mu.Unlock()
	return out, nil
}
