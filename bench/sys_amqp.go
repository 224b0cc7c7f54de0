package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// amqpBroker is the RabbitMQ server both AMQP systems run on. Every store
// is a set of queues and exchanges under a name prefix that is new for
// each fresh Open and written to the store's directory, so that a child
// process (or a later Open of the same directory) finds the same queues.
// When the harness removes a directory it deletes that prefix's queues and
// exchanges (storeDropper).
type amqpBroker struct {
	url string
}

// where is the broker's host:port, without credentials.
func (b amqpBroker) where() string {
	u, err := amqp.ParseURI(b.url)
	if err != nil {
		return "?"
	}
	return fmt.Sprintf("%s:%d", u.Host, u.Port)
}

// dial opens a connection; dialling and the handshake give up after 5 s.
func (b amqpBroker) dial(ctx context.Context) (*amqp.Connection, error) {
	return amqp.DialConfig(b.url, amqp.Config{
		Heartbeat: 10 * time.Second,
		Locale:    "en_US",
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: 5 * time.Second}
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// amqp091 clears the deadline once the connection is open.
			return c, c.SetDeadline(time.Now().Add(5 * time.Second))
		},
	})
}

// available dials the broker and reports why it cannot be used.
func (b amqpBroker) available(ctx context.Context) error {
	conn, err := b.dial(ctx)
	if err != nil {
		return &NA{Reason: fmt.Sprintf("RabbitMQ at %s not reachable: %v", b.where(), err)}
	}
	return conn.Close()
}

// version is the broker's version, or "" when it cannot be reached.
func (b amqpBroker) version() string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := b.dial(ctx)
	if err != nil {
		return ""
	}
	defer conn.Close()
	v, _ := conn.Properties["version"].(string)
	return v
}

// prefixFile holds a store's name prefix inside its directory.
const prefixFile = "amqp-prefix"

// storePrefix returns the prefix of the store in dir: a new random one
// written there when fresh, otherwise the one written by an earlier Open.
func storePrefix(dir, kind string, fresh bool) (string, error) {
	path := filepath.Join(dir, prefixFile)
	if !fresh {
		raw, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("no RabbitMQ store in %s: %w", dir, err)
		}
		return strings.TrimSpace(string(raw)), nil
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	p := kind + "-" + hex.EncodeToString(b[:])
	return p, os.WriteFile(path, []byte(p+"\n"), 0o644)
}

// storeDropper is a System whose store lives outside its directory: the
// harness calls Drop for each directory it removes.
type storeDropper interface {
	Drop(ctx context.Context, dir string) error
}

