// Command bench measures docket side by side with other Go job queues:
// River and goqite on the same SQLite driver and settings, asynq on a
// private Redis server, a raw SQLite table as the floor, and, on RabbitMQ,
// docket-amqp against the plain amqp091-go loop. Every measurement of
// every system runs in a fresh process. It prints a markdown table; see
// README.md.
//
//	go run . -runs 3              # everything (about an hour on 2 cores)
//	go run . -quick               # smaller sizes, one run: a smoke test
//	go run . -only drain8,latency # some measurements
//	go run . -systems docket-amqp,amqp091 # RabbitMQ only
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Config holds the settings every measurement shares. The driver hands it
// to each measurement process in its ChildSpec.
type Config struct {
	Scale      Scale         // sizes and durations
	Poll       time.Duration // the peers' poll interval (-poll)
	RedisAddr  string        // Redis for asynq and docket-redis; "" if there is none
	RedisDB    int           // asynq's database (docket-redis uses the one below it)
	RedisNote  string        // why there is no Redis, when RedisAddr is ""
	AMQPURL    string        // RabbitMQ for docket-amqp and amqp091
	SteadyRate int           // tasks/s of the steady row (-steady-rate)
	CPUProfile string        // prefix of each measurement process's CPU profile, or ""
}

// Harness is the driver's or a measurement process's view of a run.
type Harness struct {
	Config
	Runs  int          // repeats of each measurement
	root  string       // where this process's stores go (a measurement process: its own directory)
	log   io.Writer    // progress
	redis *redisServer // the private Redis server, in the driver; nil otherwise
}

// newDir returns a fresh directory for one instance's files; every
// directory is removed after its measurement.
func (h *Harness) newDir() (string, error) {
	return os.MkdirTemp(h.root, "m")
}

// clean removes dir, the stores of one measurement process, which ran on
// s: the files, and for a system whose store lives elsewhere (a
// storeDropper) what it holds there too.
func clean(ctx context.Context, s System, dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		sub := filepath.Join(dir, e.Name())
		if d, ok := s.(storeDropper); ok && e.IsDir() {
			errs = append(errs, d.Drop(ctx, sub))
		}
	}
	errs = append(errs, os.RemoveAll(dir))
	return errors.Join(errs...)
}

// hosts says where the systems that need a server find it.
type hosts struct {
	RedisAddr string // asynq (RedisDB) and docket-redis (RedisDB-1)
	RedisDB   int
	AMQPURL   string // docket-amqp and amqp091
}

// unsupporter is a System that knows up front which measurements do not
// apply to it: Unsupported returns an *NA for those, nil otherwise.
type unsupporter interface {
	Unsupported(measurement string) error
}

// ratioPairs are extra ratio columns shown when both systems are in the
// run and the first is not already the table's baseline: a docket system
// against the peer it is meant to be compared with.
var ratioPairs = [][2]string{{"docket-amqp", "amqp091"}}

// defaultSystems is the -systems default; docket-amqp and amqp091 run only
// when named.
const defaultSystems = "docket,river,goqite,asynq,docket-redis,sqlite-raw"

func systemByName(name string, hs hosts) (System, error) {
	redisAddr, redisDB := hs.RedisAddr, hs.RedisDB
	switch strings.ToLower(name) {
	case "docket":
		return docketSystem{}, nil
	case "river":
		return riverSystem{}, nil
	case "goqite":
		return goqiteSystem{}, nil
	case "asynq":
		return asynqSystem{addr: redisAddr, db: redisDB}, nil
	case "docket-redis":
		return docketRedisSystem{addr: redisAddr, db: redisDB - 1}, nil
	case "sqlite-raw":
		return sqliteRawSystem{}, nil
	case "docket-amqp":
		return docketAMQPSystem{b: amqpBroker{url: hs.AMQPURL}}, nil
	case "amqp091":
		return amqpSystem{b: amqpBroker{url: hs.AMQPURL}}, nil
	}
	return nil, fmt.Errorf("unknown system %q (known: docket, river, goqite, asynq, docket-redis, sqlite-raw, docket-amqp, amqp091)", name)
}

