// Package docketotel traces docket tasks with OpenTelemetry, from the
// request that enqueues a task to the attempt that runs it in another
// process, and records OpenTelemetry metrics as an alternative to the
// Prometheus module.
//
//	tel, err := docketotel.New(docketotel.Options{})
//	q, err := docket.Open(ctx, url, tel.Option())
//	tel.Watch(q) // the backend's counts as gauges
//
// # Traces
//
// Enqueueing starts a producer span, "send {queue}", in the caller's
// trace, and writes its context into the tasks' headers with the
// configured propagator (W3C traceparent, tracestate and baggage by
// default): the headers travel with the task on SQLite, Redis and
// RabbitMQ alike. Each attempt of the task starts a consumer span,
// "process {queue}", linked to the producer's span and, unless
// Options.NewRoot is set, its child: the request, the enqueue and every
// attempt (a retry is a new span) form one trace. The handler's ctx
// carries the consumer span, so spans the handler starts nest under it.
//
// Span attributes follow OpenTelemetry's messaging conventions where they
// fit, and name docket's own under docket.*:
//
//	messaging.system                 "docket"
//	messaging.operation.type         "send" | "process"
//	messaging.operation.name         "enqueue" | "process"
//	messaging.destination.name       the queue
//	messaging.message.id             the task id (one task)
//	messaging.batch.message_count    the number of tasks (an EnqueueMany of several)
//	docket.task.name                 the task's name
//	docket.task.attempt              the attempt (process spans)
//	docket.task.max_retries          retries allowed (process spans)
//	docket.schedule                  the schedule that fired the task, if any
//	docket.in_tx                     true for an enqueue in a caller's transaction
//	error.type                       the Go type of a failed attempt's error
//
// A consumer span ends when the handler (and the middleware inside
// docketotel's) returns: its status is Error when the handler returned an
// error, whether or not docket retries the task.
//
// # Metrics
//
// With a MeterProvider (the global one by default), Option also records:
//
//	messaging.client.sent.messages      counter: tasks enqueued
//	messaging.client.consumed.messages  counter: attempts started
//	messaging.process.duration          histogram (s): attempt run time
//	docket.task.outcomes                counter, by docket.task.outcome
//	                                    (succeeded, retried, failed, ...)
//	docket.task.queue_wait              histogram (s): due to first start
//
// and Watch adds gauges read from the backend (cached, like the Prometheus
// module's): docket.queue.tasks by queue and state,
// docket.queue.oldest_ready_age (s), and docket.worker.busy_slots and
// docket.worker.slots.
//
// docketotel is a Go module of its own, so that docket's core module does
// not depend on OpenTelemetry.
package docketotel

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/docketq/docket"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of docketotel's tracer and meter.
const ScopeName = "github.com/docketq/docket/docketotel"

// Options configure New. The zero value uses OpenTelemetry's global
// providers and propagator.
type Options struct {
	// TracerProvider makes the spans (default otel.GetTracerProvider()).
	TracerProvider trace.TracerProvider
	// MeterProvider makes the metrics (default otel.GetMeterProvider()).
	MeterProvider metric.MeterProvider
	// Propagator writes and reads the trace context in task headers
	// (default otel.GetTextMapPropagator(); when that is the no-op
	// default, W3C trace context and baggage).
	Propagator propagation.TextMapPropagator
	// NewRoot starts each attempt's span in a trace of its own, linked to
	// the producer's span, instead of as the producer span's child; for
	// tasks that run long after the request, where one trace would span
	// hours.
	NewRoot bool
	// StatsTTL is how long Watch reuses the backend's counts (default 10s).
	StatsTTL time.Duration
}

// Telemetry holds docketotel's tracer, meter and instruments.
type Telemetry struct {
	opts   Options
	tracer trace.Tracer
	prop   propagation.TextMapPropagator

	sent, consumed, outcomes metric.Int64Counter
	duration, wait           metric.Float64Histogram
	meter                    metric.Meter

	mu      sync.Mutex
	watched []*statsCache // nil until the first Watch registers the gauges
}

