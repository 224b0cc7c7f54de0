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
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// childEnv names the environment variable that makes the harness binary
// run as a child process: its value is a JSON ChildSpec. The driver starts
// one for every measurement of every system (roleMeasure); a measurement
// that needs a second process (latency2p, the drain2p rows, producer,
// producerwait, idle) starts one more from there with one of the other
// roles.
const childEnv = "DOCKET_BENCH_CHILD"

// Child roles.
const (
	roleMeasure = "measure" // run one measurement of one system once
	roleLatency = "latency" // workers for the two-process latency stream
	roleDrain   = "drain"   // drain N tasks at Concurrency, report the rate and peak RSS
	roleIdle    = "idle"    // idle workers, report CPU over Duration
)

// measureTimeout bounds one measurement inside its process.
const measureTimeout = 20 * time.Minute

// ChildSpec tells a child process what to do.
type ChildSpec struct {
	Role   string // roleMeasure, roleLatency, roleRSS or roleIdle
	Config Config // the run's settings
	// Measurement names the measurement to run (roleMeasure).
	Measurement string
	// Run is the round, counted from 0 (roleMeasure; it names the CPU
	// profile).
	Run int
	// System is the System.Name.
	System string
	// Dir is, for roleMeasure, a fresh directory for the measurement's
	// stores; for the other roles the store's directory, prepared by the
	// parent.
	Dir         string
	Concurrency int           // workers
	N           int           // tasks to expect (latency, drain)
	Duration    time.Duration // measuring window (idle)
	// PeerDefaults runs the peers with their own default poll intervals
	// instead of the harness's -poll.
	PeerDefaults bool
	// Results is Options.Results of the child's instance.
	Results bool
}

// loadSample is the 1-minute load average (/proc/loadavg) when a
// measurement process started and when it ended.
type loadSample struct {
	Start float64 `json:"start"`
	End   float64 `json:"end"`
	OK    bool    `json:"ok"`
}

func (l loadSample) String() string {
	if !l.OK {
		return "?"
	}
	return fmt.Sprintf("%.2f→%.2f", l.Start, l.End)
}

// childResult is the child's last line on stdout, after "result ".
type childResult struct {
	Values map[string]float64 `json:"values"`
	Notes  []string           `json:"notes,omitempty"`
	NAKeys map[string]string  `json:"na_keys,omitempty"` // Result.NA
	// Err is the error of the measurement or role; with NA set it is the
	// reason the measurement does not apply.
	Err  string     `json:"err,omitempty"`
	NA   bool       `json:"na,omitempty"`
	Load loadSample `json:"load"` // roleMeasure only
}

// error returns the child's error, an *NA for a measurement that does not
// apply, or nil.
func (r childResult) error() error {
	switch {
	case r.Err == "":
		return nil
	case r.NA:
		return &NA{Reason: r.Err}
	}
	return errors.New(r.Err)
}

// setErr records err in r.
func (r *childResult) setErr(err error, prefix string) {
	if err == nil {
		return
	}
	var na *NA
	if errors.As(err, &na) {
		r.Err, r.NA = na.Reason, true
		return
	}
	r.Err = prefix + err.Error()
}

// child is a running child process as seen by the parent.
type child struct {
	cmd    *exec.Cmd
	lines  chan string
	exited chan error
}

// startChild starts this binary as a child process running spec, with the
// harness's settings.
func (h *Harness) startChild(ctx context.Context, spec ChildSpec) (*child, error) {
	spec.Config = h.Config
	if spec.PeerDefaults {
		spec.Config.Poll = 0
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

// runChild starts a child process for spec and waits for its result.
func (h *Harness) runChild(ctx context.Context, spec ChildSpec, timeout time.Duration) (childResult, error) {
	c, err := h.startChild(ctx, spec)
	if err != nil {
		return childResult{}, err
	}
	defer c.kill()
	return c.result(timeout)
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

// result waits for the child's result line and for it to exit. The error
// is the process's (no result, a crash); the role's own error is in the
// childResult.
func (c *child) result(timeout time.Duration) (childResult, error) {
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				return childResult{}, fmt.Errorf("child exited without a result: %v", <-c.exited)
			}
			raw, found := strings.CutPrefix(l, "result ")
			if !found {
				continue
			}
			var r childResult
			if err := json.Unmarshal([]byte(raw), &r); err != nil {
				return childResult{}, fmt.Errorf("child result: %w", err)
			}
			for range c.lines {
			}
			if err := <-c.exited; err != nil {
				return r, fmt.Errorf("child: %w", err)
			}
			return r, nil
		case <-deadline:
			return childResult{}, fmt.Errorf("child gave no result within %s", timeout)
		}
	}
}

// values waits for the child's result and returns its values or error.
func (c *child) values(timeout time.Duration) (map[string]float64, error) {
	r, err := c.result(timeout)
	if err != nil {
		return nil, err
	}
	return r.Values, r.error()
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
	} else if spec.Role == roleMeasure {
		r = measureChild(spec)
	} else {
		r.Values, err = runChild(spec)
		r.setErr(err, fmt.Sprintf("%s child of %s: ", spec.Role, spec.System))
	}
	raw, err := json.Marshal(r)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("result %s\n", raw)
	return 0
}

