package redis_test

import (
	"context"
	"errors"
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

	goredis "github.com/redis/go-redis/v9"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/faulttraffic"
	"github.com/docketq/docket/internal/longtest"
)

// sentinels is a private Redis primary, one replica and three Sentinels
// that watch them under the name "docket", each on its own port. Only the
// processes it started are ever killed.
type sentinels struct {
	t     *testing.T
	nodes []*server
	ports []int
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startSentinels(t *testing.T) *sentinels {
	t.Helper()
	primary := startServer(t)
	replica := startServer(t, "--replicaof", "127.0.0.1", strconv.Itoa(primary.port))
	g := &sentinels{t: t, nodes: []*server{primary, replica}}
	g.waitReplicated(primary.addr())
	for range 3 {
		port, dir := freePort(t), t.TempDir()
		conf := filepath.Join(dir, "sentinel.conf")
		body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor docket 127.0.0.1 %d 2\n"+
			"sentinel down-after-milliseconds docket 3000\nsentinel failover-timeout docket 10000\n", port, dir, primary.port)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("redis-server", conf, "--sentinel")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Signal(syscall.SIGKILL); cmd.Wait() })
		g.ports = append(g.ports, port)
	}
	// Ready when every Sentinel knows the replica and the other two.
	g.until("the Sentinels to see each other and the replica", func() bool {
		for _, p := range g.ports {
			c := goredis.NewSentinelClient(&goredis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", p)})
			m, err := c.Master(context.Background(), "docket").Result()
			c.Close()
			if err != nil || m["num-other-sentinels"] != "2" || m["num-slaves"] != "1" {
				return false
			}
		}
		return true
	})
	return g
}

// url is docket's URL for the group: go-redis's failover URL, with the
// Sentinels as its host and addr parameters, and more parameters.
func (g *sentinels) url(params string) string {
	return fmt.Sprintf("redis://127.0.0.1:%d/0?master_name=docket&addr=127.0.0.1:%d&addr=127.0.0.1:%d&%s",
		g.ports[0], g.ports[1], g.ports[2], params)
}

// master asks a Sentinel for the primary's address.
func (g *sentinels) master() string {
	for _, p := range g.ports {
		c := goredis.NewSentinelClient(&goredis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", p)})
		a, err := c.GetMasterAddrByName(context.Background(), "docket").Result()
		c.Close()
		if err == nil && len(a) == 2 {
			return net.JoinHostPort(a[0], a[1])
		}
	}
	return ""
}

// until waits for cond, up to two minutes (a loaded machine slows the
// Sentinels' elections and the replicas' syncs).
func (g *sentinels) until(what string, cond func() bool) {
	g.t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			g.t.Errorf("waited two minutes for %s", what)
			return
		}
	}
}

