package celery

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	wire "github.com/docketq/docket/internal/celery"
	"github.com/docketq/docket/transport"
	amqp "github.com/rabbitmq/amqp091-go"
)

// amqpBroker is RabbitMQ as Celery lays it out: per queue a durable queue
// without arguments, a direct exchange of the same name bound to it, and
// tasks published to the default exchange with the queue as routing key.
// Messages are consumed with manual acknowledgements and acknowledged
// after their outcome is written (Celery's acks_late).
type amqpBroker struct {
	url string
	log *slog.Logger

	dialMu   sync.Mutex // one dial at a time, outside mu
	mu       sync.Mutex
	s        *session
	closed   bool
	consumed map[string]string // queue consumed on s: its consumer tag
	declared map[string]bool   // queues declared on s
	buf      []*fetched        // delivered by RabbitMQ, not fetched yet
	capacity int               // the worker's capacity, the base of the prefetch
	waiting  int               // messages held here for their ETA (added to the prefetch)
	prefetch int               // the prefetch set on s
	ev       *hook             // the Queue's callback: deliveries, replies, a lost session
	// running returns the ids of the tasks running here on s (and drops
	// the messages held here that came on s): the Transport's, set by
	// openAMQP.
	running func(s *session) []string

	pubMu  sync.Mutex // one publisher at a time on s.pub: its publishes and confirms
	consMu sync.Mutex // one synchronous call at a time on s.cons (Qos, Consume, Cancel)

	// rpc results: this process's reply queue (one name for the
	// Transport's life, declared again on each session, as Celery's
	// client keeps its app's), and the replies it received (by task id,
	// with when they came).
	rpc          bool
	expires      time.Duration
	repMu        sync.Mutex
	replyTo      string
	replySession *session
	replies      map[string]reply
}

// session is one connection, with a channel in confirm mode for publishes
// and declarations and one for consumers and their acknowledgements.
type session struct {
	conn *amqp.Connection
	pub  *amqp.Channel
	cons *amqp.Channel
	dead chan struct{}
}

func (s *session) alive() bool {
	select {
	case <-s.dead:
		return false
	default:
		return true
	}
}

// openAMQP opens a Transport on RabbitMQ at raw, with results on the Redis
// backend at backendURL or, with backend=rpc://, sent to each task's
// reply queue.
func openAMQP(ctx context.Context, raw, backendURL string, opts Options, where string) (transport.Transport, error) {
	ev := &hook{}
	b := &amqpBroker{url: raw, log: opts.Logger, expires: opts.ResultExpires, replyTo: "docket.reply." + uuid4(), ev: ev}
	var res results
	switch {
	case backendURL == "":
		return nil, fmt.Errorf("docket: celery URL %s: RabbitMQ needs a result backend: backend=redis://… (Celery's Redis backend) or backend=rpc://: %w", where, transport.ErrInvalid)
	case strings.HasPrefix(backendURL, "rpc:"):
		b.rpc, b.replies = true, map[string]reply{}
		res = rpcResults{b}
	default:
		r, err := redisBackend(backendURL, nil, opts, ev)
		if err != nil {
			return nil, err
		}
		res = r
	}
	if _, err := b.session(ctx); err != nil {
		res.close()
		return nil, fmt.Errorf("docket: celery broker %s: %w", where, err)
	}
	t := newTransport(b, res, false, opts, where, ev)
	b.running = t.lostSession
	return t, nil
}

// lostSession forgets the messages held and running here that came on s,
// and returns the ids of the running ones: RabbitMQ gives them all to
// other consumers once s is gone (a late outcome of theirs is lost).
func (t *Transport) lostSession(s *session) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.held = slices.DeleteFunc(t.held, func(f *fetched) bool { return f.session == s })
	var ids []string
	for id, f := range t.running {
		if f.session == s {
			ids = append(ids, id)
			delete(t.running, id) // RabbitMQ's copy, delivered again, may run now
		}
	}
	return ids
}

