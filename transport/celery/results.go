package celery

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	wire "github.com/docketq/docket/internal/celery"
	"github.com/docketq/docket/transport"
	amqp "github.com/rabbitmq/amqp091-go"
	goredis "github.com/redis/go-redis/v9"
)

// results is where results are recorded and read: Celery's Redis backend
// or its rpc backend.
type results interface {
	// write records r for f's task.
	write(ctx context.Context, f *fetched, r wire.Result) error
	// read returns the latest records of ids (nil where there is none).
	read(ctx context.Context, ids []string) ([][]byte, error)
	close() error
}

// redisResults is Celery's Redis result backend.
type redisResults struct {
	client  goredis.UniversalClient
	expires time.Duration
	owned   bool
	ev      *hook

	// The channels of the records being watched, on one subscription
	// (made at the first watch).
	subMu   sync.Mutex
	sub     *goredis.PubSub
	watched map[string]*watching
	closed  bool
}

// watching is one channel being watched: by how many, and whether Redis
// has confirmed the subscription.
type watching struct {
	n     int
	ready chan struct{} // closed at the confirmation
}

// watch subscribes to the channel of id's record, as Celery's client
// does while it waits, until stop; each record published there is
// reported as EventFinished. It returns once Redis has confirmed the
// subscription (or after a second, or when ctx ends), so a record
// published after it is heard. One published while its connection was
// being made again is not: the Queue's Wait looks the record up again
// within a second.
func (r *redisResults) watch(ctx context.Context, id string) (stop func()) {
	channel := wire.MetaKey(id)
	r.subMu.Lock()
	if r.closed {
		r.subMu.Unlock()
		return func() {}
	}
	if r.sub == nil {
		r.sub, r.watched = r.client.Subscribe(context.WithoutCancel(ctx)), map[string]*watching{}
		go r.listen(r.sub)
	}
	w := r.watched[channel]
	if w == nil {
		w = &watching{ready: make(chan struct{})}
		r.watched[channel] = w
		r.sub.Subscribe(ctx, channel) // an error leaves Wait to its look-ups
	}
	w.n++
	r.subMu.Unlock()
	timer := time.NewTimer(time.Second)
	select {
	case <-w.ready:
	case <-timer.C:
	case <-ctx.Done():
	}
	timer.Stop()
	var once sync.Once
	return func() {
		once.Do(func() {
			r.subMu.Lock()
			defer r.subMu.Unlock()
			if w.n--; w.n == 0 && r.watched[channel] == w {
				delete(r.watched, channel)
				if r.sub != nil {
					r.sub.Unsubscribe(context.WithoutCancel(ctx), channel)
				}
			}
		})
	}
}

// listen reports the records published on sub's channels, and marks
// their subscriptions confirmed, until sub is closed.
func (r *redisResults) listen(sub *goredis.PubSub) {
	for m := range sub.ChannelWithSubscriptions() {
		switch m := m.(type) {
		case *goredis.Subscription:
			r.subMu.Lock()
			if w := r.watched[m.Channel]; w != nil && m.Kind == "subscribe" {
				select {
				case <-w.ready:
				default:
					close(w.ready)
				}
			}
			r.subMu.Unlock()
		case *goredis.Message:
			if id, ok := strings.CutPrefix(m.Channel, wire.MetaKey("")); ok {
				r.ev.emit(transport.Event{Kind: transport.EventFinished, IDs: []string{id}})
			}
		}
	}
}

func (r *redisResults) write(ctx context.Context, _ *fetched, rec wire.Result) error {
	raw, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("task %s: result record: %w", rec.TaskID, err)
	}
	return recordScript.Run(ctx, r.client, []string{wire.MetaKey(rec.TaskID)}, raw, int(r.expires/time.Second)).Err()
}