func main() {
	if spec := os.Getenv(childEnv); spec != "" {
		os.Exit(childMain(spec))
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		runs       = flag.Int("runs", 3, "repeats of each measurement (median and min–max are shown)")
		quick      = flag.Bool("quick", false, "small sizes and short windows, 1 run unless -runs is given: a smoke test")
		only       = flag.String("only", "", "comma-separated measurement names to run (default all but claim1m); -list shows them")
		list       = flag.Bool("list", false, "list the measurements and exit")
		systems    = flag.String("systems", defaultSystems, "comma-separated systems (also docket-amqp, amqp091); the first, a docket system, is the ratio baseline")
		poll       = flag.Duration("poll", 5*time.Millisecond, "poll interval given to the peers' fetch loops (docket's cross-process poll is 5ms)")
		claim1m    = flag.Bool("claim1m", false, "also measure claim cost with 1,000,000 pending tasks (slow to set up)")
		steadyRate = flag.Int("steady-rate", 2000, "tasks/s of the steady row's paced producer")
		redisAddr  = flag.String("redis", "", "use this Redis server (host:port) for asynq and docket-redis instead of starting a private redis-server")
		redisDB    = flag.Int("redis-db", 13, "with -redis: asynq's database (docket-redis uses the one below it); each is flushed before its system's measurements")
		amqpURL    = flag.String("amqp", "amqp://guest:guest@127.0.0.1:5672/", "RabbitMQ for docket-amqp and amqp091 (each store is a fresh name prefix, deleted afterwards)")
		dir        = flag.String("dir", "", "where the temporary stores (and the private Redis server's directory) go (default: the system temp dir)")
		cpuprof    = flag.String("cpuprofile", "", "write a CPU profile of each measurement process to PREFIX.MEASUREMENT.SYSTEM.RUN.pprof")
	)
	flag.Parse()
	runsSet := false
	flag.Visit(func(f *flag.Flag) { runsSet = runsSet || f.Name == "runs" })

	h := &Harness{
		Config: Config{Scale: fullScale(), Poll: *poll, AMQPURL: *amqpURL, SteadyRate: *steadyRate, CPUProfile: *cpuprof},
		Runs:   *runs, log: os.Stderr,
	}
	if *quick {
		h.Scale = quickScale()
		if !runsSet {
			h.Runs = 1
		}
	}
	if h.Runs < 1 {
		return errors.New("-runs must be at least 1")
	}
	if h.SteadyRate < 1 {
		return errors.New("-steady-rate must be at least 1")
	}
	all := measurements(h)
	if *list {
		for _, m := range all {
			fmt.Printf("%-12s %s\n", m.Name, m.Metrics[0].Label)
		}
		return nil
	}
	chosen, err := choose(all, *only, *claim1m)
	if err != nil {
		return err
	}
	var names []string
	for _, name := range strings.Split(*systems, ",") {
		names = append(names, strings.TrimSpace(name))
	}
	if !strings.HasPrefix(strings.ToLower(names[0]), "docket") {
		return errors.New("-systems must start with a docket system (docket, docket-redis or docket-amqp: the baseline of the ratios)")
	}
	if h.root, err = os.MkdirTemp(*dir, "docket-bench-"); err != nil {
		return err
	}
	defer os.RemoveAll(h.root)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	needRedis := slices.ContainsFunc(names, func(n string) bool {
		n = strings.ToLower(n)
		return n == "asynq" || n == "docket-redis"
	})
	switch {
	case *redisAddr != "":
		h.RedisAddr, h.RedisDB = *redisAddr, *redisDB
	case needRedis:
		srv, err := startRedis(ctx, h.root)
		if err != nil {
			h.RedisNote = err.Error()
			fmt.Fprintf(h.log, "no private Redis: %v\n", err)
			break
		}
		defer srv.stop()
		h.redis = srv
		h.RedisAddr, h.RedisDB = srv.addr, 1
		fmt.Fprintf(h.log, "private redis-server %s (pid %d) on %s\n", srv.version, srv.pid(), srv.addr)
	}
	var syss []System
	for _, name := range names {
		s, err := systemByName(name, h.hosts())
		if err != nil {
			return err
		}
		syss = append(syss, s)
	}

	unavailable := map[string]error{}
	for _, s := range syss {
		if _, ok := s.(redisUser); ok && h.RedisAddr == "" {
			unavailable[s.Name()] = &NA{Reason: "no Redis: " + h.RedisNote}
		} else if err := s.Available(ctx); err != nil {
			unavailable[s.Name()] = err
		}
		if err := unavailable[s.Name()]; err != nil {
			fmt.Fprintf(h.log, "%s unavailable: %v\n", s.Name(), err)
		}
	}
	t := newTable(syss)
	t.start = time.Now()
	for _, m := range chosen {
		n := h.Runs
		if m.Runs > 0 {
			n = m.Runs
		}
		for r := range n {
			// Alternate: every system once per round, starting with a
			// different one each round.
			for i := range syss {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				s := syss[(i+r)%len(syss)]
				if err := unavailable[s.Name()]; err != nil {
					t.add(m, s, Result{}, err)
					continue
				}
				if u, ok := s.(unsupporter); ok {
					if err := u.Unsupported(m.Name); err != nil {
						t.add(m, s, Result{}, err)
						continue
					}
				}
				t0 := time.Now()
				res, load, err := h.measureInProcess(ctx, m, s, r)
				t.add(m, s, res, err)
				t.addLoad(load)
				fmt.Fprintf(h.log, "[%s %d/%d] %-12s %s (%.1fs, load %s)\n", m.Name, r+1, n, s.Name(), describe(m, res, err), time.Since(t0).Seconds(), load)
			}
		}
	}
	t.end = time.Now()
	fmt.Fprintf(h.log, "done in %s\n", t.end.Sub(t.start).Round(time.Second))
	printReport(os.Stdout, h, t, chosen, syss)
	return nil
}

