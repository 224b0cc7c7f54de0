package main

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
	"time"

	"github.com/redis/go-redis/v9"
)

// redisServer is the private redis-server the driver starts for asynq and
// docket-redis: on a free port of 127.0.0.1, without persistence, in its
// own directory, used by nothing else and stopped at the end of the run.
type redisServer struct {
	cmd     *exec.Cmd
	addr    string
	port    int
	version string
	exited  chan struct{}
}

// startRedis starts redis-server from PATH with its working directory in a
// new directory under root.
func startRedis(ctx context.Context, root string) (*redisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server not found on PATH: %w", err)
	}
	dir, err := os.MkdirTemp(root, "redis-")
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin,
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(port),
		"--save", "",
		"--appendonly", "no",
		"--dir", dir,
		"--logfile", filepath.Join(dir, "redis.log"),
		"--daemonize", "no",
	)
	// Its own process group: an interrupt of the harness reaches the
	// harness, which then stops the server itself.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start redis-server: %w", err)
	}
	s := &redisServer{cmd: cmd, port: port, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), exited: make(chan struct{})}
	go func() { cmd.Wait(); close(s.exited) }()
	c := redis.NewClient(&redis.Options{Addr: s.addr})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := c.Ping(pctx).Err()
		cancel()
		if err == nil {
			break
		}
		select {
		case <-s.exited:
			log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
			return nil, fmt.Errorf("redis-server exited at start: %s", strings.TrimSpace(string(log)))
		default:
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("redis-server on %s did not answer within 10s: %w", s.addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	info, err := infoOf(ctx, c, "server")
	if err != nil {
		s.stop()
		return nil, err
	}
	s.version = info["redis_version"]
	return s, nil
}

// freePort asks the kernel for a free TCP port on 127.0.0.1.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *redisServer) pid() int { return s.cmd.Process.Pid }

// flushAll empties every database of the private server.
func (s *redisServer) flushAll(ctx context.Context) error {
	c := redis.NewClient(&redis.Options{Addr: s.addr})
	defer c.Close()
	return c.FlushAll(ctx).Err()
}

// stop ends the server the driver started (SIGTERM, SIGKILL after 10 s)
// and waits for it.
func (s *redisServer) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// redisUser is a System whose store is a Redis database.
type redisUser interface {
	redisClient() *redis.Client
}

// redisInfo returns the fields of one INFO section of u's server.
func redisInfo(ctx context.Context, u redisUser, section string) (map[string]string, error) {
	c := u.redisClient()
	defer c.Close()
	return infoOf(ctx, c, section)
}

func infoOf(ctx context.Context, c *redis.Client, section string) (map[string]string, error) {
	raw, err := c.Info(ctx, section).Result()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for line := range strings.Lines(raw) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			out[k] = v
		}
	}
	if len(out) == 0 {
		return nil, errors.New("empty INFO " + section)
	}
	return out, nil
}

// redisUsedMemory is the server's INFO memory used_memory in bytes: with
// the private server, everything the system under test keeps in Redis
// plus the server's own small base.
func redisUsedMemory(ctx context.Context, u redisUser) (int64, error) {
	info, err := redisInfo(ctx, u, "memory")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(info["used_memory"], 10, 64)
}
