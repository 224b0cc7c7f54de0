package amqp_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/amqptest"
	"github.com/docketq/docket/internal/chaos"
	"github.com/docketq/docket/internal/faulttraffic"
	"github.com/docketq/docket/internal/longtest"
	"github.com/docketq/docket/internal/probetest"
)

// node is a private RabbitMQ node started by a test, on its own ports and
// directory, so that it can be killed, restarted and alarmed without
// touching the machine's broker. Only its own process group is killed.
type node struct {
	t          *testing.T
	name       string
	port, dist int
	dir        string
	cmd        *exec.Cmd
}

func freePort(t *testing.T) int {
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

// startNode starts a node whose consumer_timeout is consumerTimeout (and
// whose channels check it every second), with extra lines of rabbitmq.conf.
func startNode(t *testing.T, consumerTimeout time.Duration, extra ...string) *node {
	t.Helper()
	return startNodeCookie(t, "", consumerTimeout, extra...)
}

// startNodeCookie is startNode with the Erlang cookie of a cluster (a
// cookie of its own when empty).
func startNodeCookie(t *testing.T, cookie string, consumerTimeout time.Duration, extra ...string) *node {
	t.Helper()
	brokerURL(t) // broker tests are opt-in
	if serverBinary() == "" {
		t.Skip("rabbitmq-server is not installed")
	}
	n := &node{t: t, port: freePort(t), dist: freePort(t), dir: t.TempDir()}
	if cookie == "" {
		cookie = fmt.Sprintf("DOCKETTEST%d", n.port)
	}
	n.name = fmt.Sprintf("docket-test-%d@localhost", n.port)
	conf := fmt.Sprintf("listeners.tcp.default = 127.0.0.1:%d\nloopback_users = none\nconsumer_timeout = %d\n",
		n.port, consumerTimeout.Milliseconds()) + strings.Join(extra, "\n") + "\n"
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
	n.start()
	t.Cleanup(func() {
		n.kill()
		if t.Failed() {
			n.logTail(60)
		}
	})
	return n
}

// logTail logs the last lines of the node's own log, so that a failed test
// shows what the broker was doing.
func (n *node) logTail(lines int) {
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

func (n *node) start() {
	n.t.Helper()
	n.cmd = exec.Command(serverBinary())
	n.cmd.Env = append(n.env(),
		"RABBITMQ_CONF_ENV_FILE=/dev/null",
		"RABBITMQ_NODENAME="+n.name,
		"RABBITMQ_NODE_PORT="+strconv.Itoa(n.port),
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
		if c, err := amqp091.Dial(n.url()); err == nil {
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

// kill sends SIGKILL to the node's process group.
func (n *node) kill() {
	if n.cmd != nil && n.cmd.Process != nil {
		syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
		n.cmd.Wait()
		n.cmd = nil
	}
}

// env is the environment of the node and of rabbitmqctl: HOME holds the
// node's own Erlang cookie.
func (n *node) env() []string {
	return append(os.Environ(), "HOME="+n.dir, "ERL_EPMD_ADDRESS=127.0.0.1")
}

func (n *node) url() string { return fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", n.port) }

// ctl runs rabbitmqctl against the node.
func (n *node) ctl(args ...string) {
	n.t.Helper()
	if out, err := n.ctlOutput(args...); err != nil {
		n.t.Fatalf("rabbitmqctl %v: %v\n%s", args, err, out)
	}
}

// ctlOutput runs rabbitmqctl against the node and returns its output.
func (n *node) ctlOutput(args ...string) ([]byte, error) {
	ctl := filepath.Join(filepath.Dir(serverBinary()), "rabbitmqctl")
	cmd := exec.Command(ctl, append([]string{"-n", n.name}, args...)...)
	cmd.Env = n.env()
	return cmd.CombinedOutput()
}

// item is the argument of the poison tests' slow task.
type item struct {
	N int `json:"n"`
}

// traffic runs faulttraffic's producer and worker on url while fault()
// runs. With strict (a result store keeps the task state), a handler that
// starts after its task's completion was recorded fails the test.
func traffic(t *testing.T, url string, opts []docket.Option, strict bool, fault func()) {
	t.Helper()
	faulttraffic.Run(t, faulttraffic.Config{
		URL:     url,
		Options: append(opts, docket.LeaseDuration(3*time.Second), docket.Logger(testLogger(t))),
		// RabbitMQ 3.10 can lose a quorum queue declared less than about a
		// second before the node is killed; let the topology settle first.
		Settle: 2 * time.Second,
		Wait:   90 * time.Second,
		Strict: strict,
	}, fault)
}

// modes runs f with RabbitMQ alone and with a SQLite result store, each
// under its own prefix of url. By default only the second runs; both with
// DOCKET_TEST_LONG=1.
func modes(t *testing.T, url string, f func(t *testing.T, url string, opts []docket.Option, strict bool)) {
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	t.Run("alone", func(t *testing.T) {
		longtest.Require(t, "the second mode (sqlite-store runs by default)")
		f(t, fmt.Sprintf("%s%sprefix=alone%d", url, sep, seq.Add(1)), nil, false)
	})
	t.Run("sqlite-store", func(t *testing.T) {
		f(t, fmt.Sprintf("%s%sprefix=stored%d", url, sep, seq.Add(1)), []docket.Option{docket.ResultStore("sqlite:" + filepath.Join(t.TempDir(), "state.db"))}, true)
	})
}

// RabbitMQ killed with SIGKILL and restarted mid-stream: producers get
// definite errors or success, the worker resumes without a restart, and
// every confirmed task completes.
func TestFaultBrokerRestart(t *testing.T) {
	longtest.Require(t, "boots a private RabbitMQ node twice")
	n := startNode(t, 30*time.Minute)
	modes(t, n.url(), func(t *testing.T, url string, opts []docket.Option, strict bool) {
		traffic(t, url, opts, strict, func() {
			n.kill()
			time.Sleep(300 * time.Millisecond)
			n.start()
		})
	})
}

// Every connection closed by the broker, five times in a row.
func TestFaultConnectionsClosed(t *testing.T) {
	longtest.Require(t, "boots a private RabbitMQ node")
	n := startNode(t, 30*time.Minute)
	modes(t, n.url(), func(t *testing.T, url string, opts []docket.Option, strict bool) {
		traffic(t, url, opts, strict, func() {
			for range 5 {
				n.ctl("close_all_connections", "docket fault test")
				time.Sleep(400 * time.Millisecond)
			}
		})
	})
}

// A connection cut (reset) and one silently blackholed through a proxy:
// the heartbeat notices the silent one, and both recover.
func TestFaultConnectionCutAndBlackholed(t *testing.T) {
	base := brokerURL(t)
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := chaos.Start(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	u.Host = proxy.Addr()
	u.RawQuery = "heartbeat=2"
	modes(t, u.String(), func(t *testing.T, url string, opts []docket.Option, strict bool) {
		t.Cleanup(func() { amqptest.DeleteTopology(t, base, prefixOf(url), "default", "other", "mail", "poison") })
		traffic(t, url, opts, strict, func() {
			proxy.ResetAll()
			time.Sleep(time.Second)
			proxy.SetMode(chaos.Blackhole)
			time.Sleep(10 * time.Second) // well past the 2s heartbeats
			proxy.SetMode(chaos.Pass)
			proxy.ResetAll()
		})
	})
}

// A memory alarm blocks publishers: Enqueue ends with its ctx instead of
// hanging, workers keep acknowledging, and everything resumes when the
// alarm clears.
func TestFaultMemoryAlarm(t *testing.T) {
	longtest.Require(t, "boots a private RabbitMQ node")
	n := startNode(t, 30*time.Minute)
	q, err := docket.Open(bg, n.url())
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	task := docket.NewTask("alarm.echo", func(ctx context.Context, v int) (int, error) { return v, nil })
	q.Register(task)
	ctx, stop := context.WithCancel(bg)
	defer stop()
	go q.Run(ctx)
	before, err := task.Enqueue(bg, q, 1)
	if err != nil {
		t.Fatal(err)
	}
	n.ctl("set_vm_memory_high_watermark", "0.000001")
	time.Sleep(time.Second)
	cctx, cancel := context.WithTimeout(bg, 2*time.Second)
	t0 := time.Now()
	_, err = task.Enqueue(cctx, q, 2)
	cancel()
	if err == nil {
		t.Fatal("Enqueue succeeded while the broker blocked publishers")
	}
	if d := time.Since(t0); d > 4*time.Second {
		t.Fatalf("Enqueue returned after %v, past its 2s ctx", d)
	}
	t.Logf("while alarmed: %v", err)
	n.ctl("set_vm_memory_high_watermark", "0.4")
	wctx, wcancel := context.WithTimeout(bg, 30*time.Second)
	defer wcancel()
	if v, err := before.Wait(wctx); err != nil || v != 1 {
		t.Fatalf("task enqueued before the alarm: %v, %v", v, err)
	}
	after, err := task.Enqueue(wctx, q, 3)
	if err != nil {
		t.Fatalf("Enqueue after the alarm cleared: %v", err)
	}
	if v, err := after.Wait(wctx); err != nil || v != 3 {
		t.Fatalf("task enqueued after the alarm: %v, %v", v, err)
	}
}

// A handler running past RabbitMQ's consumer_timeout: the broker closes
// the channel. Alone, that is a lost lease: the handler's ctx is cancelled
// and the task runs again as its next attempt. With a result store, the
// lease is the store's: the handler finishes its attempt, and the copy the
// broker redelivers is settled by the store.
func TestConsumerTimeout(t *testing.T) {
	n := startNode(t, 2*time.Second)
	modes(t, n.url(), func(t *testing.T, url string, opts []docket.Option, strict bool) {
		q, err := docket.Open(bg, url, append(opts, docket.Logger(testLogger(t)))...)
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		causes := make(chan error, 4)
		task := docket.NewTask("slow.job", func(ctx context.Context, _ int) (int, error) {
			tc, _ := docket.FromContext(ctx)
			if tc.Attempt > 1 {
				return tc.Attempt, nil
			}
			select {
			case <-ctx.Done():
				causes <- context.Cause(ctx)
				return 0, ctx.Err()
			case <-time.After(6 * time.Second):
				causes <- nil
				return tc.Attempt, nil
			}
		})
		q.Register(task)
		ctx, stop := context.WithCancel(bg)
		defer stop()
		go q.Run(ctx)
		r, err := task.Enqueue(bg, q, 1)
		if err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(bg, 60*time.Second)
		defer cancel()
		v, err := r.Wait(wctx)
		if err != nil {
			t.Fatal(err)
		}
		cause := <-causes
		if strict {
			if v != 1 || cause != nil {
				t.Fatalf("with a store: attempt %d succeeded, first run ended by %v; want attempt 1, uninterrupted", v, cause)
			}
			return
		}
		if v != 2 || cause == nil || !strings.Contains(cause.Error(), "lease lost") {
			t.Fatalf("alone: attempt %d succeeded, first run ended by %v; want attempt 2 after a lost lease", v, cause)
		}
	})
}

func prefixOf(raw string) string {
	u, _ := url.Parse(raw)
	return u.Query().Get("prefix")
}

// testLogger logs through t, so that docket's warnings show with a failure.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(logWriter{t}, nil))
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// Readiness follows a private node that is killed and restarted;
// liveness stays true.
func TestReadinessFollowsTheServer(t *testing.T) {
	n := startNode(t, 30*time.Minute)
	stop := func() {
		// RabbitMQ 3.10 can lose a quorum queue declared less than about
		// a second before the node is killed (it comes back with no
		// leader, and every consume on it fails): let it settle first.
		time.Sleep(2 * time.Second)
		n.kill()
	}
	probetest.FollowServer(t, n.url(), []docket.Option{docket.Logger(testLogger(t))}, stop, n.start)
}