// measureInProcess runs one measurement of s in a freshly started process
// of this binary, with its own store directory, and removes that directory
// (and for a storeDropper what it holds elsewhere) once the process ended.
// The private Redis server is flushed first.
func (h *Harness) measureInProcess(ctx context.Context, m Measurement, s System, run int) (Result, loadSample, error) {
	dir, err := os.MkdirTemp(h.root, "p")
	if err != nil {
		return Result{}, loadSample{}, err
	}
	if h.redis != nil {
		if err := h.redis.flushAll(ctx); err != nil {
			return Result{}, loadSample{}, errors.Join(err, os.RemoveAll(dir))
		}
	}
	r, err := h.runChild(ctx, ChildSpec{Role: roleMeasure, Measurement: m.Name, System: s.Name(), Dir: dir, Run: run}, measureTimeout+5*time.Minute)
	if cerr := clean(context.WithoutCancel(ctx), s, dir); cerr != nil && err == nil {
		err = fmt.Errorf("clean up: %w", cerr)
	}
	if err != nil {
		return Result{}, r.Load, err
	}
	res := Result{Values: r.Values, Notes: r.Notes, NA: r.NAKeys}
	return res, r.Load, r.error()
}

func (h *Harness) hosts() hosts {
	return hosts{RedisAddr: h.RedisAddr, RedisDB: h.RedisDB, AMQPURL: h.AMQPURL}
}

// choose picks the measurements named in only (all but claim1m when
// empty, plus claim1m with -claim1m).
func choose(all []Measurement, only string, claim1m bool) ([]Measurement, error) {
	if only == "" {
		var out []Measurement
		for _, m := range all {
			if m.Name != "claim1m" || claim1m {
				out = append(out, m)
			}
		}
		return out, nil
	}
	var out []Measurement
	for _, name := range strings.Split(only, ",") {
		name = strings.TrimSpace(name)
		i := slices.IndexFunc(all, func(m Measurement) bool { return m.Name == name })
		if i < 0 {
			return nil, fmt.Errorf("unknown measurement %q (see -list)", name)
		}
		out = append(out, all[i])
	}
	return out, nil
}

func describe(m Measurement, res Result, err error) string {
	if err != nil {
		return "error: " + err.Error()
	}
	var parts []string
	for _, mt := range m.Metrics {
		if v, ok := res.Values[mt.Key]; ok {
			parts = append(parts, mt.Key+"="+formatNum(v*mt.Scale))
		}
	}
	return strings.Join(parts, " ")
}

