package amqp_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/amqptest"
	"github.com/docketq/docket/internal/longtest"
)

// With addr=, a node that does not answer is passed over: the first node
// of the URL refuses connections, the next one is the broker.
func TestOpenTriesTheOtherNodes(t *testing.T) {
	brokerURL(t)
	u, err := url.Parse(freshURL(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	live := u.Host
	u.Host = fmt.Sprintf("127.0.0.1:%d", amqptest.FreePort(t)) // nothing listens there
	q := u.Query()
	q.Add("addr", live)
	u.RawQuery = q.Encode()
	ctx := context.Background()
	dq, err := docket.Open(ctx, u.String())
	if err != nil {
		t.Fatalf("Open with a dead first node: %v", err)
	}
	defer dq.Close()
	task := docket.NewTask("nodes.echo", func(ctx context.Context, n int) (int, error) { return n, nil })
	if err := dq.Register(task); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go dq.Run(runCtx)
	r, err := task.Enqueue(ctx, dq, 7)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if v, err := r.Wait(wctx); err != nil || v != 7 {
		t.Fatalf("Wait = %d, %v", v, err)
	}
}

// What a private three-node cluster shows beyond the fault scenario
// (TestFaultClusterRestarts, in the root package).
func TestCluster(t *testing.T) {
	longtest.Require(t, "boots a three-node RabbitMQ cluster")
	c := amqptest.StartCluster(t)
	t.Run("QuorumSize", func(t *testing.T) { testQuorumSize(t, c) })
	t.Run("ReplyQueueHomeNodeDown", func(t *testing.T) { testReplyQueueHomeNodeDown(t, c) })
}

// quorum_size=2 replicates each quorum queue docket declares on two of the
// three nodes; without it, on all three.
func testQuorumSize(t *testing.T, c *amqptest.Cluster) {
	ctx := context.Background()
	for _, size := range []int{0, 2} {
		prefix := fmt.Sprintf("size%d", size)
		params := "prefix=" + prefix
		if size > 0 {
			params += fmt.Sprintf("&quorum_size=%d", size)
		}
		q, err := docket.Open(ctx, c.URL(0, params))
		if err != nil {
			t.Fatal(err)
		}
		task := docket.NewTask("size.echo", func(ctx context.Context, n int) (int, error) { return n, nil })
		if err := q.Register(task); err != nil {
			t.Fatal(err)
		}
		if _, err := task.Enqueue(ctx, q, 1, docket.IgnoreResult()); err != nil {
			t.Fatal(err)
		}
		q.Close()
		want := map[int]int{0: 3, 2: 2}[size]
		for _, name := range []string{prefix + ".q.default", prefix + ".dead"} {
			if got := c.Members(name); got != want {
				t.Errorf("%s: %d members, want %d", name, got, want)
			}
		}
	}
}

// RabbitMQ alone on a cluster: a producer's reply queue is a durable
// classic queue on the node the producer first connected to. While that
// node is down, declaring the queue again fails with 404 (its home node
// is unavailable), so the producer moves to a reply queue of a new name on
// the node it reconnected to, and the results of the tasks it enqueues
// from then on reach it.
func testReplyQueueHomeNodeDown(t *testing.T, c *amqptest.Cluster) {
	ctx := context.Background()
	moved := make(chan struct{}, 1)
	logger := slog.New(watchLog{slog.NewTextHandler(logWriter{t}, nil), "reply queue unavailable", moved})
	q, err := docket.Open(ctx, c.URL(0, "prefix=replies"), docket.Logger(logger))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	task := docket.NewTask("replies.echo", func(ctx context.Context, n int) (int, error) { return n, nil })
	if err := q.Register(task); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go q.Run(runCtx)
	wait := func(n int) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		for {
			r, err := task.Enqueue(wctx, q, n)
			if err == nil {
				if v, err := r.Wait(wctx); err != nil || v != n {
					t.Fatalf("Wait = %d, %v; want %d", v, err, n)
				}
				return
			}
			if wctx.Err() != nil {
				t.Fatalf("enqueue %d: %v", n, err)
			}
			time.Sleep(100 * time.Millisecond) // refused while reconnecting: try again
		}
	}
	wait(1)
	c.Nodes[0].Stop()
	wait(2)
	select {
	case <-moved:
	default:
		t.Fatal("the reply queue's home node was down, yet the producer did not move to a new reply queue")
	}
}

// watchLog signals on seen when a record's message contains msg.
type watchLog struct {
	slog.Handler
	msg  string
	seen chan struct{}
}

func (h watchLog) Handle(ctx context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.msg) {
		select {
		case h.seen <- struct{}{}:
		default:
		}
	}
	return h.Handler.Handle(ctx, r)
}

func (h watchLog) WithAttrs(as []slog.Attr) slog.Handler {
	return watchLog{h.Handler.WithAttrs(as), h.msg, h.seen}
}
func (h watchLog) WithGroup(name string) slog.Handler {
	return watchLog{h.Handler.WithGroup(name), h.msg, h.seen}
}
