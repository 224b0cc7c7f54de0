package redistest

import (
	"context"
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
)

// Server is a private redis-server started by a test, on its own port and
// directory, with the append-only file on. Only its own process is ever
// killed.
type Server struct {
	t    testing.TB
	Port int
	Args []string // more redis-server arguments, used by the next Start
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

// StartServer starts a server with more redis-server arguments. It skips
// the test unless DOCKET_TEST_REDIS_URL is set (broker tests are opt-in)
// and kills the server when the test ends.
func StartServer(t testing.TB, args ...string) *Server {
	t.Helper()
	if os.Getenv("DOCKET_TEST_REDIS_URL") == "" {
		t.Skip("DOCKET_TEST_REDIS_URL is not set; skipping the Redis suite")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server not installed")
	}
	s := &Server{t: t, Port: FreePort(t), dir: t.TempDir(), Args: args}
	s.Start()
	t.Cleanup(s.Kill)
	return s
}

// Start starts the server and waits until it answers.
func (s *Server) Start() {
	s.t.Helper()
	s.cmd = exec.Command("redis-server", "--port", strconv.Itoa(s.Port), "--bind", "127.0.0.1",
		"--dir", s.dir, "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
		"--enable-debug-command", "yes")
	s.cmd.Args = append(s.cmd.Args, s.Args...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	c := goredis.NewClient(&goredis.Options{Addr: s.Addr()})
	defer c.Close()
	for i := 0; ; i++ {
		if c.Ping(context.Background()).Err() == nil {
			return
		}
		if i > 200 {
			s.t.Fatal("private redis-server did not start")
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// Kill sends the server SIGKILL.
func (s *Server) Kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGKILL)
		s.cmd.Wait()
		s.cmd = nil
	}
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return fmt.Sprintf("127.0.0.1:%d", s.Port) }

// Sentinels is a private Redis primary, one replica and three Sentinels
// that watch them under the name "docket", each on its own port. Only the
// processes it started are ever killed.
type Sentinels struct {
	t     testing.TB
	nodes []*Server
	ports []int
}

// StartSentinels starts the primary, the replica and the Sentinels, and
// waits until the Sentinels see each other and the replica.
func StartSentinels(t testing.TB) *Sentinels {
	t.Helper()
	primary := StartServer(t)
	replica := StartServer(t, "--replicaof", "127.0.0.1", strconv.Itoa(primary.Port))
	g := &Sentinels{t: t, nodes: []*Server{primary, replica}}
	g.waitReplicated(primary.Addr())
	for range 3 {
		port, dir := FreePort(t), t.TempDir()
		conf := filepath.Join(dir, "sentinel.conf")
		body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor docket 127.0.0.1 %d 2\n"+
			"sentinel down-after-milliseconds docket 3000\nsentinel failover-timeout docket 10000\n", port, dir, primary.Port)
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

// URL is docket's URL for the group: go-redis's failover URL, with the
// Sentinels as its host and addr parameters, and more parameters.
func (g *Sentinels) URL(params string) string {
	return fmt.Sprintf("redis://127.0.0.1:%d/0?master_name=docket&addr=127.0.0.1:%d&addr=127.0.0.1:%d&%s",
		g.ports[0], g.ports[1], g.ports[2], params)
}

// Master asks a Sentinel for the primary's address.
func (g *Sentinels) Master() string {
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
func (g *Sentinels) until(what string, cond func() bool) {
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
func (g *Sentinels) waitReplicated(addr string) {
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
		if m := g.Master(); m != "" {
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

// Failover SIGKILLs the primary, waits for the Sentinels to promote the
// replica, starts the killed server again (the Sentinels make it the new
// primary's replica) and waits for it to catch up. It returns when the
// primary was killed and when the Sentinels named the replica primary:
// what the killed primary had not replicated by the first is gone, and a
// client's writes go to the new primary from the second on.
func (g *Sentinels) Failover() (killed, promoted time.Time) {
	g.t.Helper()
	old := g.Master()
	var victim *Server
	for _, n := range g.nodes {
		if n.Addr() == old {
			victim = n
		}
	}
	if victim == nil {
		g.t.Fatalf("the Sentinels name %q as the primary, which is none of ours", old)
	}
	killed = time.Now()
	victim.Kill()
	g.until("the Sentinels to promote the replica", func() bool { m := g.Master(); return m != "" && m != old })
	promoted = time.Now()
	g.t.Logf("primary %s killed; %s promoted after %s", old, g.Master(), promoted.Sub(killed).Round(time.Millisecond))
	victim.Args = nil // the Sentinels make it a replica
	victim.Start()
	g.waitReplicated(g.Master())
	return killed, promoted
}