// session returns the live session, dialling a new one when there is
// none (one dial at a time; the others wait for it).
func (b *amqpBroker) session(ctx context.Context) (*session, error) {
	if s, err := b.current(); s != nil || err != nil {
		return s, err
	}
	b.dialMu.Lock()
	defer b.dialMu.Unlock()
	if s, err := b.current(); s != nil || err != nil {
		return s, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cfg := amqp.Config{Heartbeat: 10 * time.Second, Locale: "en_US", Dial: amqp.DefaultDial(10 * time.Second),
		Properties: amqp.Table{"connection_name": "docket celery"}}
	conn, err := amqp.DialConfig(b.url, cfg)
	if err != nil {
		return nil, redactURL(err, b.url)
	}
	s := &session{conn: conn, dead: make(chan struct{})}
	if s.pub, err = conn.Channel(); err == nil {
		err = s.pub.Confirm(false)
	}
	if err == nil {
		s.cons, err = conn.Channel()
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	pubClosed := s.pub.NotifyClose(make(chan *amqp.Error, 1))
	consClosed := s.cons.NotifyClose(make(chan *amqp.Error, 1))
	go func() {
		var e *amqp.Error
		select {
		case e = <-closed:
		case e = <-pubClosed:
		case e = <-consClosed:
		}
		close(s.dead)
		conn.Close()
		if e != nil {
			b.log.Warn("docket: celery: the connection to RabbitMQ was lost; its unacknowledged messages go back to their queues", "err", e)
		}
		b.lost(s)
	}()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		conn.Close()
		return nil, transport.ErrClosed
	}
	b.s, b.consumed, b.declared, b.prefetch, b.buf = s, map[string]string{}, map[string]bool{}, 0, nil
	return s, nil
}

// current returns the live session, nil if there is none, or ErrClosed.
func (b *amqpBroker) current() (*session, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return nil, transport.ErrClosed
	case b.s != nil && b.s.alive():
		return b.s, nil
	}
	return nil, nil
}

// lost forgets what came on session s, which RabbitMQ gives to other
// consumers now: the handlers of its tasks are told (EventLost), and the
// worker claims again.
func (b *amqpBroker) lost(s *session) {
	b.mu.Lock()
	b.buf = slices.DeleteFunc(b.buf, func(f *fetched) bool { return f.session == s })
	running := b.running
	b.mu.Unlock()
	if running != nil {
		if ids := running(s); len(ids) > 0 {
			b.ev.emit(transport.Event{Kind: transport.EventLost, IDs: ids})
		}
	}
	b.ev.emit(transport.Event{Kind: transport.EventReady})
}

func redactURL(err error, raw string) error {
	u, perr := url.Parse(raw)
	if perr != nil {
		return fmt.Errorf("cannot connect: %w", transport.ErrInvalid)
	}
	return fmt.Errorf("%s: %w", strings.ReplaceAll(err.Error(), raw, transport.Redact(u)), transport.ErrBusy)
}

// declare makes sure queue exists on s, declared as Celery declares it,
// once per session. It declares on a channel of its own: a queue that
// exists with other arguments (a Celery app's queue_arguments) is used as
// it is (a passive declaration finds it), and a refusal closes that
// channel alone, not the session that carries running tasks.
func (b *amqpBroker) declare(s *session, queue string) error {
	b.mu.Lock()
	done := b.declared[queue] && b.s == s
	b.mu.Unlock()
	if done {
		return nil
	}
	try := func(fn func(ch *amqp.Channel) error) error {
		ch, err := s.conn.Channel()
		if err != nil {
			return err
		}
		defer ch.Close()
		return fn(ch)
	}
	err := try(func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		return err
	})
	if err != nil {
		err = try(func(ch *amqp.Channel) error {
			if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
				return fmt.Errorf("declare queue %s: %w", queue, err)
			}
			if err := ch.ExchangeDeclare(queue, "direct", true, false, false, false, nil); err != nil {
				return fmt.Errorf("declare exchange %s: %w", queue, err)
			}
			if err := ch.QueueBind(queue, queue, queue, false, nil); err != nil {
				return fmt.Errorf("bind queue %s: %w", queue, err)
			}
			return nil
		})
	}
	if err != nil {
		return err
	}
	b.mu.Lock()
	if b.s == s {
		b.declared[queue] = true
	}
	b.mu.Unlock()
	return nil
}

// publishing is the AMQP message of task, as Celery's producer sends it.
func (b *amqpBroker) publishing(task wire.Task) (amqp.Publishing, error) {
	body, err := task.Body()
	if err != nil {
		return amqp.Publishing{}, fmt.Errorf("task %s: %w", task.ID, err)
	}
	return amqp.Publishing{
		Headers: amqp.Table(task.Headers()), ContentType: wire.ContentType, ContentEncoding: "utf-8",
		DeliveryMode: amqp.Persistent, CorrelationId: task.ID, ReplyTo: task.ReplyTo,
		Priority: uint8(min(max(task.Priority, 0), 9)), Body: body,
	}, nil
}

