// Command observability is a service with docket inside, instrumented
// for production: Prometheus metrics on /metrics, OpenTelemetry traces
// from the request that enqueues a task to the attempt that runs it,
// JSON logs whose lines about a task carry task.id, task.name, task.queue
// and task.attempt, and probes on /healthz (liveness) and /readyz
// (readiness).
//
//	go run . -addr localhost:8080            # in examples/observability
//	curl -X POST 'localhost:8080/reports?n=7'
//	curl localhost:8080/metrics | grep docket_
//	curl -i localhost:8080/readyz
//
// Spans are printed to stderr as JSON (-traces=false turns that off); a
// real service hands docketotel its OTLP exporter instead.
//
// It is a Go module of its own: the Prometheus and OpenTelemetry modules
// it uses stay out of docket's core go.mod.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/docketotel"
	"github.com/docketq/docket/docketprom"
	"github.com/docketq/docket/health"
	_ "github.com/docketq/docket/transport/all" // DOCKET_URL may name Redis or RabbitMQ
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// BuildReport is the background work: report n fails its first attempt
// when n is a multiple of 5 (a flaky upstream), so retries show in the
// metrics and traces.
var BuildReport = docket.NewTask("reports.build", func(ctx context.Context, n int) (string, error) {
	tc, _ := docket.FromContext(ctx)
	slog.InfoContext(ctx, "building report", "n", n)
	if n%5 == 0 && tc.Attempt == 1 {
		return "", errors.New("upstream timed out")
	}
	if n < 0 {
		return "", docket.Permanent(fmt.Errorf("report %d does not exist", n))
	}
	return fmt.Sprintf("report-%d.pdf", n), nil
}, docket.RetryBackoff(docket.Exponential{Base: 100 * time.Millisecond, Max: time.Second}))

func main() {
	addr := flag.String("addr", "localhost:8080", "listen address")
	traces := flag.Bool("traces", true, "print spans to stderr")
	flag.Parse()
	if err := run(*addr, *traces); err != nil {
		fmt.Fprintln(os.Stderr, "observability:", err)
		os.Exit(1)
	}
}

// Service is the instrumented Queue and what serves it.
type Service struct {
	Queue   *docket.Queue
	Metrics *prometheus.Registry
	Tracer  trace.Tracer
}

// Open opens the Queue at url with metrics, traces and logs wired in.
func Open(ctx context.Context, url string, tp trace.TracerProvider, logs io.Writer, opts ...docket.Option) (*Service, error) {
	logger := slog.New(docket.TaskLogHandler(slog.NewJSONHandler(logs, nil)))
	slog.SetDefault(logger) // handlers' slog.InfoContext lines carry the task
	metrics := docketprom.New(docketprom.Options{})
	tel, err := docketotel.New(docketotel.Options{TracerProvider: tp})
	if err != nil {
		return nil, err
	}
	q, err := docket.Open(ctx, url, append(opts, docket.Logger(logger), metrics.Option(), tel.Option())...)
	if err != nil {
		return nil, err
	}
	if err := q.Register(BuildReport); err != nil {
		q.Close()
		return nil, err
	}
	metrics.Watch(q)
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &Service{Queue: q, Metrics: reg, Tracer: tp.Tracer("observability")}, nil
}

// Handler serves the API, the metrics and the probes.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /reports", func(w http.ResponseWriter, r *http.Request) {
		ctx, span := s.Tracer.Start(r.Context(), "POST /reports", trace.WithSpanKind(trace.SpanKindServer))
		defer span.End()
		n, err := strconv.Atoi(r.FormValue("n"))
		if err != nil {
			http.Error(w, "n must be an integer", http.StatusBadRequest)
			return
		}
		res, err := BuildReport.Enqueue(ctx, s.Queue, n)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintln(w, res.ID())
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.Metrics, promhttp.HandlerOpts{}))
	mux.Handle("GET /healthz", health.Live(s.Queue))
	mux.Handle("GET /readyz", health.Ready(s.Queue, 2*time.Second))
	return mux
}

func run(addr string, traces bool) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var tpOpts []sdktrace.TracerProviderOption
	if traces {
		exp, err := stdouttrace.New(stdouttrace.WithWriter(os.Stderr))
		if err != nil {
			return err
		}
		tpOpts = append(tpOpts, sdktrace.WithBatcher(exp))
	}
	tp := sdktrace.NewTracerProvider(tpOpts...)
	defer tp.Shutdown(context.Background())
	s, err := Open(ctx, os.Getenv("DOCKET_URL"), tp, os.Stderr, docket.ResultStore(os.Getenv("DOCKET_RESULT_URL")))
	if err != nil {
		return err
	}
	defer s.Queue.Close()
	workers := make(chan error, 1)
	go func() { workers <- s.Queue.Run(ctx) }()
	srv := &http.Server{Addr: addr, Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.ListenAndServe() }()
	slog.Info("listening", "addr", addr)
	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return <-workers
}