// recordScript writes the record ARGV[1] at KEYS[1] as Celery's Redis
// backend does: SET with the expiry ARGV[2] (seconds), then PUBLISH on
// the key's channel (a waiting Celery client hears only the PUBLISH);
// unless the record there is a SUCCESS, which Celery never overwrites.
var recordScript = goredis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur and string.find(cur, '"status":%s*"SUCCESS"') then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
`)

func (r *redisResults) read(ctx context.Context, ids []string) ([][]byte, error) {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = wire.MetaKey(id)
	}
	vals, err := r.client.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, fmt.Errorf("result backend: %w", err)
	}
	out := make([][]byte, len(ids))
	for i, v := range vals {
		if s, ok := v.(string); ok {
			out[i] = []byte(s)
		}
	}
	return out, nil
}

func (r *redisResults) close() error {
	r.subMu.Lock()
	if r.sub != nil {
		r.sub.Close()
		r.sub = nil
	}
	r.closed = true
	r.subMu.Unlock()
	if r.owned {
		return r.client.Close()
	}
	return nil
}

// Get reads a task's result record. A task without one is pending, as
// Celery reports it (Ready), unless this process runs it.
func (t *Transport) Get(ctx context.Context, p transport.GetParams) (transport.Info, error) {
	raws, err := t.res.read(ctx, []string{p.ID})
	if err != nil {
		return transport.Info{}, t.wrap(err)
	}
	if raws[0] == nil {
		return t.pending(p.ID), nil
	}
	return t.info(p.ID, raws[0])
}

// Lookup reads the states of ids from their result records.
func (t *Transport) Lookup(ctx context.Context, p transport.LookupParams) ([]transport.Status, error) {
	if len(p.IDs) == 0 {
		return nil, nil
	}
	raws, err := t.res.read(ctx, p.IDs)
	if err != nil {
		return nil, t.wrap(err)
	}
	out := make([]transport.Status, 0, len(p.IDs))
	for i, raw := range raws {
		in := t.pending(p.IDs[i])
		if raw != nil {
			if in, err = t.info(p.IDs[i], raw); err != nil {
				continue
			}
		}
		out = append(out, transport.Status{ID: in.ID, State: in.State, Name: in.Name, Queue: in.Queue, Attempt: in.Attempt})
	}
	return out, nil
}

func (t *Transport) pending(id string) transport.Info {
	in := transport.Info{Message: transport.Message{ID: id}, State: transport.StateReady}
	t.mu.Lock()
	defer t.mu.Unlock()
	if f := t.running[id]; f != nil {
		in.Name, in.Queue, in.State, in.Attempt, in.Owner = f.task.Name, f.queue, transport.StateRunning, f.lease.Attempt, f.lease.Owner
	}
	return in
}

// info maps a result record onto a task's state.
func (t *Transport) info(id string, raw []byte) (transport.Info, error) {
	r, err := wire.DecodeResult(raw)
	if err != nil {
		return transport.Info{}, fmt.Errorf("docket: celery: task %s: %w: %v", id, transport.ErrIncompatible, err)
	}
	in := t.pending(id)
	switch r.Status {
	case wire.StatusStarted:
		in.State = transport.StateRunning
	case wire.StatusRetry:
		in.State, in.Error = transport.StateScheduled, r.Error()
	case wire.StatusSuccess:
		in.State, in.Result = transport.StateSucceeded, r.Result
	case wire.StatusFailure:
		in.State, in.Error = transport.StateFailed, r.Error()
	case wire.StatusRevoked:
		in.State, in.Error = transport.StateCancelled, r.Error()
		if strings.HasSuffix(in.Error, ": expired") {
			in.State = transport.StateExpired
		}
	}
	if r.DateDone != nil && r.Done() {
		if at, err := time.Parse("2006-01-02T15:04:05.999999", *r.DateDone); err == nil {
			in.Finished = at
		}
	}
	return in, nil
}

// reply is a record an rpc reply brought, and when it came.
type reply struct {
	raw []byte
	at  time.Time
}

// replyQueue returns this process's reply queue for the rpc backend,
// declaring and consuming it on s first: as Celery's client declares its
// own, not durable, deleted with its last consumer, and expiring unused
// after the result expiry. Its name lasts as long as the Transport, so
// that a reply to a task sent before a reconnect still finds it (if it
// comes once the queue is there again: replies sent while the connection
// was down are lost, as with Celery's client).
func (b *amqpBroker) replyQueue(s *session) (string, error) {
	b.repMu.Lock()
	defer b.repMu.Unlock()
	if b.replySession == s {
		return b.replyTo, nil
	}
	ch, err := s.conn.Channel()
	if err == nil {
		_, err = ch.QueueDeclare(b.replyTo, false, true, false, false, amqp.Table{"x-expires": int32(min(b.expires.Milliseconds(), 1<<31-1))})
		ch.Close()
	}
	if err != nil {
		return "", fmt.Errorf("declare reply queue: %w", err)
	}
	b.consMu.Lock()
	deliveries, err := s.cons.Consume(b.replyTo, "docket-replies-"+uuid4(), true, false, false, false, nil)
	b.consMu.Unlock()
	if err != nil {
		return "", fmt.Errorf("consume reply queue: %w", err)
	}
	go b.receiveReplies(deliveries)
	b.replySession = s
	return b.replyTo, nil
}

// receiveReplies keeps the records that come on the reply queue, and
// wakes the tasks' waiters.
func (b *amqpBroker) receiveReplies(deliveries <-chan amqp.Delivery) {
	var pruned time.Time
	for d := range deliveries {
		id := d.CorrelationId
		if id == "" {
			continue
		}
		now := time.Now()
		raw := d.Body
		// The rpc form has no date_done: the time it came stands in.
		if r, err := wire.DecodeResult(raw); err == nil && r.Done() && r.DateDone == nil {
			done := now.UTC().Format("2006-01-02T15:04:05.000000")
			r.DateDone = &done
			if b, err := json.Marshal(r); err == nil {
				raw = b
			}
		}
		b.repMu.Lock()
		b.replies[id] = reply{raw, now}
		if now.Sub(pruned) > time.Minute {
			pruned = now
			for k, r := range b.replies {
				if now.Sub(r.at) > b.expires {
					delete(b.replies, k)
				}
			}
		}
		b.repMu.Unlock()
		b.ev.emit(transport.Event{Kind: transport.EventFinished, IDs: []string{id}})
	}
}

// rpcResults is Celery's rpc backend: a worker sends each record to the
// task's reply queue; a producer reads the records its own reply queue
// received.
type rpcResults struct{ b *amqpBroker }

func (r rpcResults) write(ctx context.Context, f *fetched, rec wire.Result) error {
	if f == nil || f.task.ReplyTo == "" || !f.session.alive() {
		return nil
	}
	raw, err := rec.RPC()
	if err != nil {
		return err
	}
	msg := amqp.Publishing{ContentType: wire.ContentType, ContentEncoding: "utf-8", DeliveryMode: amqp.Transient, CorrelationId: rec.TaskID, Body: raw}
	return r.b.publish(ctx, f.session, func(int) (string, amqp.Publishing) { return f.task.ReplyTo, msg }, 1, false)
}

func (r rpcResults) read(_ context.Context, ids []string) ([][]byte, error) {
	r.b.repMu.Lock()
	defer r.b.repMu.Unlock()
	out := make([][]byte, len(ids))
	for i, id := range ids {
		if rep, ok := r.b.replies[id]; ok {
			out[i] = rep.raw
		}
	}
	return out, nil
}

func (r rpcResults) close() error { return nil }
