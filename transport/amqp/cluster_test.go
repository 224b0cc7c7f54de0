package amqp_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/longtest"
)

// cluster is three private RabbitMQ nodes joined in one cluster, on their
// own ports, directories and Erlang cookie. Only their own processes are
// ever stopped or killed.
type cluster struct {
	t     *testing.T
	nodes []*node
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	cookie := fmt.Sprintf("DOCKETCLUSTER%d", freePort(t))
	c := &cluster{t: t}
	for range 3 {
		c.nodes = append(c.nodes, startNodeCookie(t, cookie, 30*time.Minute))
	}
	for _, n := range c.nodes[1:] {
		n.ctl("stop_app")
		n.ctl("join_cluster", c.nodes[0].name)
		n.ctl("start_app")
		n.ctl("await_startup")
	}
	return c
}

// url is docket's URL for the cluster, from node first: its address,
// then the others' as addr= parameters; then params.
func (c *cluster) url(first int, params string) string {
	u := fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/?", c.nodes[first].port)
	for i := range c.nodes {
		if i != first {
			u += fmt.Sprintf("addr=127.0.0.1:%d&", c.nodes[i].port)
		}
	}
	return u + params
}

// restart stops node i (gracefully, or with SIGKILL), starts it again and
// waits until it runs in the cluster again.
func (c *cluster) restart(i int, kill bool) {
	c.t.Helper()
	n := c.nodes[i]
	t0 := time.Now()
	if kill {
		n.kill()
	} else {
		n.ctl("stop")
		n.cmd.Wait()
		n.cmd = nil
	}
	n.start()
	n.ctl("await_startup")
	c.t.Logf("node %d (%s) %s and back in %s", i, n.name, map[bool]string{true: "killed", false: "stopped"}[kill], time.Since(t0).Round(time.Millisecond))
}

// leader returns the index of the node that leads the quorum queue name.
func (c *cluster) leader(name string) int {
	c.t.Helper()
	for _, n := range c.nodes {
		if n.cmd == nil {
			continue
		}
		out, err := n.ctlOutput("list_queues", "name", "leader", "--formatter", "json", "--quiet")
		if err != nil {
			continue
		}
		var qs []struct{ Name, Leader string }
		// The JSON array, without any notice rabbitmqctl printed around it.
		if i := bytes.IndexByte(out, '['); i >= 0 {
			out = out[i:]
		}
		if json.Unmarshal(out, &qs) != nil {
			continue
		}
		for _, q := range qs {
			if q.Name != name {
				continue
			}
			for i, m := range c.nodes {
				if m.name == q.Leader {
					return i
				}
			}
		}
	}
	c.t.Fatalf("no node leads %s", name)
	return -1
}

// A three-node cluster with quorum queues and a SQLite result store: each
// node stopped and started again in turn while tasks flow, the first the
// one the Queue is connected to, then the node that leads the task
// queue SIGKILLed. The Queue moves to another node by itself each time;
// every acknowledged task completes, none runs after its completion.
func TestFaultClusterNodeRestarts(t *testing.T) {
	longtest.Require(t, "boots a three-node RabbitMQ cluster")
	c := startCluster(t)
	prefix := fmt.Sprintf("cluster%d", seq.Add(1))
	opts := []docket.Option{docket.ResultStore("sqlite:" + filepath.Join(t.TempDir(), "state.db"))}
	t.Cleanup(func() {
		if t.Failed() {
			c.logQueues()
		}
	})
	traffic(t, c.url(0, "prefix="+prefix), opts, true, func() {
		for i := range c.nodes {
			c.restart(i, false)
			time.Sleep(2 * time.Second)
		}
		c.restart(c.leader(prefix+".q.default"), true)
	})
}

// logQueues logs the cluster's queues with their message counts, leader
// and members.
func (c *cluster) logQueues() {
	for _, n := range c.nodes {
		if n.cmd == nil {
			continue
		}
		out, err := n.ctlOutput("list_queues", "name", "type", "messages_ready", "messages_unacknowledged", "leader", "members")
		c.t.Logf("queues, from %s (%v):\n%s", n.name, err, out)
		return
	}
}

// With addr=, a node that does not answer is passed over: the first node
// of the URL refuses connections, the next one is the broker.
func TestOpenTriesTheOtherNodes(t *testing.T) {
	brokerURL(t)
	u, err := url.Parse(freshURL(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	live := u.Host
	u.Host = fmt.Sprintf("127.0.0.1:%d", freePort(t)) // nothing listens there
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
