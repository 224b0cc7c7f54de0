package docketotel_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/docketotel"
	"github.com/docketq/docket/dockettest"
	"github.com/docketq/docket/internal/amqptest"
	"github.com/docketq/docket/internal/redistest"
	_ "github.com/docketq/docket/transport/all"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

var bg = context.Background()

// span is what the worker process reports of each span it ended.
type span struct {
	Name     string
	Kind     string
	TraceID  string
	SpanID   string
	Parent   string
	Links    []string // span ids
	LinkTr   []string // trace ids
	Attrs    map[string]string
	Status   string
	ErrorMsg string
}

func spansOf(stubs tracetest.SpanStubs) []span {
	var out []span
	for _, s := range stubs {
		sp := span{
			Name: s.Name, Kind: s.SpanKind.String(), TraceID: s.SpanContext.TraceID().String(),
			SpanID: s.SpanContext.SpanID().String(), Attrs: map[string]string{}, Status: s.Status.Code.String(), ErrorMsg: s.Status.Description,
		}
		if s.Parent.IsValid() {
			sp.Parent = s.Parent.SpanID().String()
		}
		for _, l := range s.Links {
			sp.Links = append(sp.Links, l.SpanContext.SpanID().String())
			sp.LinkTr = append(sp.LinkTr, l.SpanContext.TraceID().String())
		}
		for _, a := range s.Attributes {
			sp.Attrs[string(a.Key)] = a.Value.Emit()
		}
		out = append(out, sp)
	}
	return out
}

