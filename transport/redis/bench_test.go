package redis_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/docketq/docket/transport"
)

// Benchmarks of the transport's hot paths against DOCKET_TEST_REDIS_URL,
// each under its own prefix: the scripts' cost, without docket's worker
// around them. Each reports tasks/s.
//
// With DOCKET_BENCH_SERVER_STATS=1, and a server used by nothing else
// (its statistics are reset), each also reports the server's time in
// scripts per task (srv-µs/task, from INFO commandstats), its process's
// CPU time per task (srv-cpu-µs/task, INFO cpu) and the commands the
// scripts ran per task (cmds/task): figures that the round trips and the
// load of a shared machine disturb far less than tasks/s.

// serverStats resets the server's command statistics and returns a
// function that reports the script time since, per task.
func serverStats(b *testing.B) func(tasks int) {
	if os.Getenv("DOCKET_BENCH_SERVER_STATS") != "1" {
		return func(int) {}
	}
	opts, err := goredis.ParseURL(serverURL(b))
	if err != nil {
		b.Fatal(err)
	}
	c := goredis.NewClient(opts)
	b.Cleanup(func() { c.Close() })
	if err := c.ConfigResetStat(context.Background()).Err(); err != nil {
		b.Fatal(err)
	}
	// cpu is the server process's CPU time so far (getrusage), which a
	// busy machine's preemption does not inflate as it does wall time.
	cpu := func() float64 {
		info, err := c.Info(context.Background(), "cpu").Result()
		if err != nil {
			b.Fatal(err)
		}
		var sec float64
		for _, line := range strings.Split(info, "\n") {
			k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
			if k == "used_cpu_user" || k == "used_cpu_sys" {
				n, _ := strconv.ParseFloat(v, 64)
				sec += n
			}
		}
		return sec
	}
	cpu0 := cpu()
	return func(tasks int) {
		b.ReportMetric((cpu()-cpu0)*1e6/float64(tasks), "srv-cpu-µs/task")
		info, err := c.Info(context.Background(), "commandstats").Result()
		if err != nil {
			b.Fatal(err)
		}
		var usec, calls float64
		var each []string
		for _, line := range strings.Split(info, "\n") {
			name, stats, ok := strings.Cut(strings.TrimSpace(line), ":")
			if !ok || !strings.HasPrefix(name, "cmdstat_") {
				continue
			}
			name = strings.TrimPrefix(name, "cmdstat_")
			for _, f := range strings.Split(stats, ",") {
				k, v, _ := strings.Cut(f, "=")
				n, _ := strconv.ParseFloat(v, 64)
				switch {
				case k == "usec" && (name == "evalsha" || name == "eval"):
					usec += n
				case k == "calls" && name != "evalsha" && name != "eval" && !strings.HasPrefix(name, "config") && name != "info":
					// Commands run by the scripts (and the few the
					// client sends itself, such as SCRIPT LOAD).
					calls += n
					each = append(each, fmt.Sprintf("%s=%.2f", name, n/float64(tasks)))
				}
			}
		}
		b.ReportMetric(usec/float64(tasks), "srv-µs/task")
		b.ReportMetric(calls/float64(tasks), "cmds/task")
		b.Logf("commands per task: %s", strings.Join(each, " "))
	}
}

func benchTransport(b *testing.B) transport.Transport {
	b.Helper()
	u, err := url.Parse(freshURL(b))
	if err != nil {
		b.Fatal(err)
	}
	tr, err := transport.Open(context.Background(), u, transport.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tr.Close() })
	return tr
}

// benchPayload is the tasks' arguments: "{}", or a JSON string of
// DOCKET_BENCH_PAYLOAD bytes (a task hash holding a value over 64 bytes
// is stored by Redis as a hash table rather than a listpack, which
// changes the cost of every access).
func benchPayload() []byte {
	n, _ := strconv.Atoi(os.Getenv("DOCKET_BENCH_PAYLOAD"))
	if n <= 2 {
		return []byte("{}")
	}
	return []byte(`"` + strings.Repeat("x", n-2) + `"`)
}

func benchMessages(from, n int) []transport.Message {
	ms := make([]transport.Message, n)
	pay := benchPayload()
	for i := range ms {
		ms[i] = transport.Message{ID: fmt.Sprintf("b%09d", from+i), Name: "bench.noop", Queue: "default",
			Payload: pay, MaxAttempts: 3, ResultTTL: time.Hour}
	}
	return ms
}

// One task per Enqueue call, one caller.
func BenchmarkEnqueue(b *testing.B) {
	tr := benchTransport(b)
	ctx, now := context.Background(), time.Now()
	i := 0
	report := serverStats(b)
	for b.Loop() {
		if _, err := tr.Enqueue(ctx, transport.EnqueueParams{Now: now, Messages: benchMessages(i, 1)}); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
	report(b.N)
}

// 100 tasks per Enqueue call.
func BenchmarkEnqueueBatch100(b *testing.B) {
	tr := benchTransport(b)
	ctx, now := context.Background(), time.Now()
	i := 0
	report := serverStats(b)
	for b.Loop() {
		if _, err := tr.Enqueue(ctx, transport.EnqueueParams{Now: now, Messages: benchMessages(i, 100)}); err != nil {
			b.Fatal(err)
		}
		i += 100
	}
	b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "tasks/s")
	report(b.N * 100)
}

// Drain b.N pre-enqueued tasks: claim 50 at a time, finish each batch
// (succeeded) in one call.
func BenchmarkDrain(b *testing.B) {
	benchDrain(b, transport.StateSucceeded)
}

// As BenchmarkDrain, but every first attempt fails and is retried at once
// (the retry path: an attempt record and a failure count), then succeeds.
func BenchmarkDrainRetry(b *testing.B) {
	benchDrain(b, transport.StateScheduled)
}

func benchDrain(b *testing.B, first transport.State) {
	tr := benchTransport(b)
	ctx, now := context.Background(), time.Now()
	for i := 0; i < b.N; i += 1000 {
		if _, err := tr.Enqueue(ctx, transport.EnqueueParams{Now: now, Messages: benchMessages(i, min(1000, b.N-i))}); err != nil {
			b.Fatal(err)
		}
	}
	report := serverStats(b)
	b.ResetTimer()
	done := 0
	for done < b.N {
		res, err := tr.Claim(ctx, transport.ClaimParams{Now: now, Owner: "w", Queues: []string{"default"}, Limit: 50, LeaseUntil: now.Add(time.Minute)})
		if err != nil {
			b.Fatal(err)
		}
		if len(res.Deliveries) == 0 {
			b.Fatalf("claimed nothing with %d of %d done", done, b.N)
		}
		items := make([]transport.Outcome, len(res.Deliveries))
		for i, d := range res.Deliveries {
			items[i] = transport.Outcome{Lease: d.Lease(), State: transport.StateSucceeded}
			if d.Attempt == 1 && first == transport.StateScheduled {
				items[i].State, items[i].Error, items[i].RunAt = transport.StateScheduled, "boom", now
			} else {
				done++
			}
		}
		if _, err := tr.Finish(ctx, transport.FinishParams{Now: now, Items: items}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tasks/s")
	report(b.N)
}
