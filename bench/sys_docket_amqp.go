package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"

	"github.com/docketq/docket"
	_ "github.com/docketq/docket/transport/amqp"
)

// docketAMQPSystem runs docket on RabbitMQ alone (the same program as
// docket, with an amqp:// URL and its defaults: quorum queues, publisher
// confirms, a prefetch of 4×concurrency, results and states sent to the
// producer's reply queue). Each
// fresh store is a new name prefix (see amqpBroker).
type docketAMQPSystem struct{ b amqpBroker }

func (docketAMQPSystem) Name() string                          { return "docket-amqp" }
func (s docketAMQPSystem) Available(ctx context.Context) error { return s.b.available(ctx) }
func (docketAMQPSystem) Unsupported(measurement string) error  { return amqpNA(measurement) }

func (s docketAMQPSystem) Storage(ctx context.Context, dir string) (int64, error) {
	return 0, amqpNA("size")
}

// Drop deletes what docket declares under the store's prefix. The delay
// levels exist only if a task had an ETA; deleting one that does not exist
// is not an error. Each producer's reply queue (PREFIX.reply.ID, its id
// not visible from outside) is deleted by RabbitMQ ten minutes after its
// producer closed (x-expires); each control queue is exclusive and goes
// with its connection.
func (s docketAMQPSystem) Drop(ctx context.Context, dir string) error {
	return s.b.dropPrefix(ctx, dir, func(p string) ([]string, []string) {
		queues := []string{p + ".q." + docket.DefaultQueue, p + ".dead"}
		exchanges := []string{p + ".deliver", p + ".dead", p + ".control"}
		for l := range 32 {
			queues = append(queues, fmt.Sprintf("%s.delay.%02d", p, l))
			exchanges = append(exchanges, fmt.Sprintf("%s.delay.%02d", p, l))
		}
		return queues, exchanges
	})
}

func (s docketAMQPSystem) Open(ctx context.Context, o Options) (Instance, error) {
	prefix, err := storePrefix(o.Dir, "dbench", o.Fresh)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(s.b.url)
	if err != nil {
		return nil, err
	}
	q := u.Query()
	q.Set("prefix", prefix)
	u.RawQuery = q.Encode()
	// docket's default prefetch (concurrency plus 4×concurrency, as
	// Celery's); the amqp091 baseline consumes with the same.
	inst, err := openDocket(ctx, u.String(), o)
	if err != nil {
		return nil, err
	}
	queue := prefix + ".q." + docket.DefaultQueue
	return &docketAMQPInstance{docketInstance: inst, watch: &queueWatch{b: s.b, queue: queue}, track: o.Results && !o.Untracked}, nil
}

// docketAMQPInstance keeps the handles on the tasks it enqueued: with
// RabbitMQ alone, docket knows the state of those (List needs a result
// store), for as long as their handles are held; so Unfinished asks docket
// about each of them, and the broker about messages still waiting in the
// queue (all a child process that enqueued nothing can check). Tasks that
// ignore their results are not reported to their producer: for those,
// and with Options.Untracked, nothing is kept.
type docketAMQPInstance struct {
	*docketInstance
	watch *queueWatch
	track bool // keep the handles

	mu   sync.Mutex
	rs   []*docket.Result[struct{}]
	next int // handles before it are known to have finished (and dropped)
}

func (d *docketAMQPInstance) Enqueue(ctx context.Context, stamp int64) error {
	r, err := d.task.Enqueue(ctx, d.q, stampArgs{T: stamp})
	if err != nil || !d.track {
		return err
	}
	d.mu.Lock()
	d.rs = append(d.rs, r)
	d.mu.Unlock()
	return nil
}

func (d *docketAMQPInstance) EnqueueBatch(ctx context.Context, n int) error {
	rs, err := d.task.EnqueueMany(ctx, d.q, make([]stampArgs, n))
	if err != nil || !d.track {
		return err
	}
	d.mu.Lock()
	d.rs = append(d.rs, rs...)
	d.mu.Unlock()
	return nil
}

func (d *docketAMQPInstance) Unfinished(ctx context.Context) (bool, error) {
	n, err := d.watch.ready(ctx)
	if err != nil || n > 0 {
		return n > 0, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for ; d.next < len(d.rs); d.next++ {
		info, err := d.rs[d.next].Info(ctx)
		switch {
		case errors.Is(err, docket.ErrNotFound):
			// Finished and forgotten after its result TTL.
		case err != nil:
			return false, err
		case !info.State.Terminal():
			return true, nil
		}
		d.rs[d.next] = nil
	}
	return false, nil
}

func (d *docketAMQPInstance) Cleanup(ctx context.Context) (string, *PollErrors, error) {
	return "none needed: the broker deletes a message when it is acknowledged", nil, nil
}

func (d *docketAMQPInstance) Close() error {
	return errors.Join(d.docketInstance.Close(), d.watch.close())
}
