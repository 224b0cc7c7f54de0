package celery

import (
	"context"
	"time"

	wire "github.com/docketq/docket/internal/celery"
	"github.com/docketq/docket/transport"
	amqp "github.com/rabbitmq/amqp091-go"
)

// broker is where Celery's messages live: kombu's Redis lists, or
// RabbitMQ's queues. The Transport keeps what is common: which messages
// this process holds and runs, what an outcome writes, the results.
type broker interface {
	// send publishes tasks, each to its queue: all, or an error.
	send(ctx context.Context, tasks []next) error
	// fetch takes up to limit new messages from queues, in order. A
	// message it cannot read comes back with its decode error in err.
	fetch(ctx context.Context, now time.Time, queues []string, limit, capacity int) ([]*fetched, error)
	// touch reports which of fs are still this process's, refreshing
	// what keeps them so.
	touch(ctx context.Context, now time.Time, fs []*fetched) ([]bool, error)
	// upkeep runs now and then from Claim: Redis restores the messages
	// other workers fetched and lost.
	upkeep(ctx context.Context, now time.Time)
	// settle acknowledges f and writes s with it; lost reports that f was
	// no longer this process's (and nothing was written).
	settle(ctx context.Context, f *fetched, s settlement) (lost bool, err error)
	// poll is how soon a worker that found nothing claims again, for a
	// broker that does not push deliveries (zero for one that does).
	poll() time.Duration
	// held tells the broker how many messages wait here for their ETA
	// (RabbitMQ widens its prefetch by as many, as Celery's worker does).
	held(n int)
	ping(ctx context.Context) error
	close() error
}

// settlement is what settling a fetched message writes with its
// acknowledgement.
type settlement struct {
	record   *wire.Result // on a broker that is also the result backend; else nil
	next     []next       // messages sent on
	dead     string       // the reason the message goes to the dead list
	giveBack bool         // put the message back for another worker instead
}

// fetched is a message this process took from its broker and holds
// unacknowledged.
type fetched struct {
	queue string    // the queue (Redis: the base list, the routing key)
	raw   string    // the message as read (Redis: kombu's envelope; RabbitMQ: the body)
	task  wire.Task // decoded
	err   error     // why it could not be decoded
	lease transport.Lease
	until time.Time // the lease's end (guarded by Transport.mu)

	// Redis: kombu's delivery tag, and the index time this process last
	// wrote for it, and another it may have written (a touch whose answer
	// was lost): the message is this process's while the index holds one
	// of them (guarded by the broker).
	tag        string
	score, alt string

	// RabbitMQ: the delivery, on the session it came from, and what a
	// dead-lettered copy keeps of it.
	delivery                     uint64
	session                      *session
	headers                      amqp.Table
	contentType, contentEncoding string
}

type next struct {
	task  wire.Task
	queue string
}
