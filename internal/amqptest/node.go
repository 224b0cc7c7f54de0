package amqptest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Node is a private RabbitMQ node started by a test, on its own ports and
// directory, so that it can be killed, restarted and alarmed without
// touching the machine's broker. Only its own process group is ever
// stopped or killed.
type Node struct {
	t    testing.TB
	Name string // the Erlang node name, docket-test-<port>@localhost
	Port int    // the AMQP port on 127.0.0.1
	dist int
	dir  string
	cmd  *exec.Cmd
}

// FreePort returns a TCP port on 127.0.0.1 that nothing listens on now.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func serverBinary() string {
	for _, p := range []string{"/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/sbin/rabbitmq-server"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	p, _ := exec.LookPath("rabbitmq-server")
	return p
}

// StartNode starts a node with the Erlang cookie of a cluster (one of its
// own when cookie is empty), whose consumer_timeout is consumerTimeout
// (checked by its channels every second), with extra lines of
// rabbitmq.conf. It skips the test unless DOCKET_TEST_AMQP_URL is set
// (broker tests are opt-in) and kills the node when the test ends.
func StartNode(t testing.TB, cookie string, consumerTimeout time.Duration, extra ...string) *Node {
	t.Helper()
	if os.Getenv("DOCKET_TEST_AMQP_URL") == "" {
		t.Skip("DOCKET_TEST_AMQP_URL is not set (e.g. amqp://guest:guest@127.0.0.1:5672/): skipping RabbitMQ tests")
	}
	if serverBinary() == "" {
		t.Skip("rabbitmq-server is not installed")
	}
	n := &Node{t: t, Port: FreePort(t), dist: FreePort(t), dir: t.TempDir()}
	if cookie == "" {
		cookie = fmt.Sprintf("DOCKETTEST%d", n.Port)
	}
	n.Name = fmt.Sprintf("docket-test-%d@localhost", n.Port)
	conf := fmt.Sprintf("listeners.tcp.default = 127.0.0.1:%d\nloopback_users = none\nconsumer_timeout = %d\n",
		n.Port, consumerTimeout.Milliseconds()) + strings.Join(extra, "\n") + "\n"
	files := map[string]string{
		"rabbitmq.conf":   conf,
		"advanced.config": "[{rabbit, [{channel_tick_interval, 1000}]}].\n",
		"enabled_plugins": "[].\n",
		".erlang.cookie":  cookie,
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(n.dir, name), []byte(body), 0o400); err != nil {
			t.Fatal(err)
		}
	}
	n.Start()
	t.Cleanup(func() {
		n.Kill()
		if t.Failed() {
			n.LogTail(60)
		}
	})
	return n
}

// LogTail logs the last lines of the node's own log, so that a failed test
// shows what the broker was doing.
func (n *Node) LogTail(lines int) {
	logs, _ := filepath.Glob(filepath.Join(n.dir, "log", "*.log"))
	for _, f := range logs {
		b, err := os.ReadFile(f)
		if err != nil || len(b) == 0 {
			continue
		}
		all := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(all) > lines {
			all = all[len(all)-lines:]
		}
		n.t.Logf("the node's %s, last %d lines:\n%s", filepath.Base(f), len(all), strings.Join(all, "\n"))
	}
}