// New creates the tracer and the instruments.
func New(opts Options) (*Telemetry, error) {
	tp := opts.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	mp := opts.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	prop := opts.Propagator
	if prop == nil {
		prop = otel.GetTextMapPropagator()
		if len(prop.Fields()) == 0 {
			prop = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
		}
	}
	if opts.StatsTTL <= 0 {
		opts.StatsTTL = 10 * time.Second
	}
	t := &Telemetry{opts: opts, tracer: tp.Tracer(ScopeName), prop: prop, meter: mp.Meter(ScopeName)}
	var err error
	mk := func(f func() error) {
		if err == nil {
			err = f()
		}
	}
	mk(func() (e error) {
		t.sent, e = t.meter.Int64Counter("messaging.client.sent.messages", metric.WithUnit("{message}"), metric.WithDescription("Tasks enqueued."))
		return
	})
	mk(func() (e error) {
		t.consumed, e = t.meter.Int64Counter("messaging.client.consumed.messages", metric.WithUnit("{message}"), metric.WithDescription("Attempts started."))
		return
	})
	mk(func() (e error) {
		t.outcomes, e = t.meter.Int64Counter("docket.task.outcomes", metric.WithUnit("{attempt}"), metric.WithDescription("Attempts and tasks by how they ended."))
		return
	})
	mk(func() (e error) {
		t.duration, e = t.meter.Float64Histogram("messaging.process.duration", metric.WithUnit("s"), metric.WithDescription("How long an attempt's handler ran."))
		return
	})
	mk(func() (e error) {
		t.wait, e = t.meter.Float64Histogram("docket.task.queue_wait", metric.WithUnit("s"), metric.WithDescription("Time from a task's due time to the start of its first attempt."))
		return
	})
	if err != nil {
		return nil, fmt.Errorf("docket: otel instruments: %w", err)
	}
	return t, nil
}

// Option returns the docket option that traces and measures a Queue:
// enqueue middleware, handler middleware and an event hook.
func (t *Telemetry) Option() docket.Option {
	return docket.Options(docket.UseEnqueue(t.enqueue), docket.Use(t.process), docket.OnEvent(t.event))
}

func attrsOf(name, queue string) []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.String("messaging.system", "docket"),
		attribute.String("messaging.destination.name", queue),
		attribute.String("docket.task.name", name),
	}
}

func (t *Telemetry) enqueue(next docket.EnqueueFunc) docket.EnqueueFunc {
	return func(ctx context.Context, e *docket.Enqueueing) error {
		attrs := append(attrsOf(e.Name, e.Queue),
			attribute.String("messaging.operation.type", "send"),
			attribute.String("messaging.operation.name", "enqueue"))
		if len(e.IDs) == 1 {
			attrs = append(attrs, attribute.String("messaging.message.id", e.IDs[0]))
		} else {
			attrs = append(attrs, attribute.Int("messaging.batch.message_count", len(e.IDs)))
		}
		if e.Scheduled != "" {
			attrs = append(attrs, attribute.String("docket.schedule", e.Scheduled))
		}
		if e.InTx {
			attrs = append(attrs, attribute.Bool("docket.in_tx", true))
		}
		ctx, span := t.tracer.Start(ctx, "send "+e.Queue, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...))
		defer span.End()
		t.prop.Inject(ctx, propagation.MapCarrier(e.Headers))
		err := next(ctx, e)
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		return err
	}
}

func (t *Telemetry) process(next docket.Handler) docket.Handler {
	return func(ctx context.Context, j *docket.Job) (json.RawMessage, error) {
		base := attrsOf(j.Name, j.Queue)
		t.consumed.Add(ctx, 1, metric.WithAttributes(base...))
		if j.Attempt == 1 {
			t.wait.Record(ctx, max(0, j.Started.Sub(j.Due()).Seconds()), metric.WithAttributes(base...))
		}
		producer := t.prop.Extract(ctx, propagation.MapCarrier(j.Headers))
		opts := []trace.SpanStartOption{
			trace.WithSpanKind(trace.SpanKindConsumer),
			trace.WithAttributes(append(base,
				attribute.String("messaging.operation.type", "process"),
				attribute.String("messaging.operation.name", "process"),
				attribute.String("messaging.message.id", j.ID),
				attribute.Int("docket.task.attempt", j.Attempt),
				attribute.Int("docket.task.max_retries", j.MaxRetries))...),
		}
		if sc := trace.SpanContextFromContext(producer); sc.IsValid() {
			opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc}))
		}
		if t.opts.NewRoot {
			opts = append(opts, trace.WithNewRoot())
		}
		ctx, span := t.tracer.Start(producer, "process "+j.Queue, opts...)
		defer span.End()
		defer func() {
			if v := recover(); v != nil {
				span.SetStatus(codes.Error, fmt.Sprint("panic: ", v))
				panic(v) // docket turns it into the attempt's error
			}
		}()
		r, err := next(ctx, j)
		if err != nil {
			span.SetAttributes(attribute.String("error.type", fmt.Sprintf("%T", err)))
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		return r, err
	}
}

