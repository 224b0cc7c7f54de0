package amqp_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/amqptest"
)

// confirmCutter is a TCP proxy in front of the broker that loses a
// publish's confirm: once armed with a marker, the first client bytes that
// carry it are forwarded to the broker, every byte the broker sends back on
// that connection from then on is dropped, and hit is closed when the
// dropped bytes hold the broker's confirm (basic.ack), so the message is
// known to be queued. Cut then closes the connections (the client sees a
// lost connection). Later connections pass.
//
// Waiting for the confirm matters: RabbitMQ does not promise to route a
// message whose connection closes right after its frames arrived, so a cut
// made as soon as the bytes were forwarded could lose the message.
type confirmCutter struct {
	ln       net.Listener
	upstream string

	mu     sync.Mutex
	marker []byte
	hit    chan struct{}
	conns  []net.Conn
	wg     sync.WaitGroup
}

// basicAck is the start of a basic.ack method frame's payload: class 60,
// method 80.
var basicAck = []byte{0, 60, 0, 80}

func startCutter(t *testing.T, upstream string) *confirmCutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &confirmCutter{ln: ln, upstream: upstream}
	c.wg.Add(1)
	go c.serve()
	t.Cleanup(func() {
		ln.Close()
		c.Cut()
		c.wg.Wait()
	})
	return c
}

func (c *confirmCutter) addr() string { return c.ln.Addr().String() }

// arm makes the next client bytes containing marker lose their answers,
// and returns the channel closed when that happened.
func (c *confirmCutter) arm(marker string) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.marker, c.hit = []byte(marker), make(chan struct{})
	return c.hit
}

// Cut closes every open connection.
func (c *confirmCutter) Cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, conn := range c.conns {
		conn.Close()
	}
	c.conns = nil
}

