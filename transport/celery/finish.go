package celery

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	wire "github.com/docketq/docket/internal/celery"
	"github.com/docketq/docket/transport"
)

// outcome is what settling a fetched message writes: its result record
// (nil for none), the messages it sends on (a chain's next step, links),
// and the reason it is moved to the dead list ("" for none).
type outcome struct {
	record   *wire.Result
	next     []next
	dead     string
	giveBack bool // put the message back instead (a release)
}

// resultOf adds to r the group and parent that Celery's records carry.
func resultOf(task wire.Task, r wire.Result) *wire.Result {
	r.GroupID, r.ParentID = task.Group, task.ParentID
	return &r
}

// Finish records each outcome as Celery's worker would, then acknowledges
// the message: a success's record and its follow-ups (link callbacks, a
// chain's next step, with the result prepended to their args), a
// failure's record (and its link_error callbacks, given the task id), a
// retry as the same task sent again with its retries counted and its ETA,
// a cancel as REVOKED, and a release (the worker stopping) as the message
// put back at the head of its list.
func (t *Transport) Finish(ctx context.Context, p transport.FinishParams) ([]transport.FinishResult, error) {
	out := make([]transport.FinishResult, len(p.Items))
	for i := range p.Items {
		o := &p.Items[i]
		t.mu.Lock()
		f := t.running[o.ID]
		_, done := t.settled[o.Lease]
		t.mu.Unlock()
		if f == nil || f.lease != o.Lease {
			// A Finish made again after an error: what an earlier call
			// wrote stands.
			out[i].Lost = !done
			continue
		}
		task := f.task
		var lost bool
		var err error
		switch o.State {
		case transport.StateReady:
			lost, err = t.settle(ctx, f, outcome{giveBack: true})
		case transport.StateSucceeded:
			result := json.RawMessage(o.Result)
			if len(result) == 0 {
				result = json.RawMessage("null")
			}
			oc := outcome{record: resultOf(task, wire.Succeeded(task.ID, result, p.Now))}
			for _, sig := range task.Embed.Callbacks {
				oc.next = append(oc.next, t.followUp(f, sig, result, nil, p.Now))
			}
			if n := len(task.Embed.Chain); n > 0 {
				oc.next = append(oc.next, t.followUp(f, task.Embed.Chain[n-1], result, task.Embed.Chain[:n-1], p.Now))
			}
			lost, err = t.settle(ctx, f, oc)
		case transport.StateFailed:
			exc, trace := exception(task, o.Error)
			oc := outcome{record: resultOf(task, wire.Failed(task.ID, exc, trace, p.Now))}
			if exc.Type == "NotRegistered" {
				oc.dead = "task not registered in the docket worker"
				t.opts.Logger.WarnContext(ctx, "docket: celery: a task no docket handler runs was recorded FAILURE (NotRegistered) and moved to the dead list", "task_id", task.ID, "task", task.Name, "queue", f.queue, "dead_list", DeadList(f.queue))
			}
			id, _ := json.Marshal(task.ID)
			for _, sig := range task.Embed.Errbacks {
				oc.next = append(oc.next, t.followUp(f, sig, id, nil, p.Now))
			}
			lost, err = t.settle(ctx, f, oc)
		case transport.StateCancelled:
			lost, err = t.settle(ctx, f, outcome{record: resultOf(task, wire.Revoked(task.ID, "revoked", p.Now))})
		case transport.StateScheduled:
			again := task
			again.Retries++
			again.ETA = o.RunAt
			exc, trace := exception(task, o.Error)
			r := wire.Failed(task.ID, exc, trace, p.Now)
			r.Status, r.DateDone = wire.StatusRetry, nil
			lost, err = t.settle(ctx, f, outcome{record: resultOf(task, r), next: []next{{again, f.queue}}})
		default:
			err = fmt.Errorf("docket: celery: task %s: outcome state %v: %w", task.ID, o.State, transport.ErrInvalid)
		}
		if err != nil {
			return nil, err
		}
		out[i].Lost = lost
		t.mu.Lock()
		delete(t.running, o.ID)
		if !lost {
			t.settled[o.Lease] = p.Now
		}
		if p.Now.Sub(t.pruned) > time.Minute {
			t.pruned = p.Now
			for l, at := range t.settled {
				if p.Now.Sub(at) > 10*time.Minute {
					delete(t.settled, l)
				}
			}
		}
		t.mu.Unlock()
	}
	return out, nil
}