func (t *Telemetry) event(e docket.Event) {
	ctx := context.Background()
	attrs := attrsOf(e.Name, e.Queue)
	if e.Kind == docket.EventEnqueued {
		t.sent.Add(ctx, 1, metric.WithAttributes(append(attrs, attribute.String("messaging.operation.name", "enqueue"))...))
		return
	}
	t.outcomes.Add(ctx, 1, metric.WithAttributes(append(attrs, attribute.String("docket.task.outcome", e.Kind.String()))...))
	if !e.Started.IsZero() && e.Kind != docket.EventReleased {
		t.duration.Record(ctx, e.Runtime.Seconds(), metric.WithAttributes(append(attrs, attribute.String("messaging.operation.name", "process"))...))
	}
}

// Watch adds q's backend counts and worker slots to the gauges, which
// are registered with the first Watch. The counts are read with
// Queue.Stats at most once per StatsTTL, whatever the collection
// interval; a failed read reports nothing for that collection. Slots are
// summed over the watched Queues.
func (t *Telemetry) Watch(q *docket.Queue) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.watched == nil {
		if err := t.registerGauges(); err != nil {
			return err
		}
	}
	t.watched = append(t.watched, &statsCache{q: q, ttl: t.opts.StatsTTL})
	return nil
}

func (t *Telemetry) registerGauges() error {
	tasks, err := t.meter.Int64ObservableGauge("docket.queue.tasks", metric.WithUnit("{task}"), metric.WithDescription("Tasks in the backend by queue and state."))
	if err != nil {
		return fmt.Errorf("docket: otel gauge: %w", err)
	}
	lag, err := t.meter.Float64ObservableGauge("docket.queue.oldest_ready_age", metric.WithUnit("s"), metric.WithDescription("How long the oldest ready task has waited."))
	if err != nil {
		return fmt.Errorf("docket: otel gauge: %w", err)
	}
	busy, err := t.meter.Int64ObservableGauge("docket.worker.busy_slots", metric.WithUnit("{slot}"), metric.WithDescription("Handlers running now in this process."))
	if err != nil {
		return fmt.Errorf("docket: otel gauge: %w", err)
	}
	slots, err := t.meter.Int64ObservableGauge("docket.worker.slots", metric.WithUnit("{slot}"), metric.WithDescription("Handlers that may run at once in this process."))
	if err != nil {
		return fmt.Errorf("docket: otel gauge: %w", err)
	}
	_, err = t.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		t.mu.Lock()
		watched := t.watched
		t.mu.Unlock()
		var nb, nt int64
		for _, c := range watched {
			b, n := c.q.Slots()
			nb, nt = nb+int64(b), nt+int64(n)
			st := c.get(ctx)
			if st == nil {
				continue
			}
			for _, qs := range st.Queues {
				dest := attribute.String("messaging.destination.name", qs.Name)
				for state, n := range qs.Counts {
					o.ObserveInt64(tasks, n, metric.WithAttributes(dest, attribute.String("docket.task.state", state)))
				}
				o.ObserveFloat64(lag, qs.Lag.Seconds(), metric.WithAttributes(dest))
			}
		}
		o.ObserveInt64(busy, nb)
		o.ObserveInt64(slots, nt)
		return nil
	}, tasks, lag, busy, slots)
	if err != nil {
		return fmt.Errorf("docket: otel callback: %w", err)
	}
	t.watched = []*statsCache{}
	return nil
}

// statsCache reads a Queue's Stats at most once per ttl.
type statsCache struct {
	q   *docket.Queue
	ttl time.Duration

	mu sync.Mutex
	at time.Time
	st *docket.Stats
}

func (c *statsCache) get(ctx context.Context) *docket.Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.at) < c.ttl {
		return c.st
	}
	c.at = time.Now()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := c.q.Stats(ctx)
	if err != nil {
		c.st = nil
		return nil
	}
	c.st = st
	return st
}