// measureChild runs one measurement of one system in this process, which
// the driver started for it alone, and notes the machine's load when it
// started and ended.
func measureChild(spec ChildSpec) (r childResult) {
	l0, err0 := loadAvg1()
	defer func() {
		l1, err1 := loadAvg1()
		r.Load = loadSample{Start: l0, End: l1, OK: err0 == nil && err1 == nil}
	}()
	h := &Harness{Config: spec.Config, Runs: 1, root: spec.Dir, log: os.Stderr}
	ms := measurements(h)
	i := slices.IndexFunc(ms, func(m Measurement) bool { return m.Name == spec.Measurement })
	if i < 0 {
		r.Err = fmt.Sprintf("unknown measurement %q", spec.Measurement)
		return r
	}
	m := ms[i]
	s, err := systemByName(spec.System, h.hosts())
	if err != nil {
		r.Err = err.Error()
		return r
	}
	stop, err := startProfile(spec.Config.CPUProfile, fmt.Sprintf("%s.%s.%d", m.Name, s.Name(), spec.Run+1))
	if err != nil {
		r.Err = err.Error()
		return r
	}
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), measureTimeout)
	defer cancel()
	res, err := m.Run(ctx, h, s)
	r.Values, r.Notes, r.NAKeys = res.Values, res.Notes, res.NA
	r.setErr(err, "")
	return r
}

// startProfile starts a CPU profile of this process into
// PREFIX.NAME.pprof if prefix is set, and returns the function that ends
// it.
func startProfile(prefix, name string) (stop func(), err error) {
	if prefix == "" {
		return func() {}, nil
	}
	f, err := os.Create(prefix + "." + name + ".pprof")
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// loadAvg1 is the machine's 1-minute load average from /proc/loadavg.
func loadAvg1() (float64, error) {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(raw))
	if len(f) == 0 {
		return 0, errors.New("empty /proc/loadavg")
	}
	return strconv.ParseFloat(f[0], 64)
}

func runChild(spec ChildSpec) (map[string]float64, error) {
	ctx := context.Background()
	s, err := systemByName(spec.System, hosts{RedisAddr: spec.Config.RedisAddr, RedisDB: spec.Config.RedisDB, AMQPURL: spec.Config.AMQPURL})
	if err != nil {
		return nil, err
	}
	o := Options{Dir: spec.Dir, Concurrency: spec.Concurrency, Poll: spec.Config.Poll, Results: spec.Results}
	// A worker process's profile is named after its role, its system and
	// its pid (the measurement process's name is not known here).
	stop, err := startProfile(spec.Config.CPUProfile, fmt.Sprintf("%s.%s.%d", spec.Role, spec.System, os.Getpid()))
	if err != nil {
		return nil, err
	}
	defer stop()
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

	case roleDrain:
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
		cpu0, err := cpuTime()
		if err != nil {
			return nil, err
		}
		t0 := time.Now()
		if err := inst.Start(ctx); err != nil {
			return nil, err
		}
		fmt.Println("started")
		select {
		case <-done:
		case <-time.After(10 * time.Minute):
			return nil, fmt.Errorf("only %d of %d tasks ran", ran.Load(), spec.N)
		}
		poll, err := waitDone(ctx, inst, time.Millisecond)
		if err != nil {
			return nil, err
		}
		end := time.Now()
		cpu1, err := cpuTime()
		if err != nil {
			return nil, err
		}
		fmt.Println("ran")
		if poll != nil {
			fmt.Fprintln(os.Stderr, poll.Note(spec.System+" drain child"))
		}
		// The split of resident memory before the workers stop: private
		// memory (heap, stacks, caches) and pages of files (the binary's
		// code and tables, mapped files).
		anon, aerr := procStatusKiB("RssAnon")
		file, ferr := procStatusKiB("RssFile")
		if err := inst.Stop(ctx); err != nil {
			return nil, err
		}
		hwm, err := procStatusKiB("VmHWM")
		if err := errors.Join(err, aerr, ferr); err != nil {
			return nil, err
		}
		return map[string]float64{
			"rate": tasksPerSec(spec.N, end.Sub(t0)),
			"cpu":  float64(cpu1-cpu0) / float64(time.Microsecond) / float64(spec.N),
			"hwm":  float64(hwm) * 1024, "anon": float64(anon) * 1024, "file": float64(file) * 1024,
		}, nil

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
func redisCPU(ctx context.Context, u redisUser) (float64, error) {
	info, err := redisInfo(ctx, u, "cpu")
	if err != nil {
		return 0, err
	}
	var total float64
	for _, k := range []string{"used_cpu_user", "used_cpu_sys"} {
		v, ok := info[k]
		if !ok {
			return 0, fmt.Errorf("no %s in INFO cpu", k)
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, err
		}
		total += f
	}
	return total, nil
}