// Start starts the node's server and waits until it accepts connections.
func (n *Node) Start() {
	n.t.Helper()
	n.cmd = exec.Command(serverBinary())
	n.cmd.Env = append(n.env(),
		"RABBITMQ_CONF_ENV_FILE=/dev/null",
		"RABBITMQ_NODENAME="+n.Name,
		"RABBITMQ_NODE_PORT="+strconv.Itoa(n.Port),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(n.dist),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(n.dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(n.dir, "log"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(n.dir, "rabbitmq.conf"),
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(n.dir, "advanced.config"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(n.dir, "enabled_plugins"),
	)
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	log, err := os.Create(filepath.Join(n.dir, "server.out"))
	if err != nil {
		n.t.Fatal(err)
	}
	n.cmd.Stdout, n.cmd.Stderr = log, log
	if err := n.cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		if c, err := amqp091.Dial(n.URL()); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(filepath.Join(n.dir, "server.out"))
			n.t.Fatalf("private RabbitMQ node did not start:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Kill sends SIGKILL to the node's process group.
func (n *Node) Kill() {
	if n.cmd != nil && n.cmd.Process != nil {
		syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
		n.cmd.Wait()
		n.cmd = nil
	}
}

// Stop stops the node gracefully (rabbitmqctl stop) and waits for it.
func (n *Node) Stop() {
	n.t.Helper()
	n.Ctl("stop")
	n.cmd.Wait()
	n.cmd = nil
}

// Running reports whether the node's server was started and not stopped.
func (n *Node) Running() bool { return n.cmd != nil }

// env is the environment of the node and of rabbitmqctl: HOME holds the
// node's own Erlang cookie.
func (n *Node) env() []string {
	return append(os.Environ(), "HOME="+n.dir, "ERL_EPMD_ADDRESS=127.0.0.1")
}

// URL is the node's AMQP URL, as guest.
func (n *Node) URL() string { return fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", n.Port) }

// Ctl runs rabbitmqctl against the node and fails the test if it fails.
func (n *Node) Ctl(args ...string) {
	n.t.Helper()
	if out, err := n.CtlOutput(args...); err != nil {
		n.t.Fatalf("rabbitmqctl %v: %v\n%s", args, err, out)
	}
}

// CtlOutput runs rabbitmqctl against the node and returns its output.
func (n *Node) CtlOutput(args ...string) ([]byte, error) {
	ctl := filepath.Join(filepath.Dir(serverBinary()), "rabbitmqctl")
	cmd := exec.Command(ctl, append([]string{"-n", n.Name}, args...)...)
	cmd.Env = n.env()
	return cmd.CombinedOutput()
}

// Cluster is three private nodes joined in one cluster, on their own
// ports, directories and Erlang cookie.
type Cluster struct {
	t     testing.TB
	Nodes []*Node
}

// StartCluster starts three nodes and joins the second and third to the
// first.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	cookie := fmt.Sprintf("DOCKETCLUSTER%d", FreePort(t))
	c := &Cluster{t: t}
	for range 3 {
		c.Nodes = append(c.Nodes, StartNode(t, cookie, 30*time.Minute))
	}
	for _, n := range c.Nodes[1:] {
		n.Ctl("stop_app")
		n.Ctl("join_cluster", c.Nodes[0].Name)
		n.Ctl("start_app")
		n.Ctl("await_startup")
	}
	t.Cleanup(func() {
		if t.Failed() {
			c.LogQueues()
		}
	})
	return c
}

// URL is docket's URL for the cluster, from node first: its address, then
// the others' as addr= parameters; then params.
func (c *Cluster) URL(first int, params string) string {
	u := fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/?", c.Nodes[first].Port)
	for i, n := range c.Nodes {
		if i != first {
			u += fmt.Sprintf("addr=127.0.0.1:%d&", n.Port)
		}
	}
	return u + params
}

// Restart stops node i (gracefully, or with SIGKILL), starts it again and
// waits until it runs in the cluster again.
func (c *Cluster) Restart(i int, kill bool) {
	c.t.Helper()
	n := c.Nodes[i]
	t0 := time.Now()
	how := "stopped"
	if kill {
		how = "killed"
		n.Kill()
	} else {
		n.Stop()
	}
	n.Start()
	n.Ctl("await_startup")
	c.t.Logf("node %d (%s) %s and back in %s", i, n.Name, how, time.Since(t0).Round(time.Millisecond))
}

// queue is what rabbitmqctl list_queues says of a quorum queue.
type queue struct {
	Name, Leader string
	Members      json.RawMessage // a list for a quorum queue, "" for a classic one
}

// queue returns what a running node says of the queue name.
func (c *Cluster) queue(name string) (queue, bool) {
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		out, err := n.CtlOutput("list_queues", "name", "leader", "members", "--formatter", "json", "--quiet")
		if err != nil {
			continue
		}
		var qs []queue
		// The JSON array, without any notice rabbitmqctl printed around it.
		if i := bytes.IndexByte(out, '['); i >= 0 {
			out = out[i:]
		}
		if json.Unmarshal(out, &qs) != nil {
			continue
		}
		for _, q := range qs {
			if q.Name == name {
				return q, true
			}
		}
	}
	return queue{}, false
}

// Leader returns the index of the node that leads the quorum queue name,
// waiting up to a minute for one (an election after a node returned, or
// rabbitmqctl slow on a loaded machine).
func (c *Cluster) Leader(name string) int {
	c.t.Helper()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(500 * time.Millisecond) {
		if q, ok := c.queue(name); ok {
			for i, m := range c.Nodes {
				if m.Name == q.Leader {
					return i
				}
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("no node leads %s after a minute", name)
			return -1
		}
	}
}

// Members returns how many nodes the quorum queue name is replicated on.
func (c *Cluster) Members(name string) int {
	c.t.Helper()
	q, ok := c.queue(name)
	if !ok {
		c.t.Fatalf("no node knows the queue %s", name)
	}
	var members []string
	if err := json.Unmarshal(q.Members, &members); err != nil {
		c.t.Fatalf("the queue %s has no list of members (%s): %v", name, q.Members, err)
	}
	return len(members)
}

// LogQueues logs the cluster's queues with their message counts, leader
// and members.
func (c *Cluster) LogQueues() {
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		out, err := n.CtlOutput("list_queues", "name", "type", "messages_ready", "messages_unacknowledged", "leader", "members")
		c.t.Logf("queues, from %s (%v):\n%s", n.Name, err, out)
		return
	}
}