func measurements(h *Harness) []Measurement {
	sc := h.Scale
	rate := func(label string) []Metric {
		return []Metric{{Key: "rate", Label: label, HigherBetter: true, Scale: 1}}
	}
	ms := []Measurement{
		{Name: "enq1", Metrics: rate("enqueue, 1 goroutine, each call returns after its commit (tasks/s)"),
			Run: func(ctx context.Context, h *Harness, s System) (Result, error) {
				return measureEnqueue(ctx, h, s, 1, 1)
			}},
		{Name: "enq8", Metrics: rate("enqueue, 8 goroutines, each call returns after its commit (tasks/s)"),
			Run: func(ctx context.Context, h *Harness, s System) (Result, error) {
				return measureEnqueue(ctx, h, s, 8, 1)
			}},
		{Name: "batch", Metrics: rate("batch enqueue, 1,000 tasks per call, 1 goroutine (tasks/s)"),
			Run: func(ctx context.Context, h *Harness, s System) (Result, error) {
				return measureEnqueue(ctx, h, s, 1, 1000)
			}},
	}
	for _, c := range []int{1, 8, 64} {
		ms = append(ms, Measurement{
			Name:    fmt.Sprintf("drain%d", c),
			Metrics: rate(fmt.Sprintf("drain %s pre-enqueued no-op tasks at concurrency %d: from starting workers until all ran and are recorded done (tasks/s)", commas(sc.DrainN), c)),
			Run:     func(ctx context.Context, h *Harness, s System) (Result, error) { return measureDrain(ctx, h, s, c) },
		})
	}
	for _, v := range []struct {
		conc    int
		results bool
	}{{8, true}, {64, true}, {8, false}, {64, false}} {
		name, what := fmt.Sprintf("drain2p%d", v.conc), "each result reported to the producer"
		if !v.results {
			name, what = name+"i", "IgnoreResult"
		}
		m := Measurement{
			Name: name,
			Metrics: append(rate(fmt.Sprintf("drain %s tasks at concurrency %d, producer and worker in two processes, %s: from the worker's start until all ran and the producer knows every outcome (tasks/s)", commas(sc.DrainN), v.conc, what)),
				Metric{Key: "lag", Scale: 1, Label: "of that time, after the worker finished until the producer knew every outcome (ms)"},
				Metric{Key: "cpu", Scale: 1, Label: "CPU of that worker process per task, getrusage utime+stime (µs)"},
				Metric{Key: "server", Scale: 1, Label: "CPU of the server per task over the same drain: redis-server's INFO cpu; RabbitMQ's beam.smp from /proc when it runs on this machine (µs)"}),
			Run: func(ctx context.Context, h *Harness, s System) (Result, error) {
				return measureDrain2P(ctx, h, s, v.conc, v.results)
			},
		}
		if v.conc == 64 && v.results {
			m.Metrics = append(m.Metrics,
				Metric{Key: "hwm", Scale: 1.0 / (1 << 20), Label: "peak RSS (VmHWM) of that worker process (MiB)"},
				Metric{Key: "anon", Scale: 1.0 / (1 << 20), Label: "of which private memory (RssAnon: heap, stacks, caches) once all ran (MiB)"},
				Metric{Key: "file", Scale: 1.0 / (1 << 20), Label: "and file pages (RssFile: the binary's code and tables) once all ran (MiB)"})
		}
		ms = append(ms, m)
	}
	ms = append(ms,
		Measurement{Name: "producer", Metrics: []Metric{
			{Key: "hwm", Scale: 1.0 / (1 << 20), Label: fmt.Sprintf("peak RSS of a producer process enqueueing %s tasks from 8 goroutines, nobody waiting, a worker process draining at concurrency 64 (MiB)", commas(sc.ProducerN))},
			{Key: "rate", Scale: 1, HigherBetter: true, Label: "that producer's enqueue rate (tasks/s)"},
		}, Run: func(ctx context.Context, h *Harness, s System) (Result, error) {
			return measureProducer(ctx, h, s, false)
		}},
		Measurement{Name: "producerwait", Metrics: []Metric{
			{Key: "hwm", Scale: 1.0 / (1 << 20), Label: fmt.Sprintf("peak RSS of a producer process of %s tasks whose 8 goroutines each enqueue a task and wait for its result, same worker (MiB)", commas(sc.WaitN))},
			{Key: "rate", Scale: 1, HigherBetter: true, Label: "that producer's rate, enqueue to result (tasks/s)"},
		}, Run: func(ctx context.Context, h *Harness, s System) (Result, error) {
			return measureProducer(ctx, h, s, true)
		}},
	)
	stream := fmt.Sprintf("%d tasks/s for %s, %d workers", sc.LatencyRate, sc.LatencyFor, latencyConcurrency)
	ms = append(ms,
		Measurement{Name: "latency", Metrics: []Metric{
			{Key: "p50", Label: "enqueue-to-start latency p50, producer and workers in one process, " + stream + " (ms)", Scale: 1},
			{Key: "p99", Label: "enqueue-to-start latency p99, same stream (ms)", Scale: 1},
		}, Run: measureLatency},
		Measurement{Name: "latency2p", Metrics: []Metric{
			{Key: "p50", Label: "enqueue-to-start latency p50, producer and workers in two processes on one store, " + stream + " (ms)", Scale: 1},
			{Key: "p99", Label: "enqueue-to-start latency p99, two processes, same stream (ms)", Scale: 1},
		}, Run: measureLatency2P},
		Measurement{Name: "steady", Metrics: []Metric{
			{Key: "rate", HigherBetter: true, Scale: 1, Label: fmt.Sprintf("steady stream: a paced producer holding %s tasks/s for %s into %d workers in one process; tasks run within the window / window (tasks/s)", commas(h.SteadyRate), sc.SteadyFor, latencyConcurrency)},
			{Key: "p99", Scale: 1, Label: "enqueue-to-start latency p99 of that stream, every task counted (ms)"},
			{Key: "store", Scale: 1.0 / (1 << 20), Label: "store size at the window's end: SQLite main file + WAL as they are (no checkpoint); Redis: the server's INFO used_memory (MiB)"},
			{Key: "rss", Scale: 1.0 / (1 << 20), Label: "VmRSS of the measurement process (producer and workers) at the window's end (MiB)"},
		}, Run: measureSteady},
	)
	for _, d := range []int{1_000, 100_000, 1_000_000} {
		m := Measurement{
			Name: "claim" + shortCount(d),
			Metrics: []Metric{{Key: "per", Scale: 1, Label: fmt.Sprintf(
				"claim cost with %s pending: from the first task's start to the %sth's, concurrency 8, per task (µs)", commas(d), commas(min(d, sc.ClaimTasks)))}},
			Run: func(ctx context.Context, h *Harness, s System) (Result, error) { return measureClaim(ctx, h, s, d) },
		}
		if d >= 1_000_000 {
			m.Runs = 1 // filling a million tasks takes minutes per system
			m.Metrics[0].Label = strings.Replace(m.Metrics[0].Label, " (µs)", " (µs; 1 run; only with -claim1m)", 1)
		}
		ms = append(ms, m)
	}
	ms = append(ms,
		Measurement{Name: "flows", Metrics: []Metric{
			{Key: "chain", Scale: 1, Label: fmt.Sprintf("a chain of %s steps, each taking the previous result, concurrency 1: enqueue to result (ms)", commas(sc.ChainN))},
			{Key: "independent", Scale: 1, Label: fmt.Sprintf("%s independent tasks of the same step enqueued in one call, concurrency 1: enqueue to the last result (ms)", commas(sc.ChainN))},
			{Key: "ratio", Scale: 1, Label: "the chain's time over the independent tasks' (×)"},
			{Key: "chord0", Scale: 1, Label: fmt.Sprintf("a chord of %s members and a body that sums them, concurrency 8: enqueue to result, per member (µs)", commas(sc.ChordN[0]))},
			{Key: "chord1", Scale: 1, Label: fmt.Sprintf("the same chord of %s members, per member (µs)", commas(sc.ChordN[1]))},
		}, Run: measureFlows},
		Measurement{Name: "size", Runs: 1, Metrics: []Metric{
			{Key: "per", Scale: 1, Label: fmt.Sprintf("store size per pending task with %s pending: file + WAL after checkpoint(TRUNCATE); Redis systems: MEMORY USAGE summed over their keys (bytes/task; 1 run)", commas(sc.SizeN))},
			{Key: "after", Scale: 1.0 / 1024, Label: "store size after those tasks completed and retention/cleanup ran (KiB; 1 run)"},
		}, Run: measureSize},
		Measurement{Name: "idle", Metrics: []Metric{
			{Key: "cpu", Scale: 1, Label: fmt.Sprintf("CPU of a child process running only idle workers (8), over %s, getrusage utime+stime; peers at -poll %s (%% of one core)", sc.IdleFor, h.Poll)},
			{Key: "redis", Scale: 1, Label: "CPU of redis-server over the same window, INFO cpu (% of one core; Redis systems)"},
		}, Run: func(ctx context.Context, h *Harness, s System) (Result, error) { return measureIdle(ctx, h, s, false) }},
		Measurement{Name: "idledefaults", Metrics: []Metric{
			{Key: "cpu", Scale: 1, Label: "idle worker CPU as above, but every peer at its default poll interval (River 1s + cooldown 100ms, goqite 100ms, asynq 1s) (% of one core)"},
			{Key: "redis", Scale: 1, Label: "CPU of redis-server over that window (% of one core; Redis systems)"},
		}, Run: func(ctx context.Context, h *Harness, s System) (Result, error) { return measureIdle(ctx, h, s, true) }},
	)
	return ms
}

func shortCount(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dm", n/1_000_000)
	case n >= 1_000 && n%1_000 == 0:
		return fmt.Sprintf("%dk", n/1_000)
	}
	return fmt.Sprint(n)
}