// The worker process: DOCKETOTEL_WORKER names the backend, DOCKETOTEL_QUEUE
// the queue, DOCKETOTEL_SPANS the file to write its spans to. It runs one
// task, whose first attempt fails, then exits.
func TestMain(m *testing.M) {
	if u := os.Getenv("DOCKETOTEL_WORKER"); u != "" {
		if err := worker(u, os.Getenv("DOCKETOTEL_QUEUE"), os.Getenv("DOCKETOTEL_SPANS")); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func traced(queue string, done chan struct{}) *docket.Task[string, string] {
	return docket.NewTask("signup.welcome", func(ctx context.Context, to string) (string, error) {
		tc, _ := docket.FromContext(ctx)
		if tc.Attempt == 1 {
			return "", errors.New("smtp: 421 try again later")
		}
		if done != nil {
			close(done)
		}
		return "sent to " + to, nil
	}, docket.OnQueue(queue), docket.MaxRetries(2), docket.RetryBackoff(docket.Exponential{Base: 10 * time.Millisecond, Max: 10 * time.Millisecond}))
}

func worker(rawURL, queue, out string) error {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	tel, err := docketotel.New(docketotel.Options{TracerProvider: tp, MeterProvider: sdkmetric.NewMeterProvider()})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(bg, 60*time.Second)
	defer cancel()
	q, err := docket.Open(ctx, rawURL, tel.Option(), docket.Queues(map[string]int{queue: 1}))
	if err != nil {
		return err
	}
	defer q.Close()
	done := make(chan struct{})
	if err := q.Register(traced(queue, done)); err != nil {
		return err
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	ran := make(chan error, 1)
	go func() { ran <- q.Run(runCtx) }()
	select {
	case <-done:
	case <-ctx.Done():
		return errors.New("the task did not succeed in time")
	}
	stop()
	if err := <-ran; err != nil {
		return err
	}
	raw, err := json.Marshal(spansOf(exp.GetSpans()))
	if err != nil {
		return err
	}
	return os.WriteFile(out, raw, 0o600)
}

// testAcrossProcesses: a request span in this process enqueues a task;
// a worker in another OS process runs it (a failed attempt, then a
// retry). One trace: request → send → process, process; each process
// span links to the send span.
func testAcrossProcesses(t *testing.T, rawURL, queue string, opts ...docket.Option) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	tel, err := docketotel.New(docketotel.Options{TracerProvider: tp, MeterProvider: sdkmetric.NewMeterProvider()})
	if err != nil {
		t.Fatal(err)
	}
	q, err := docket.Open(bg, rawURL, append(opts, tel.Option())...)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	task := traced(queue, nil)
	if err := q.Register(task); err != nil {
		t.Fatal(err)
	}
	ctx, req := tp.Tracer("app").Start(bg, "POST /signup", trace.WithSpanKind(trace.SpanKindServer))
	res, err := task.Enqueue(ctx, q, "ann@example.com")
	req.End()
	if err != nil {
		t.Fatal(err)
	}

	out := filepath.Join(t.TempDir(), "spans.json")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "DOCKETOTEL_WORKER="+rawURL, "DOCKETOTEL_QUEUE="+queue, "DOCKETOTEL_SPANS="+out)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("worker process: %v\n%s", err, msg)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var worker []span
	if err := json.Unmarshal(raw, &worker); err != nil {
		t.Fatal(err)
	}

	here := spansOf(exp.GetSpans())
	if len(here) != 2 {
		t.Fatalf("producer process spans: %+v", here)
	}
	send, request := here[0], here[1]
	if request.Name != "POST /signup" || send.Name != "send "+queue || send.Kind != "producer" {
		t.Fatalf("producer spans: %+v", here)
	}
	if send.TraceID != request.TraceID || send.Parent != request.SpanID {
		t.Fatalf("send span not in the request's trace: %+v / %+v", send, request)
	}
	for k, v := range map[string]string{
		"messaging.system": "docket", "messaging.operation.type": "send", "messaging.operation.name": "enqueue",
		"messaging.destination.name": queue, "messaging.message.id": res.ID(), "docket.task.name": "signup.welcome",
	} {
		if send.Attrs[k] != v {
			t.Errorf("send span %s = %q, want %q", k, send.Attrs[k], v)
		}
	}
	if len(worker) != 2 {
		t.Fatalf("worker spans: %+v", worker)
	}
	for i, p := range worker {
		attempt := fmt.Sprint(i + 1)
		if p.Name != "process "+queue || p.Kind != "consumer" {
			t.Errorf("attempt %s: %s %s", attempt, p.Name, p.Kind)
		}
		if p.TraceID != request.TraceID || p.Parent != send.SpanID {
			t.Errorf("attempt %s: trace %s parent %s, want trace %s parent %s (the send span)", attempt, p.TraceID, p.Parent, request.TraceID, send.SpanID)
		}
		if len(p.Links) != 1 || p.Links[0] != send.SpanID || p.LinkTr[0] != send.TraceID {
			t.Errorf("attempt %s: links %v, want the send span %s", attempt, p.Links, send.SpanID)
		}
		for k, v := range map[string]string{
			"messaging.system": "docket", "messaging.operation.type": "process", "messaging.operation.name": "process",
			"messaging.destination.name": queue, "messaging.message.id": res.ID(), "docket.task.name": "signup.welcome",
			"docket.task.attempt": attempt, "docket.task.max_retries": "2",
		} {
			if p.Attrs[k] != v {
				t.Errorf("attempt %s: %s = %q, want %q", attempt, k, p.Attrs[k], v)
			}
		}
	}
	if worker[0].Status != codes.Error.String() || worker[0].ErrorMsg != "smtp: 421 try again later" || worker[0].Attrs["error.type"] != "*errors.errorString" {
		t.Errorf("failed attempt's span: status %s %q, error.type %q", worker[0].Status, worker[0].ErrorMsg, worker[0].Attrs["error.type"])
	}
	if worker[1].Status != codes.Unset.String() {
		t.Errorf("successful attempt's span status %s", worker[1].Status)
	}
}

func TestTraceAcrossProcessesSQLite(t *testing.T) {
	testAcrossProcesses(t, "sqlite:"+filepath.Join(t.TempDir(), "app.db"), freshQueue())
}

func TestTraceAcrossProcessesRedis(t *testing.T) {
	u := os.Getenv("DOCKET_TEST_REDIS_URL")
	if u == "" {
		t.Skip("DOCKET_TEST_REDIS_URL is not set; skipping the Redis trace test")
	}
	prefix := fmt.Sprintf("docketotel-%d", time.Now().UnixNano())
	t.Cleanup(func() { redistest.DeletePrefix(u, prefix) })
	testAcrossProcesses(t, withParam(t, u, "prefix", prefix), freshQueue())
}

func TestTraceAcrossProcessesRabbitMQ(t *testing.T) {
	u := os.Getenv("DOCKET_TEST_AMQP_URL")
	if u == "" {
		t.Skip("DOCKET_TEST_AMQP_URL is not set; skipping the RabbitMQ trace test")
	}
	prefix := fmt.Sprintf("docketotel-%d", time.Now().UnixNano())
	queue := freshQueue()
	t.Cleanup(func() { amqptest.DeleteTopology(t, u, prefix, queue) })
	testAcrossProcesses(t, withParam(t, u, "prefix", prefix), queue)
}

// freshQueue returns a queue name no other run uses.
func freshQueue() string { return fmt.Sprintf("otel-%d", time.Now().UnixNano()) }

func withParam(t *testing.T, raw, k, v string) string {
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set(k, v)
	u.RawQuery = q.Encode()
	return u.String()
}

func TestNewRootLinksOnly(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	tel, err := docketotel.New(docketotel.Options{TracerProvider: tp, NewRoot: true, MeterProvider: sdkmetric.NewMeterProvider()})
	if err != nil {
		t.Fatal(err)
	}
	q, _ := dockettest.Open(t, tel.Option())
	task := docket.NewTask("t", func(ctx context.Context, n int) (int, error) { return n, nil })
	if err := q.Register(task); err != nil {
		t.Fatal(err)
	}
	if _, err := task.Enqueue(bg, q, 1); err != nil {
		t.Fatal(err)
	}
	dockettest.Drain(t, q)
	s := spansOf(exp.GetSpans())
	if len(s) != 2 {
		t.Fatalf("spans %+v", s)
	}
	send, proc := s[0], s[1]
	if proc.TraceID == send.TraceID || proc.Parent != "" || len(proc.Links) != 1 || proc.Links[0] != send.SpanID {
		t.Fatalf("NewRoot: process span %+v, send span %+v", proc, send)
	}
}

func TestMetrics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	tel, err := docketotel.New(docketotel.Options{MeterProvider: mp, TracerProvider: sdktrace.NewTracerProvider()})
	if err != nil {
		t.Fatal(err)
	}
	q, _ := dockettest.Open(t, tel.Option())
	if err := tel.Watch(q); err != nil {
		t.Fatal(err)
	}
	task := docket.NewTask("t", func(ctx context.Context, n int) (int, error) {
		if n < 0 {
			return 0, docket.Permanent(errors.New("negative"))
		}
		return n, nil
	})
	if err := q.Register(task); err != nil {
		t.Fatal(err)
	}
	if _, err := task.EnqueueMany(bg, q, []int{1, 2, 3, -1}); err != nil {
		t.Fatal(err)
	}
	dockettest.Drain(t, q)
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(bg, &rm); err != nil {
		t.Fatal(err)
	}
	sums := map[string]int64{}
	hist := map[string]uint64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					key := m.Name
					if v, ok := p.Attributes.Value(attribute.Key("docket.task.outcome")); ok {
						key += "/" + v.AsString()
					}
					sums[key] += p.Value
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					key := m.Name
					if v, ok := p.Attributes.Value(attribute.Key("docket.task.state")); ok {
						key += "/" + v.AsString()
					}
					sums[key] += p.Value
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					hist[m.Name] += p.Count
				}
			}
		}
	}
	for k, v := range map[string]int64{
		"messaging.client.sent.messages": 4, "messaging.client.consumed.messages": 4,
		"docket.task.outcomes/succeeded": 3, "docket.task.outcomes/failed": 1,
		"docket.queue.tasks/succeeded": 3, "docket.queue.tasks/failed": 1,
	} {
		if sums[k] != v {
			t.Errorf("%s = %d, want %d (all: %v)", k, sums[k], v, sums)
		}
	}
	if hist["messaging.process.duration"] != 4 || hist["docket.task.queue_wait"] != 4 {
		t.Errorf("histogram counts %v", hist)
	}
}