// send publishes tasks to their queues through the default exchange, and
// waits for RabbitMQ to confirm each.
func (b *amqpBroker) send(ctx context.Context, tasks []next) error {
	s, err := b.session(ctx)
	if err != nil {
		return err
	}
	if b.rpc {
		replyTo, err := b.replyQueue(s)
		if err != nil {
			return err
		}
		for i := range tasks {
			tasks[i].task.ReplyTo = replyTo
		}
	}
	msgs := make([]amqp.Publishing, len(tasks))
	for i, n := range tasks {
		if n.queue == "" {
			return fmt.Errorf("docket: celery: task %s has no queue: %w", n.task.ID, transport.ErrInvalid)
		}
		if msgs[i], err = b.publishing(n.task); err != nil {
			return fmt.Errorf("docket: celery: %w: %w", transport.ErrInvalid, err)
		}
	}
	return b.publish(ctx, s, func(i int) (string, amqp.Publishing) { return tasks[i].queue, msgs[i] }, len(tasks), true)
}

// publish sends n messages, message(i) naming each one's queue (declared
// first when declare is set), and waits for their confirms.
func (b *amqpBroker) publish(ctx context.Context, s *session, message func(i int) (string, amqp.Publishing), n int, declare bool) error {
	if declare {
		for i := range n {
			queue, _ := message(i)
			if err := b.declare(s, queue); err != nil {
				return err
			}
		}
	}
	b.pubMu.Lock()
	defer b.pubMu.Unlock()
	confirms := make([]*amqp.DeferredConfirmation, 0, n)
	for i := range n {
		queue, msg := message(i)
		c, err := s.pub.PublishWithDeferredConfirmWithContext(ctx, "", queue, false, false, msg)
		if err != nil {
			return err
		}
		confirms = append(confirms, c)
	}
	for _, c := range confirms {
		ok, err := c.WaitContext(ctx)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("RabbitMQ refused a message (nack): %w", transport.ErrBusy)
		}
	}
	return nil
}

// fetch consumes queues (starting consumers as needed, with a prefetch of
// the worker's capacity plus the messages held for their ETA; stopping
// those of queues no longer asked for, paused ones, whose deliveries go
// back) and returns up to limit of the messages delivered so far, in the
// order of queues.
func (b *amqpBroker) fetch(ctx context.Context, now time.Time, queues []string, limit, capacity int) ([]*fetched, error) {
	s, err := b.session(ctx)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	if capacity > 0 {
		b.capacity = capacity
	}
	var start []string
	for _, q := range queues {
		if _, ok := b.consumed[q]; !ok {
			start = append(start, q)
		}
	}
	stop := map[string]string{}
	var back []*fetched
	for q, tag := range b.consumed {
		if !slices.Contains(queues, q) {
			stop[q] = tag
			delete(b.consumed, q)
		}
	}
	if len(stop) > 0 {
		b.buf = slices.DeleteFunc(b.buf, func(f *fetched) bool {
			_, gone := stop[f.queue]
			if gone {
				back = append(back, f)
			}
			return gone
		})
	}
	b.mu.Unlock()
	for _, tag := range stop {
		b.consMu.Lock()
		err := s.cons.Cancel(tag, false)
		b.consMu.Unlock()
		if err != nil {
			return nil, fmt.Errorf("cancel a consumer: %w", err)
		}
	}
	for _, f := range back {
		f.session.cons.Nack(f.delivery, false, true)
	}
	if err := b.setPrefetch(s); err != nil {
		return nil, err
	}
	for _, q := range start {
		if err := b.consume(s, q); err != nil {
			return nil, err
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []*fetched
	for _, q := range queues {
		for i := 0; i < len(b.buf) && len(out) < limit; {
			if f := b.buf[i]; f.queue == q {
				out = append(out, f)
				b.buf = slices.Delete(b.buf, i, i+1)
				continue
			}
			i++
		}
	}
	return out, nil
}

// consume starts a consumer of queue on s, whose deliveries enter buf.
func (b *amqpBroker) consume(s *session, queue string) error {
	if err := b.declare(s, queue); err != nil {
		return err
	}
	tag := "docket-" + uuid4()
	// Consume, not ConsumeWithContext: the consumer outlives the claim
	// that starts it (a context's end would cancel it).
	b.consMu.Lock()
	ch, err := s.cons.Consume(queue, tag, false, false, false, false, nil)
	b.consMu.Unlock()
	if err != nil {
		return fmt.Errorf("consume %s: %w", queue, err)
	}
	b.mu.Lock()
	if b.s == s {
		b.consumed[queue] = tag
	}
	b.mu.Unlock()
	go func() {
		for d := range ch {
			f := &fetched{queue: queue, raw: string(d.Body), delivery: d.DeliveryTag, session: s, headers: d.Headers,
				contentType: d.ContentType, contentEncoding: d.ContentEncoding}
			f.task, f.err = wire.Decode(d.ContentType, d.ContentEncoding, map[string]any(d.Headers), d.Body)
			f.task.CorrelationID, f.task.ReplyTo, f.task.Priority = d.CorrelationId, d.ReplyTo, int(d.Priority)
			b.mu.Lock()
			alive := b.s == s
			if alive {
				b.buf = append(b.buf, f)
			}
			b.mu.Unlock()
			if alive {
				b.ev.emit(transport.Event{Kind: transport.EventReady, Queue: queue})
			}
		}
	}()
	return nil
}

// setPrefetch sets the prefetch of s's consumers to the worker's capacity
// plus the messages held for their ETA, as Celery widens its own, so
// that held messages do not starve the worker.
func (b *amqpBroker) setPrefetch(s *session) error {
	b.mu.Lock()
	want := max(b.capacity, 1) + b.waiting
	same := b.prefetch == want
	b.mu.Unlock()
	if same {
		return nil
	}
	b.consMu.Lock()
	err := s.cons.Qos(want, 0, true)
	b.consMu.Unlock()
	if err != nil {
		return fmt.Errorf("prefetch: %w", err)
	}
	b.mu.Lock()
	if b.s == s {
		b.prefetch = want
	}
	b.mu.Unlock()
	return nil
}

func (b *amqpBroker) held(n int) {
	b.mu.Lock()
	b.waiting = n
	s := b.s
	b.mu.Unlock()
	if s != nil && s.alive() {
		if err := b.setPrefetch(s); err != nil {
			b.log.Warn("docket: celery: the prefetch was not widened for the messages held for their ETA", "err", err)
		}
	}
}

// touch reports which of fs are still this process's: those that came on
// the live session (RabbitMQ gives a lost connection's messages to other
// consumers).
func (b *amqpBroker) touch(_ context.Context, _ time.Time, fs []*fetched) ([]bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]bool, len(fs))
	for i, f := range fs {
		out[i] = f.session == b.s && f.session.alive()
	}
	return out, nil
}

