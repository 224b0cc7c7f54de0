package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestServiceMetricsTracesProbes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	exp := tracetest.NewInMemoryExporter()
	var logs logBuffer
	s, err := Open(ctx, "memory:", sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp)), &logs)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Queue.Close()
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- s.Queue.Run(runCtx) }()
	defer func() { stop(); <-ran }()
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()

	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	var ids []string
	for _, n := range []string{"1", "5", "-1"} {
		resp, err := http.Post(srv.URL+"/reports?n="+n, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST n=%s: %d %s", n, resp.StatusCode, body)
		}
		ids = append(ids, strings.TrimSpace(string(body)))
	}
	for _, id := range ids {
		// Every task ends: report 5 after one retry, report -1 failed.
		if _, err := BuildReport.ResultOf(s.Queue, id).Wait(ctx); err != nil && !strings.Contains(err.Error(), "does not exist") {
			t.Fatalf("task %s: %v", id, err)
		}
	}
	// A Wait can return as soon as the outcome is committed (another
	// goroutine sees the commit), a moment before the worker counts it:
	// scrape until the last count shows, for up to a minute.
	var metrics string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		code, body := get("/metrics")
		if code != 200 {
			t.Fatalf("/metrics: %d", code)
		}
		metrics = body
		if strings.Contains(metrics, `docket_tasks_succeeded_total{queue="default",task="reports.build"} 2`+"\n") || time.Now().After(deadline) {
			break
		}
	}
	for _, want := range []string{
		`docket_tasks_enqueued_total{queue="default",task="reports.build"} 3`,
		`docket_tasks_succeeded_total{queue="default",task="reports.build"} 2`,
		`docket_tasks_retried_total{queue="default",task="reports.build"} 1`,
		`docket_tasks_failed_total{queue="default",task="reports.build"} 1`,
		`docket_queue_tasks{queue="default",state="succeeded"} 2`,
		`docket_worker_slots 10`,
		`docket_backend_up 1`,
	} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if code, body := get("/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := get("/readyz"); code != 200 || body != "ok\n" {
		t.Errorf("/readyz: %d %q", code, body)
	}
	// Spans: three requests, three sends, four attempts (report 5 ran
	// twice), one trace per request.
	byName := map[string]int{}
	traces := map[string]bool{}
	for _, sp := range exp.GetSpans() {
		byName[sp.Name]++
		traces[sp.SpanContext.TraceID().String()] = true
	}
	if byName["POST /reports"] != 3 || byName["send default"] != 3 || byName["process default"] != 4 || len(traces) != 3 {
		t.Errorf("spans %v in %d traces", byName, len(traces))
	}
	// The handler's own log line carries its task.
	if !strings.Contains(logs.String(), `"msg":"building report","n":5,"task":{"id":"`+ids[1]+`","name":"reports.build","queue":"default","attempt":2}`) {
		t.Errorf("logs lack the handler's line with its task:\n%s", logs.String())
	}
}
