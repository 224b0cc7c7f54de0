package docketprom_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/docketprom"
	"github.com/docketq/docket/dockettest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

var bg = context.Background()

// scrape fetches /metrics from a server like the one an application runs,
// and returns its text and each series' value keyed by its exposition
// (name{labels}, labels sorted as the client writes them).
func scrape(t *testing.T, reg *prometheus.Registry) (string, map[string]float64) {
	t.Helper()
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape: %d %v", resp.StatusCode, err)
	}
	series := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		series[line[:i]] = v
	}
	return string(raw), series
}

func TestScrapeAfterSuccessRetryAndFailure(t *testing.T) {
	m := docketprom.New(docketprom.Options{StatsTTL: time.Nanosecond})
	q, clock := dockettest.Open(t, m.Option())
	m.Watch(q)
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)

	task := docket.NewTask("report.build", func(ctx context.Context, mode string) (string, error) {
		tc, _ := docket.FromContext(ctx)
		switch {
		case mode == "fail":
			return "", errors.New("disk full")
		case mode == "flaky" && tc.Attempt == 1:
			return "", errors.New("timeout talking to the API")
		}
		return mode, nil
	}, docket.MaxRetries(1), docket.RetryBackoff(docket.Exponential{Base: time.Second, Max: time.Second}), docket.OnQueue("reports"))
	if err := q.Register(task); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"ok", "ok", "flaky", "fail"} {
		if _, err := task.Enqueue(bg, q, mode); err != nil {
			t.Fatal(err)
		}
	}
	// One task waits 30s past its ETA before a worker takes it.
	if _, err := task.Enqueue(bg, q, "ok", docket.Countdown(time.Minute)); err != nil {
		t.Fatal(err)
	}
	// Still waiting in the backend at scrape time.
	if _, err := task.Enqueue(bg, q, "later", docket.Countdown(time.Hour)); err != nil {
		t.Fatal(err)
	}
	dockettest.Drain(t, q)                          // ok, ok, flaky#1, fail#1
	dockettest.Advance(t, q, clock, 90*time.Second) // flaky#2, fail#2, the ETA task

	text, got := scrape(t, reg)
	const l = `{queue="reports",task="report.build"}`
	want := map[string]float64{
		"docket_tasks_enqueued_total" + l:          6,
		"docket_tasks_started_total" + l:           7,
		"docket_tasks_succeeded_total" + l:         4,
		"docket_tasks_retried_total" + l:           2,
		"docket_tasks_failed_total" + l:            1,
		"docket_task_runtime_seconds_count" + l:    7,
		"docket_task_queue_wait_seconds_count" + l: 5,
		// The first attempts: four started at once, one 30s after its
		// ETA (the fake clock moved 90s; the ETA was 60s away).
		"docket_task_queue_wait_seconds_sum" + l:                                                30,
		`docket_task_queue_wait_seconds_bucket{queue="reports",task="report.build",le="0.005"}`: 4,
		`docket_task_queue_wait_seconds_bucket{queue="reports",task="report.build",le="30"}`:    5,
		`docket_queue_tasks{queue="reports",state="succeeded"}`:                                 4,
		`docket_queue_tasks{queue="reports",state="failed"}`:                                    1,
		`docket_queue_tasks{queue="reports",state="scheduled"}`:                                 1,
		`docket_queue_tasks{queue="reports",state="ready"}`:                                     0,
		`docket_queue_retrying_tasks{queue="reports"}`:                                          0,
		`docket_queue_oldest_ready_age_seconds{queue="reports"}`:                                0,
		`docket_queue_paused{queue="reports"}`:                                                  0,
		"docket_backend_up":                                                                     1,
		"docket_worker_slots":                                                                   0, // Drain runs the tasks; Run is not active
		"docket_worker_busy_slots":                                                              0,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
	for _, absent := range []string{"docket_tasks_cancelled_total" + l, "docket_tasks_lease_lost_total" + l} {
		if _, ok := got[absent]; ok {
			t.Errorf("%s present, though nothing was cancelled or lost", absent)
		}
	}

	// A paused queue with a ready task shows its lag and the pause.
	if err := q.PauseQueue(bg, "reports"); err != nil {
		t.Fatal(err)
	}
	if _, err := task.Enqueue(bg, q, "ok"); err != nil {
		t.Fatal(err)
	}
	clock.Advance(42 * time.Second)
	_, got = scrape(t, reg)
	for k, v := range map[string]float64{
		`docket_queue_paused{queue="reports"}`:                   1,
		`docket_queue_tasks{queue="reports",state="ready"}`:      1,
		`docket_queue_oldest_ready_age_seconds{queue="reports"}`: 42,
	} {
		if got[k] != v {
			t.Errorf("after the pause, %s = %v, want %v", k, got[k], v)
		}
	}
	promtool(t, text)

	// A backend that does not answer: docket_backend_up drops to 0 and the
	// counts are left out rather than reported stale.
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	_, got = scrape(t, reg)
	if got["docket_backend_up"] != 0 {
		t.Errorf("docket_backend_up = %v after Close, want 0", got["docket_backend_up"])
	}
	if _, ok := got[`docket_queue_tasks{queue="reports",state="succeeded"}`]; ok {
		t.Error("counts reported from a backend that did not answer")
	}
}

// promtool lints the exposition with Prometheus's own checker, when it is
// installed (CI installs Debian's prometheus package and requires it).
func promtool(t *testing.T, text string) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool is not installed (apt-get install prometheus)")
		}
		t.Log("promtool not installed; the exposition was not linted")
		return
	}
	cmd := exec.Command(path, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check metrics: %v\n%s\n--- exposition:\n%s", err, out, text)
	}
}

func TestStartedCountsEveryAttemptOnce(t *testing.T) {
	m := docketprom.New(docketprom.Options{})
	q, _ := dockettest.Open(t, m.Option())
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	task := docket.NewTask("t", func(ctx context.Context, n int) (int, error) { return n, nil })
	if err := q.Register(task); err != nil {
		t.Fatal(err)
	}
	if _, err := task.EnqueueMany(bg, q, make([]int, 25)); err != nil {
		t.Fatal(err)
	}
	dockettest.Drain(t, q)
	_, got := scrape(t, reg)
	const l = `{queue="default",task="t"}`
	if got["docket_tasks_enqueued_total"+l] != 25 || got["docket_tasks_started_total"+l] != 25 || got["docket_tasks_succeeded_total"+l] != 25 {
		t.Fatalf("enqueued %v started %v succeeded %v, want 25 each", got["docket_tasks_enqueued_total"+l], got["docket_tasks_started_total"+l], got["docket_tasks_succeeded_total"+l])
	}
	// No Watch: no gauges at all.
	if _, ok := got["docket_backend_up"]; ok {
		t.Error("gauges of a Queue that was not watched")
	}
}