func (b *amqpBroker) upkeep(context.Context, time.Time) {}

func (b *amqpBroker) poll() time.Duration { return 0 }

// settle publishes what s sends on (confirmed) and then acknowledges f,
// or rejects it back to its queue when s gives it back. A message whose
// session was lost is no longer this process's: nothing is written.
func (b *amqpBroker) settle(ctx context.Context, f *fetched, s settlement) (lost bool, err error) {
	if !f.session.alive() {
		return true, nil
	}
	var msgs []amqp.Publishing
	var queues []string
	for _, n := range s.next {
		m, err := b.publishing(n.task)
		if err != nil {
			b.log.WarnContext(ctx, "docket: celery: a follow-up task was not sent", "task_id", f.task.ID, "next", n.task.Name, "err", err)
			continue
		}
		msgs, queues = append(msgs, m), append(queues, n.queue)
	}
	if s.dead != "" {
		h := amqp.Table{}
		for k, v := range f.headers {
			h[k] = v
		}
		h["x-docket-reason"] = s.dead
		msgs = append(msgs, amqp.Publishing{Headers: h, ContentType: f.contentType, ContentEncoding: f.contentEncoding,
			DeliveryMode: amqp.Persistent, CorrelationId: f.task.CorrelationID, Body: []byte(f.raw)})
		queues = append(queues, DeadList(f.queue))
	}
	if len(msgs) > 0 {
		if err := b.publish(ctx, f.session, func(i int) (string, amqp.Publishing) { return queues[i], msgs[i] }, len(msgs), true); err != nil {
			if !f.session.alive() {
				return true, nil
			}
			return false, err
		}
	}
	if s.giveBack {
		err = f.session.cons.Nack(f.delivery, false, true)
	} else {
		err = f.session.cons.Ack(f.delivery, false)
	}
	if err != nil && !f.session.alive() {
		return true, nil
	}
	return false, err
}

func (b *amqpBroker) ping(ctx context.Context) error {
	_, err := b.session(ctx)
	return err
}

func (b *amqpBroker) close() error {
	b.mu.Lock()
	s := b.s
	b.s, b.closed = nil, true
	b.mu.Unlock()
	if s != nil {
		return s.conn.Close()
	}
	return nil
}