// exception maps a docket attempt's error onto the exception a Celery
// client raises: NotRegistered for a name no handler runs here, else
// TaskError (module "docket", which a Celery client does not know, so it
// builds a class of that name) with the error's first line as message and
// the whole text (a panic's stack, say) as traceback.
func exception(task wire.Task, text string) (wire.Exception, string) {
	// The worker's words for a name no handler runs (execute.go).
	if strings.HasPrefix(text, "docket: task name ") && strings.Contains(text, "is not registered") {
		return wire.Exception{Type: "NotRegistered", Module: "celery.exceptions", Message: []string{task.Name}}, ""
	}
	first, _, _ := strings.Cut(text, "\n")
	return wire.Exception{Type: "TaskError", Module: "docket", Message: []string{first}}, text
}

// followUp is the task a signature in parent's embed becomes: its args
// with arg prepended (unless the signature is immutable), its options'
// task_id, queue (else the default queue), priority, countdown and links, and
// rest as its own chain.
func (t *Transport) followUp(parent *fetched, sig wire.Signature, arg json.RawMessage, rest []wire.Signature, now time.Time) next {
	args := sig.Args
	if !sig.Immutable {
		var list []json.RawMessage
		if len(args) > 0 {
			json.Unmarshal(args, &list)
		}
		args, _ = json.Marshal(append([]json.RawMessage{arg}, list...))
	}
	opts := sig.Options
	str := func(k string) string { s, _ := opts[k].(string); return s }
	root := parent.task.RootID
	if root == "" {
		root = parent.task.ID
	}
	// The reply queue is the parent's: with the rpc backend, the client
	// that sent the parent hears of its follow-ups too.
	task := wire.Task{ID: str("task_id"), Name: sig.Task, Args: args, Kwargs: sig.Kwargs, RootID: root, ParentID: parent.task.ID, ReplyTo: parent.task.ReplyTo}
	if task.ID == "" {
		task.ID = uuid4()
	}
	if n, ok := opts["priority"].(float64); ok {
		task.Priority = int(n)
	}
	if n, ok := opts["countdown"].(float64); ok && n > 0 {
		task.ETA = now.Add(time.Duration(n * float64(time.Second)))
	}
	task.Embed.Chain = rest
	task.Embed.Callbacks = signatures(opts["link"])
	task.Embed.Errbacks = signatures(opts["link_error"])
	queue := str("queue")
	if queue == "" {
		queue = t.opts.DefaultQueue
	}
	return next{task, queue}
}

// signatures reads a link option: one signature or a list of them.
func signatures(v any) []wire.Signature {
	if v == nil {
		return nil
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return nil
	}
	var list []wire.Signature
	if json.Unmarshal(raw, &list) == nil {
		return list
	}
	var one wire.Signature
	if json.Unmarshal(raw, &one) == nil && one.Task != "" {
		return []wire.Signature{one}
	}
	return nil
}

// settle writes o for f and acknowledges f, if f is still this
// process's (lost reports it was not). On Redis with the broker as result
// backend, everything is one step: the record, the messages o sends on,
// f's dead-list entry and the acknowledgement. With a backend of its own
// (or on RabbitMQ), the record is written first: a message lost meanwhile
// has its record written twice, as Celery's at-least-once delivery does.
func (t *Transport) settle(ctx context.Context, f *fetched, o outcome) (lost bool, err error) {
	s := settlement{next: o.next, dead: o.dead, giveBack: o.giveBack}
	if o.record != nil && !f.task.IgnoreResult {
		if t.atomic {
			s.record = o.record
		} else if err := t.res.write(ctx, f, *o.record); err != nil {
			return false, t.wrap(err)
		}
	}
	lost, err = t.b.settle(ctx, f, s)
	return lost, t.wrap(err)
}