func (c *confirmCutter) serve() {
	defer c.wg.Done()
	for {
		client, err := c.ln.Accept()
		if err != nil {
			return
		}
		broker, err := net.DialTimeout("tcp", c.upstream, 10*time.Second)
		if err != nil {
			client.Close()
			continue
		}
		c.mu.Lock()
		c.conns = append(c.conns, client, broker)
		c.mu.Unlock()
		var stalled atomic.Pointer[chan struct{}] // the hit to close once the confirm comes
		c.wg.Add(2)
		go func() { // client to broker
			defer c.wg.Done()
			defer broker.Close()
			buf := make([]byte, 64<<10)
			var tail []byte // the end of the previous read, for a marker cut in two
			for {
				n, err := client.Read(buf)
				if n > 0 {
					c.mu.Lock()
					if m := c.marker; m != nil && bytes.Contains(append(tail, buf[:n]...), m) {
						// Stalled before the message reaches the broker:
						// its confirm cannot slip through.
						hit := c.hit
						stalled.Store(&hit)
						c.marker, c.hit = nil, nil
					}
					c.mu.Unlock()
					if _, werr := broker.Write(buf[:n]); werr != nil {
						return
					}
					tail = append(tail[:0], buf[max(0, n-64):n]...)
				}
				if err != nil {
					return
				}
			}
		}()
		go func() { // broker to client
			defer c.wg.Done()
			defer client.Close()
			buf := make([]byte, 64<<10)
			var tail []byte
			confirmed := false
			for {
				n, err := broker.Read(buf)
				if hit := stalled.Load(); n > 0 && hit != nil {
					if !confirmed && bytes.Contains(append(tail, buf[:n]...), basicAck) {
						close(*hit)
						confirmed = true
					}
					tail = append(tail[:0], buf[max(0, n-8):n]...)
				} else if n > 0 {
					if _, werr := client.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

// cutURL returns a URL of the broker through a fresh confirmCutter, under a
// prefix of its own whose topology is deleted when the test ends.
func cutURL(t *testing.T) (string, *confirmCutter) {
	t.Helper()
	base := brokerURL(t)
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	c := startCutter(t, u.Host)
	prefix := fmt.Sprintf("cut%d-%d", time.Now().UnixNano()%1e9, seq.Add(1))
	t.Cleanup(func() { amqptest.DeleteTopology(t, base, prefix, "default") })
	u.Host = c.addr()
	q := u.Query()
	q.Set("prefix", prefix)
	u.RawQuery = q.Encode()
	return u.String(), c
}

// queueDepth reports how many messages are ready in the default queue of
// the docket URL u, and how many consumers it has, for a failure's message.
func queueDepth(t *testing.T, u string) string {
	pu, err := url.Parse(u)
	if err != nil {
		return err.Error()
	}
	conn, err := amqp091.Dial(brokerURL(t))
	if err != nil {
		return err.Error()
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err.Error()
	}
	q, err := ch.QueueDeclarePassive(pu.Query().Get("prefix")+".q.default", true, false, false, false, nil)
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%d ready with %d consumers", q.Messages, q.Consumers)
}

// runs counts the handler's runs by task id.
type runs struct {
	mu   sync.Mutex
	byID map[string]int
	ran  chan string
}

func newRuns() *runs { return &runs{byID: map[string]int{}, ran: make(chan string, 100)} }

func (r *runs) task() *docket.Task[int, int] {
	return docket.NewTask("outcome.job", func(ctx context.Context, v int) (int, error) {
		tc, _ := docket.FromContext(ctx)
		r.mu.Lock()
		r.byID[tc.ID]++
		r.mu.Unlock()
		r.ran <- tc.ID
		return v, nil
	})
}

func (r *runs) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byID[id]
}

// enqueueCut enqueues a task with the given id and loses the broker's
// confirm of its message: the message reaches the broker, then the
// connection is closed before the confirm comes back. It returns
// Enqueue's error.
func enqueueCut(t *testing.T, q *docket.Queue, c *confirmCutter, task *docket.Task[int, int], id string) error {
	t.Helper()
	hit := c.arm(id)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(bg, 120*time.Second)
		defer cancel()
		_, err := task.Enqueue(ctx, q, 1, docket.TaskID(id))
		done <- err
	}()
	select {
	case <-hit:
	case err := <-done:
		t.Fatalf("Enqueue returned before its message was confirmed: %v", err)
	case <-time.After(120 * time.Second):
		t.Fatal("the message was never sent, or the broker never confirmed it")
	}
	c.Cut()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Enqueue succeeded without the broker's confirm")
		}
		return err
	case <-time.After(120 * time.Second):
		t.Fatal("Enqueue did not return after its connection was lost")
	}
	return nil
}

// With RabbitMQ alone, a publish whose connection is lost after the
// message was sent and before its confirm came is an unknown outcome, not
// a definite failure: here the message was queued, and the task runs.
func TestEnqueueConfirmLostIsOutcomeUnknown(t *testing.T) {
	url, cut := cutURL(t)
	q, err := docket.Open(bg, url, docket.Logger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	r := newRuns()
	task := r.task()
	q.Register(task)
	// Declares the topology and the reply queue, so that the next
	// enqueue only publishes.
	if _, err := task.Enqueue(bg, q, 0); err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("unknown-%d", seq.Add(1))
	err = enqueueCut(t, q, cut, task, id)
	t.Logf("enqueue with its confirm lost: %v", err)
	if !errors.Is(err, docket.ErrOutcomeUnknown) || errors.Is(err, docket.ErrBusy) {
		t.Fatalf("error %v: want one matching ErrOutcomeUnknown and not ErrBusy", err)
	}
	var ue *docket.OutcomeUnknownError
	if !errors.As(err, &ue) || len(ue.IDs) != 1 || ue.IDs[0] != id {
		t.Fatalf("error %v: want an *OutcomeUnknownError naming %s", err, id)
	}
	ctx, stop := context.WithCancel(bg)
	defer stop()
	go q.Run(ctx)
	deadline := time.After(120 * time.Second)
	for r.count(id) == 0 {
		select {
		case <-r.ran:
		case <-deadline:
			t.Fatalf("the task whose confirm was lost never ran; its queue holds %s", queueDepth(t, url))
		}
	}
}

// With a result store, a task exists once the store recorded it, and a
// lost confirm stops Enqueue before the store is written: the failure is
// definite even though the message reached the broker. The retry with the
// same id stores the task, a further retry finds it (ErrDuplicate naming
// it), and the task runs once although three messages carry its id.
func TestEnqueueConfirmLostWithStore(t *testing.T) {
	url, cut := cutURL(t)
	q, err := docket.Open(bg, url, docket.Logger(testLogger(t)), docket.LeaseDuration(3*time.Second),
		docket.ResultStore("sqlite:"+filepath.Join(t.TempDir(), "state.db")))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	r := newRuns()
	task := r.task()
	q.Register(task)
	if _, err := task.Enqueue(bg, q, 0); err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("stored-%d", seq.Add(1))
	err = enqueueCut(t, q, cut, task, id)
	t.Logf("enqueue with its confirm lost: %v", err)
	if errors.Is(err, docket.ErrOutcomeUnknown) || !errors.Is(err, docket.ErrBusy) {
		t.Fatalf("error %v: want a definite failure (ErrBusy), nothing having been recorded", err)
	}
	if _, err := q.Info(bg, id); !errors.Is(err, docket.ErrNotFound) {
		t.Fatalf("Info after the failed enqueue: %v; want ErrNotFound", err)
	}
	ctx, cancel := context.WithTimeout(bg, 120*time.Second)
	defer cancel()
	res, err := task.Enqueue(ctx, q, 1, docket.TaskID(id))
	if err != nil {
		t.Fatalf("retry with the same id: %v", err)
	}
	_, err = task.Enqueue(ctx, q, 1, docket.TaskID(id))
	var de *docket.DuplicateError
	if !errors.As(err, &de) || de.ExistingID != id {
		t.Fatalf("second retry: %v; want a *DuplicateError naming %s", err, id)
	}
	wctx, stop := context.WithCancel(bg)
	defer stop()
	go q.Run(wctx)
	if v, err := res.Wait(ctx); err != nil || v != 1 {
		t.Fatalf("Wait: %v, %v", v, err)
	}
	// The other two copies are settled by the store; give them time to
	// arrive (past a lease) before counting.
	time.Sleep(5 * time.Second)
	if n := r.count(id); n != 1 {
		t.Fatalf("the task ran %d times; want once", n)
	}
}