// amqpDelete deletes queues and exchanges that may or may not exist. A
// failed delete closes the channel, so each failure opens a new one; "not
// found" is not an error.
func (b amqpBroker) amqpDelete(ctx context.Context, queues, exchanges []string) error {
	conn, err := b.dial(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	var ch *amqp.Channel
	var errs []error
	do := func(name string, del func(*amqp.Channel) error) {
		if ch == nil || ch.IsClosed() {
			if ch, err = conn.Channel(); err != nil {
				errs = append(errs, err)
				return
			}
		}
		err := del(ch)
		var ae *amqp.Error
		if err != nil && !(errors.As(err, &ae) && ae.Code == amqp.NotFound) {
			errs = append(errs, fmt.Errorf("delete %s: %w", name, err))
		}
	}
	for _, q := range queues {
		do(q, func(ch *amqp.Channel) error { _, err := ch.QueueDelete(q, false, false, false); return err })
	}
	for _, x := range exchanges {
		do(x, func(ch *amqp.Channel) error { return ch.ExchangeDelete(x, false, false) })
	}
	return errors.Join(errs...)
}

// dropPrefix reads the prefix of the store in dir, if there is one, and
// deletes what names returns for it.
func (b amqpBroker) dropPrefix(ctx context.Context, dir string, names func(prefix string) (queues, exchanges []string)) error {
	raw, err := os.ReadFile(filepath.Join(dir, prefixFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	q, x := names(strings.TrimSpace(string(raw)))
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return b.amqpDelete(ctx, q, x)
}

// queueWatch is the harness's own view of a queue's depth, on a separate
// connection so its checks never queue behind the system's traffic.
type queueWatch struct {
	b     amqpBroker
	queue string
	mu    sync.Mutex
	conn  *amqp.Connection
	ch    *amqp.Channel
}

// ready returns how many messages wait in the queue, not delivered to any
// consumer (a queue that does not exist yet holds none). Messages
// delivered but not acknowledged are not counted: AMQP does not report
// them.
func (w *queueWatch) ready(ctx context.Context) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.conn == nil || w.conn.IsClosed() {
		c, err := w.b.dial(ctx)
		if err != nil {
			return 0, err
		}
		w.conn, w.ch = c, nil
	}
	if w.ch == nil || w.ch.IsClosed() {
		ch, err := w.conn.Channel()
		if err != nil {
			return 0, err
		}
		w.ch = ch
	}
	q, err := w.ch.QueueDeclarePassive(w.queue, true, false, false, false, nil)
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Code == amqp.NotFound {
		return 0, nil
	}
	return q.Messages, err
}

func (w *queueWatch) close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.conn == nil {
		return nil
	}
	err := w.conn.Close()
	w.conn = nil
	if errors.Is(err, amqp.ErrClosed) {
		return nil
	}
	return err
}

// amqpNA marks the measurements that do not apply to a RabbitMQ system.
func amqpNA(measurement string) error {
	switch measurement {
	case "claim1k", "claim100k", "claim1m":
		return &NA{Reason: "claim cost at depth measures a store's claim query; RabbitMQ pushes deliveries to consumers (drain8 covers the per-task cost)"}
	case "size":
		return &NA{Reason: "RabbitMQ's memory and disk per queue is not visible over AMQP 0-9-1 (it needs the management plugin)"}
	}
	return nil
}

// amqpSystem is the baseline for docket-amqp: the plain amqp091-go
// publish/consume loop doing the same work. One durable quorum queue;
// persistent messages published to it with publisher confirms, each
// Enqueue waiting for its own confirm (concurrent callers share the one
// confirm channel), a batch published whole and then its confirms awaited;
// workers consume with manual acknowledgements and a prefetch of
// 5×Concurrency (docket's default: Concurrency plus a prefetch of
// 4×Concurrency), and acknowledge each message after the handler.
type amqpSystem struct{ b amqpBroker }

func (amqpSystem) Name() string                          { return "amqp091" }
func (s amqpSystem) Available(ctx context.Context) error { return s.b.available(ctx) }
func (amqpSystem) Unsupported(measurement string) error  { return amqpNA(measurement) }

func (s amqpSystem) Storage(ctx context.Context, dir string) (int64, error) {
	return 0, amqpNA("size")
}

func (s amqpSystem) Drop(ctx context.Context, dir string) error {
	return s.b.dropPrefix(ctx, dir, func(p string) ([]string, []string) { return []string{p + ".q"}, nil })
}

type amqpInstance struct {
	o      Options
	queue  string
	conn   *amqp.Connection
	pub    *amqp.Channel // confirm mode, shared by every Enqueue
	watch  *queueWatch
	cons   *amqp.Channel // nil until Start
	wg     sync.WaitGroup
	active atomic.Int64 // deliveries taken by a worker and not yet acknowledged
}

const amqpConsumerTag = "bench"

func (s amqpSystem) Open(ctx context.Context, o Options) (Instance, error) {
	prefix, err := storePrefix(o.Dir, "abench", o.Fresh)
	if err != nil {
		return nil, err
	}
	conn, err := s.b.dial(ctx)
	if err != nil {
		return nil, err
	}
	i := &amqpInstance{o: o, queue: prefix + ".q", conn: conn, watch: &queueWatch{b: s.b, queue: prefix + ".q"}}
	if i.pub, err = conn.Channel(); err != nil {
		conn.Close()
		return nil, err
	}
	if _, err := i.pub.QueueDeclare(i.queue, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		conn.Close()
		return nil, err
	}
	if err := i.pub.Confirm(false); err != nil {
		conn.Close()
		return nil, err
	}
	return i, nil
}

func (i *amqpInstance) publish(ctx context.Context, stamp int64) (*amqp.DeferredConfirmation, error) {
	var body []byte
	if stamp != 0 {
		body = binary.LittleEndian.AppendUint64(nil, uint64(stamp))
	}
	return i.pub.PublishWithDeferredConfirmWithContext(ctx, "", i.queue, false, false, amqp.Publishing{
		DeliveryMode: amqp.Persistent, Body: body,
	})
}

func waitConfirm(ctx context.Context, c *amqp.DeferredConfirmation) error {
	ok, err := c.WaitContext(ctx)
	switch {
	case err != nil:
		return err
	case !ok:
		return errors.New("amqp091: the broker did not confirm the message (nack or channel closed)")
	}
	return nil
}

func (i *amqpInstance) Enqueue(ctx context.Context, stamp int64) error {
	c, err := i.publish(ctx, stamp)
	if err != nil {
		return err
	}
	return waitConfirm(ctx, c)
}

func (i *amqpInstance) EnqueueBatch(ctx context.Context, n int) error {
	cs := make([]*amqp.DeferredConfirmation, n)
	for k := range cs {
		var err error
		if cs[k], err = i.publish(ctx, 0); err != nil {
			return err
		}
	}
	for _, c := range cs {
		if err := waitConfirm(ctx, c); err != nil {
			return err
		}
	}
	return nil
}

func (i *amqpInstance) Start(ctx context.Context) error {
	if i.cons != nil {
		return errors.New("amqp091: already started")
	}
	conc := max(1, i.o.Concurrency)
	ch, err := i.conn.Channel()
	if err != nil {
		return err
	}
	if err := ch.Qos(5*conc, 0, false); err != nil {
		return err
	}
	msgs, err := ch.Consume(i.queue, amqpConsumerTag, false, false, false, false, nil)
	if err != nil {
		ch.Close()
		return err
	}
	h := i.o.Handler
	if h == nil {
		h = func(int64) {}
	}
	i.cons = ch
	for range conc {
		i.wg.Go(func() {
			for d := range msgs {
				i.active.Add(1)
				var stamp int64
				if len(d.Body) == 8 {
					stamp = int64(binary.LittleEndian.Uint64(d.Body))
				}
				h(stamp)
				err := d.Ack(false)
				i.active.Add(-1)
				if err != nil {
					return // the channel is gone: the broker requeues the rest
				}
			}
		})
	}
	return nil
}

// Stop cancels the consumer, lets the workers finish what they hold, and
// closes the channel: deliveries not acknowledged go back to the queue.
func (i *amqpInstance) Stop(ctx context.Context) error {
	if i.cons == nil {
		return nil
	}
	ch := i.cons
	i.cons = nil
	cerr := ch.Cancel(amqpConsumerTag, false)
	done := make(chan struct{})
	go func() { i.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	err := ch.Close()
	if errors.Is(err, amqp.ErrClosed) {
		err = nil
	}
	return errors.Join(cerr, err)
}

// Unfinished reports a message still waiting in the queue or one a worker
// here has not acknowledged yet.
func (i *amqpInstance) Unfinished(ctx context.Context) (bool, error) {
	if i.active.Load() > 0 {
		return true, nil
	}
	n, err := i.watch.ready(ctx)
	return n > 0, err
}

func (i *amqpInstance) Cleanup(ctx context.Context) (string, *PollErrors, error) {
	return "none needed: the broker deletes a message when it is acknowledged", nil, nil
}

func (i *amqpInstance) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := i.Stop(ctx)
	cerr := i.conn.Close()
	if errors.Is(cerr, amqp.ErrClosed) {
		cerr = nil
	}
	return errors.Join(err, cerr, i.watch.close())
}

// brokerCPU is the CPU time, in seconds, of the RabbitMQ server on this
// machine (the one beam.smp process running RabbitMQ, read from /proc),
// or an *NA when the broker is elsewhere or cannot be told apart.
func (b amqpBroker) brokerCPU() (float64, error) {
	u, err := url.Parse(b.url)
	if err != nil {
		return 0, err
	}
	if h := u.Hostname(); h != "127.0.0.1" && h != "localhost" && h != "::1" {
		return 0, &NA{Reason: "RabbitMQ is not on this machine"}
	}
	dirs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		return 0, err
	}
	var found []string
	for _, d := range dirs {
		comm, err := os.ReadFile(d + "/comm")
		if err != nil || strings.TrimSpace(string(comm)) != "beam.smp" {
			continue
		}
		if cmd, err := os.ReadFile(d + "/cmdline"); err == nil && bytes.Contains(cmd, []byte("rabbit")) {
			found = append(found, d)
		}
	}
	if len(found) != 1 {
		return 0, &NA{Reason: fmt.Sprintf("%d RabbitMQ processes on this machine; the broker's CPU needs exactly one", len(found))}
	}
	stat, err := os.ReadFile(found[0] + "/stat")
	if err != nil {
		return 0, err
	}
	// Fields 14 and 15 (utime, stime) in clock ticks, after the command
	// name in parentheses.
	rest := stat[bytes.LastIndexByte(stat, ')')+1:]
	f := strings.Fields(string(rest))
	if len(f) < 13 {
		return 0, fmt.Errorf("short %s/stat", found[0])
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return (ut + st) / clockTicks, nil
}

// clockTicks is Linux's USER_HZ, the unit of /proc/PID/stat's times (100
// on every architecture Go runs Linux on).
const clockTicks = 100

func (s docketAMQPSystem) brokerCPU() (float64, error) { return s.b.brokerCPU() }
func (s amqpSystem) brokerCPU() (float64, error)       { return s.b.brokerCPU() }
