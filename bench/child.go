package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// childEnv names the environment variable that makes the harness binary
// run as a child process: its value is a JSON ChildSpec.
const childEnv = "DOCKET_BENCH_CHILD"

// Child roles.
const (
	roleLatency = "latency" // workers for the two-process latency stream
	roleRSS     = "rss"     // drain N tasks at Concurrency, report peak RSS
	roleIdle    = "idle"    // idle workers, report CPU over Duration
)

// ChildSpec tells a child process what to do.
type ChildSpec struct {
	Role        string        // roleLatency, roleRSS or roleIdle
	System      string        // System.Name
	Dir         string        // the store's directory, prepared by the parent
	Concurrency int           // workers
	N           int           // tasks to expect (latency, rss)
	Duration    time.Duration // measuring window (idle)
	Poll        time.Duration // Options.Poll
	RedisAddr   string        // for asynq
	RedisDB     int           // for asynq
	AMQPURL     string        // for docket-amqp and amqp091
	// PeerDefaults runs the peers with their own default poll intervals
	// instead of the harness's -poll.
	PeerDefaults bool
}

// childResult is the child's last line on stdout, after "result ".
type childResult struct {
	Values map[string]float64 `json:"values"`
	Err    string             `json:"err,omitempty"`
}

// child is a running child process as seen by the parent.
type child struct {
	cmd    *exec.Cmd
	lines  chan string
	exited chan error
}

func (h *Harness) startChild(ctx context.Context, spec ChildSpec) (*child, error) {
	spec.Poll, spec.RedisAddr, spec.RedisDB, spec.AMQPURL = h.Poll, h.RedisAddr, h.RedisDB, h.AMQPURL
	if spec.PeerDefaults {
		spec.Poll = 0
	}
	raw, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), childEnv+"="+string(raw))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, lines: make(chan string, 16), exited: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
		c.exited <- cmd.Wait()
	}()
	return c, nil
}

// waitLine waits for the child to print want on a line of its own.
func (c *child) waitLine(want string, timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				return fmt.Errorf("child exited before %q: %v", want, <-c.exited)
			}
			if l == want {
				return nil
			}
			if strings.HasPrefix(l, "result ") {
				return fmt.Errorf("child finished before %q: %s", want, l)
			}
		case <-deadline:
			return fmt.Errorf("child did not print %q within %s", want, timeout)
		}
	}
}

// result waits for the child's result line and for it to exit.
func (c *child) result(timeout time.Duration) (map[string]float64, error) {
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				return nil, fmt.Errorf("child exited without a result: %v", <-c.exited)
			}
			raw, found := strings.CutPrefix(l, "result ")
			if !found {
				continue
			}
			var r childResult
			if err := json.Unmarshal([]byte(raw), &r); err != nil {
				return nil, fmt.Errorf("child result: %w", err)
			}
			for range c.lines {
			}
			if err := <-c.exited; err != nil {
				return nil, fmt.Errorf("child: %w", err)
			}
			if r.Err != "" {
				return nil, errors.New(r.Err)
			}
			return r.Values, nil
		case <-deadline:
			return nil, fmt.Errorf("child gave no result within %s", timeout)
		}
	}
}

// kill ends the child if it is still running (a no-op once it exited).
func (c *child) kill() {
	_ = c.cmd.Process.Kill() // os.ErrProcessDone once it exited
}

// childMain runs the role named in spec and prints its result.
func childMain(rawSpec string) int {
	var spec ChildSpec
	var r childResult
	if err := json.Unmarshal([]byte(rawSpec), &spec); err != nil {
		r.Err = err.Error()
	} else {
		r.Values, err = runChild(spec)
		if err != nil {
			r.Err = fmt.Sprintf("%s child of %s: %v", spec.Role, spec.System, err)
		}
	}
	raw, err := json.Marshal(r)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("result %s\n", raw)
	return 0
}