// waitReplicated waits until the primary the Sentinels name (addr at
// first) has an online replica that has caught up with where that
// primary was when it was first seen. A failover meanwhile (a loaded
// machine can make the Sentinels think a server is down) starts the
// wait over on the new primary.
func (g *sentinels) waitReplicated(addr string) {
	g.t.Helper()
	field := func(s, key string) int64 {
		i := strings.Index(s, key)
		if i < 0 {
			return -1
		}
		v := s[i+len(key):]
		if j := strings.IndexAny(v, ",\r\n"); j >= 0 {
			v = v[:j]
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		return n
	}
	primary, target := "", int64(-1)
	g.until("a replica to catch up with the primary", func() bool {
		if m := g.master(); m != "" {
			addr = m
		}
		if addr != primary {
			primary, target = addr, -1
		}
		c := goredis.NewClient(&goredis.Options{Addr: addr})
		defer c.Close()
		info, err := c.Info(context.Background(), "replication").Result()
		if err != nil || !strings.Contains(info, "role:master") {
			return false
		}
		if target < 0 {
			target = field(info, "master_repl_offset:")
		}
		i := strings.Index(info, "slave0:")
		return i >= 0 && strings.Contains(info[i:], "state=online") && field(info[i:], "offset=") >= target
	})
}

// failover SIGKILLs the primary, waits for the Sentinels to promote the
// replica, starts the killed server again (the Sentinels make it the new
// primary's replica) and waits for it to catch up.
func (g *sentinels) failover() {
	g.t.Helper()
	old := g.master()
	var victim *server
	for _, n := range g.nodes {
		if n.addr() == old {
			victim = n
		}
	}
	if victim == nil {
		g.t.Fatalf("the Sentinels name %q as the primary, which is none of ours", old)
	}
	t0 := time.Now()
	victim.kill()
	g.until("the Sentinels to promote the replica", func() bool { m := g.master(); return m != "" && m != old })
	g.t.Logf("primary %s killed; %s promoted after %s", old, g.master(), time.Since(t0).Round(time.Millisecond))
	victim.args = nil // the Sentinels make it a replica
	victim.start()
	g.waitReplicated(g.master())
}

// Redis with Sentinel: the primary SIGKILLed mid-stream and the replica
// promoted, once (twice in the long variant). With replicas=1 every write docket acknowledges is on
// the replica before the acknowledgement, so nothing acknowledged is lost;
// without it (DOCKET_TEST_LONG=1) the loss is counted: Redis replicates
// asynchronously, and what the replica had not received when the primary
// died is gone.
func TestFaultSentinelFailover(t *testing.T) {
	t.Parallel()
	serverURL(t) // broker tests are opt-in
	g := startSentinels(t)
	run := func(t *testing.T, params string, allowLoss bool) faulttraffic.Report {
		return faulttraffic.Run(t, faulttraffic.Config{
			URL:       g.url(params),
			Options:   []docket.Option{docket.LeaseDuration(2 * time.Second)},
			Settle:    500 * time.Millisecond,
			Wait:      90 * time.Second,
			Strict:    true,
			AllowLoss: allowLoss,
		}, func() {
			g.failover()
			if longtest.Enabled() {
				time.Sleep(time.Second)
				g.failover()
			}
		})
	}
	t.Run("replicas=1", func(t *testing.T) {
		run(t, "prefix=durable&replicas=1", false)
	})
	t.Run("async", func(t *testing.T) {
		longtest.Require(t, "the loss of asynchronous replication, measured")
		rep := run(t, "prefix=async", true)
		t.Logf("asynchronous replication: %d of %d acknowledged enqueues lost over two failovers", rep.Lost, rep.Acked)
	})
}

// What replicas=1 costs an enqueue: one task per call from one goroutine
// on a private primary with one replica, each call waiting for its own
// write, with and without WAIT.
func BenchmarkEnqueueReplicas(b *testing.B) {
	serverURL(b)
	// appendfsync everysec, as production servers run, so that the
	// difference is the replica's acknowledgement, not an fsync.
	primary := startServer(b, "--appendfsync", "everysec")
	startServer(b, "--appendfsync", "everysec", "--replicaof", "127.0.0.1", strconv.Itoa(primary.port))
	for _, n := range []int{0, 1} {
		b.Run(fmt.Sprintf("replicas=%d", n), func(b *testing.B) {
			u := fmt.Sprintf("redis://%s/0?prefix=bench%d&replicas=%d", primary.addr(), n, n)
			q, err := docket.Open(context.Background(), u)
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close()
			task := docket.NewTask("bench.noop", func(ctx context.Context, _ struct{}) (struct{}, error) { return struct{}{}, nil }, docket.IgnoreResult())
			if err := q.Register(task); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if _, err := task.Enqueue(context.Background(), q, struct{}{}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
		})
	}
}

// With replicas=1 and no replica in sync, docket acknowledges nothing: an
// enqueue fails with ErrOutcomeUnknown once replica_timeout has passed,
// and the task it wrote to the primary is there to be found by its id.
func TestReplicasUnconfirmedIsOutcomeUnknown(t *testing.T) {
	t.Parallel()
	serverURL(t)
	s := startServer(t)
	ctx := context.Background()
	base := fmt.Sprintf("redis://%s/0?prefix=lonely", s.addr())
	q, err := docket.Open(ctx, base+"&replicas=1&replica_timeout=200ms")
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	task := docket.NewTask("lonely.noop", func(ctx context.Context, _ struct{}) (struct{}, error) { return struct{}{}, nil })
	if err := q.Register(task); err != nil {
		t.Fatal(err)
	}
	_, err = task.Enqueue(ctx, q, struct{}{})
	var unknown *docket.OutcomeUnknownError
	if !errors.As(err, &unknown) || !errors.Is(err, docket.ErrOutcomeUnknown) || len(unknown.IDs) != 1 {
		t.Fatalf("Enqueue without a replica = %v; want an *OutcomeUnknownError", err)
	}
	plain, err := docket.Open(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if in, err := plain.Info(ctx, unknown.IDs[0]); err != nil || in.State != docket.StateReady {
		t.Fatalf("the unconfirmed task: %+v, %v; want it stored, ready", in, err)
	}
}