func runChild(spec ChildSpec) (map[string]float64, error) {
	ctx := context.Background()
	s, err := systemByName(spec.System, hosts{RedisAddr: spec.RedisAddr, RedisDB: spec.RedisDB, AMQPURL: spec.AMQPURL})
	if err != nil {
		return nil, err
	}
	o := Options{Dir: spec.Dir, Concurrency: spec.Concurrency, Poll: spec.Poll}
	switch spec.Role {
	case roleLatency:
		rec := newLatencyRecorder(spec.N)
		o.Handler = rec.handle
		inst, err := s.Open(ctx, o)
		if err != nil {
			return nil, err
		}
		defer inst.Close()
		if err := inst.Start(ctx); err != nil {
			return nil, err
		}
		fmt.Println("ready")
		select {
		case <-rec.done:
		case <-time.After(5 * time.Minute):
		}
		p50, p99, got := rec.percentiles()
		if got < spec.N {
			return nil, fmt.Errorf("only %d of %d tasks started", got, spec.N)
		}
		return map[string]float64{"p50": p50, "p99": p99}, inst.Stop(ctx)

	case roleRSS:
		var ran atomic.Int64
		done := make(chan struct{})
		o.Handler = func(int64) {
			if ran.Add(1) == int64(spec.N) {
				close(done)
			}
		}
		inst, err := s.Open(ctx, o)
		if err != nil {
			return nil, err
		}
		defer inst.Close()
		if err := inst.Start(ctx); err != nil {
			return nil, err
		}
		select {
		case <-done:
		case <-time.After(10 * time.Minute):
			return nil, fmt.Errorf("only %d of %d tasks ran", ran.Load(), spec.N)
		}
		poll, err := waitDone(ctx, inst, time.Millisecond)
		if err != nil {
			return nil, err
		}
		if poll != nil {
			fmt.Fprintln(os.Stderr, poll.Note(spec.System+" rss child"))
		}
		if err := inst.Stop(ctx); err != nil {
			return nil, err
		}
		hwm, err := procStatusKiB("VmHWM")
		if err != nil {
			return nil, err
		}
		return map[string]float64{"hwm": float64(hwm) * 1024}, nil

	case roleIdle:
		inst, err := s.Open(ctx, o)
		if err != nil {
			return nil, err
		}
		defer inst.Close()
		if err := inst.Start(ctx); err != nil {
			return nil, err
		}
		time.Sleep(time.Second) // let start-up work finish
		t0, err := cpuTime()
		if err != nil {
			return nil, err
		}
		w0 := time.Now()
		fmt.Println("measuring")
		time.Sleep(spec.Duration)
		t1, err := cpuTime()
		if err != nil {
			return nil, err
		}
		wall := time.Since(w0)
		return map[string]float64{"cpu": 100 * (t1 - t0).Seconds() / wall.Seconds()}, inst.Stop(ctx)
	}
	return nil, fmt.Errorf("unknown role %q", spec.Role)
}

// cpuTime is this process's user plus system CPU time so far.
func cpuTime() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// procStatusKiB reads a "Name: N kB" field of /proc/self/status.
func procStatusKiB(field string) (int64, error) {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for line := range bytes.Lines(raw) {
		rest, ok := bytes.CutPrefix(line, []byte(field+":"))
		if !ok {
			continue
		}
		f := strings.Fields(string(rest))
		if len(f) < 1 {
			break
		}
		return strconv.ParseInt(f[0], 10, 64)
	}
	return 0, fmt.Errorf("no %s in /proc/self/status", field)
}

// redisCPU is the Redis server's used_cpu_user + used_cpu_sys in seconds.
func redisCPU(ctx context.Context, a asynqSystem) (float64, error) {
	c := a.redis()
	defer c.Close()
	info, err := c.Info(ctx, "cpu").Result()
	if err != nil {
		return 0, err
	}
	var total float64
	for line := range strings.Lines(info) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_user" || k == "used_cpu_sys") {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return 0, err
			}
			total += f
		}
	}
	return total, nil
}
