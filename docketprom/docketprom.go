// Package docketprom exports a docket Queue's metrics to Prometheus: what
// its workers run and how it ends, how long tasks run and wait, and the
// backend's depth by queue and state.
//
//	m := docketprom.New(docketprom.Options{})
//	q, err := docket.Open(ctx, url, m.Option())
//	...
//	m.Watch(q)
//	prometheus.MustRegister(m)
//	http.Handle("/metrics", promhttp.Handler())
//
// It is a Go module of its own, so that docket's core module does not
// depend on the Prometheus client. Everything here is built on the core's
// middleware and events (docket.Use, docket.OnEvent); the counts by state
// come from Queue.Stats, cached so that a scrape costs at most one cheap
// query to the backend.
//
// # Series
//
// Counters, by task and queue, of the tasks this process saw:
//
//	docket_tasks_enqueued_total      stored by an enqueue or a schedule here
//	docket_tasks_started_total       attempts started by a worker here
//	docket_tasks_succeeded_total     attempts that succeeded
//	docket_tasks_retried_total       attempts that failed, the task to run again
//	docket_tasks_failed_total        tasks that failed for good
//	docket_tasks_cancelled_total     tasks cancelled while they ran
//	docket_tasks_expired_total       tasks a claim here found expired
//	docket_tasks_released_total      tasks given back at shutdown
//	docket_tasks_lease_lost_total    attempts whose lease this worker lost
//
// Histograms, by task and queue:
//
//	docket_task_runtime_seconds      how long an attempt's handler ran
//	docket_task_queue_wait_seconds   from due (enqueue or ETA) to the first
//	                                 attempt's start
//
// Gauges, from the backend (every process that watches a Queue reports
// the same values: aggregate them with max, not sum):
//
//	docket_queue_tasks{queue,state}           tasks by state
//	docket_queue_retrying_tasks{queue}        scheduled tasks waiting for a retry
//	docket_queue_oldest_ready_age_seconds     how long the oldest ready task has waited
//	docket_queue_paused{queue}                1 while the queue is paused
//	docket_backend_up                         1 when the last count query succeeded
//
// and of this process's worker:
//
//	docket_worker_busy_slots          handlers running now
//	docket_worker_slots               handlers that may run at once
package docketprom

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/docketq/docket"
	"github.com/prometheus/client_golang/prometheus"
)

// Options configure Metrics. The zero value is ready to use.
type Options struct {
	// Namespace prefixes every series (default "docket").
	Namespace string
	// ConstLabels are added to every series (a service name, say).
	ConstLabels prometheus.Labels
	// RuntimeBuckets and WaitBuckets are the histograms' upper bounds in
	// seconds (default: from 5ms to 10 minutes for the run time, and from
	// 5ms to an hour for the wait).
	RuntimeBuckets []float64
	WaitBuckets    []float64
	// StatsTTL is how long the backend's counts are reused between scrapes
	// (default 10s; a scrape never queries more often).
	StatsTTL time.Duration
	// StatsTimeout bounds one count query (default 5s).
	StatsTimeout time.Duration
}

// Metrics is a prometheus.Collector of docket's series. Create it with New,
// hand Option to docket.Open, Watch the Queue, and register it.
type Metrics struct {
	opts Options

	counters map[docket.EventKind]*prometheus.CounterVec
	started  *prometheus.CounterVec
	runtime  *prometheus.HistogramVec
	wait     *prometheus.HistogramVec

	tasksDesc, retryingDesc, lagDesc, pausedDesc, upDesc, busyDesc, slotsDesc *prometheus.Desc

	mu      sync.Mutex // one count query at a time
	queues  []*docket.Queue
	cached  []*docket.Stats
	cacheAt time.Time
	cacheOK bool
}

// New returns Metrics configured by opts.
func New(opts Options) *Metrics {
	if opts.Namespace == "" {
		opts.Namespace = "docket"
	}
	if opts.RuntimeBuckets == nil {
		opts.RuntimeBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 600}
	}
	if opts.WaitBuckets == nil {
		opts.WaitBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600}
	}
	if opts.StatsTTL <= 0 {
		opts.StatsTTL = 10 * time.Second
	}
	if opts.StatsTimeout <= 0 {
		opts.StatsTimeout = 5 * time.Second
	}
	ns, cl := opts.Namespace, opts.ConstLabels
	byTask := []string{"task", "queue"}
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: name, Help: help, ConstLabels: cl}, byTask)
	}
	m := &Metrics{
		opts:    opts,
		started: counter("tasks_started_total", "Attempts started by a worker of this process."),
		counters: map[docket.EventKind]*prometheus.CounterVec{
			docket.EventEnqueued:  counter("tasks_enqueued_total", "Tasks stored by an enqueue or a schedule of this process."),
			docket.EventSucceeded: counter("tasks_succeeded_total", "Attempts that succeeded."),
			docket.EventRetried:   counter("tasks_retried_total", "Attempts that failed, the task to run again."),
			docket.EventFailed:    counter("tasks_failed_total", "Tasks that failed for good (retries exhausted, a permanent error, or their worker lost)."),
			docket.EventCancelled: counter("tasks_cancelled_total", "Tasks cancelled while they ran."),
			docket.EventExpired:   counter("tasks_expired_total", "Tasks a claim of this process found past their expiry."),
			docket.EventReleased:  counter("tasks_released_total", "Tasks given back at shutdown without using up the attempt."),
			docket.EventLeaseLost: counter("tasks_lease_lost_total", "Attempts whose lease this worker lost; their outcome was discarded."),
		},
		runtime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "task_runtime_seconds", Help: "How long an attempt's handler ran.",
			Buckets: opts.RuntimeBuckets, ConstLabels: cl,
		}, byTask),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "task_queue_wait_seconds", Help: "Time from a task's due time (its enqueue, or its ETA) to the start of its first attempt.",
			Buckets: opts.WaitBuckets, ConstLabels: cl,
		}, byTask),
		tasksDesc:    prometheus.NewDesc(ns+"_queue_tasks", "Tasks in the backend by queue and state.", []string{"queue", "state"}, cl),
		retryingDesc: prometheus.NewDesc(ns+"_queue_retrying_tasks", "Scheduled tasks that wait for a retry.", []string{"queue"}, cl),
		lagDesc:      prometheus.NewDesc(ns+"_queue_oldest_ready_age_seconds", "How long the oldest ready task of the queue has waited (0 when none waits).", []string{"queue"}, cl),
		pausedDesc:   prometheus.NewDesc(ns+"_queue_paused", "1 while the queue is paused.", []string{"queue"}, cl),
		upDesc:       prometheus.NewDesc(ns+"_backend_up", "1 when the last query of the backend's counts succeeded.", nil, cl),
		busyDesc:     prometheus.NewDesc(ns+"_worker_busy_slots", "Handlers running now in this process.", nil, cl),
		slotsDesc:    prometheus.NewDesc(ns+"_worker_slots", "Handlers that may run at once in this process (Concurrency).", nil, cl),
	}
	return m
}

// Option returns the docket option that feeds m: a middleware that counts
// started attempts and their queue wait, and an event hook for outcomes.
// Pass it to docket.Open (or docket.New) of each Queue to measure.
func (m *Metrics) Option() docket.Option {
	return docket.Options(docket.Use(m.middleware), docket.OnEvent(m.observe))
}

// Watch adds q's backend counts and worker slots to m's gauges.
func (m *Metrics) Watch(q *docket.Queue) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.queues = append(m.queues, q)
	m.cacheAt = time.Time{}
}

func (m *Metrics) middleware(next docket.Handler) docket.Handler {
	return func(ctx context.Context, j *docket.Job) (json.RawMessage, error) {
		m.started.WithLabelValues(j.Name, j.Queue).Inc()
		if j.Attempt == 1 {
			m.wait.WithLabelValues(j.Name, j.Queue).Observe(max(0, j.Started.Sub(j.Due()).Seconds()))
		}
		return next(ctx, j)
	}
}

func (m *Metrics) observe(e docket.Event) {
	if c := m.counters[e.Kind]; c != nil {
		c.WithLabelValues(e.Name, e.Queue).Inc()
	}
	if !e.Started.IsZero() && e.Kind != docket.EventReleased {
		m.runtime.WithLabelValues(e.Name, e.Queue).Observe(e.Runtime.Seconds())
	}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.started.Describe(ch)
	for _, c := range m.counters {
		c.Describe(ch)
	}
	m.runtime.Describe(ch)
	m.wait.Describe(ch)
	for _, d := range []*prometheus.Desc{m.tasksDesc, m.retryingDesc, m.lagDesc, m.pausedDesc, m.upDesc, m.busyDesc, m.slotsDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.started.Collect(ch)
	for _, c := range m.counters {
		c.Collect(ch)
	}
	m.runtime.Collect(ch)
	m.wait.Collect(ch)
	m.collectGauges(ch)
}

func (m *Metrics) collectGauges(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.queues) == 0 {
		return
	}
	busy, total := 0, 0
	for _, q := range m.queues {
		b, t := q.Slots()
		busy, total = busy+b, total+t
	}
	ch <- prometheus.MustNewConstMetric(m.busyDesc, prometheus.GaugeValue, float64(busy))
	ch <- prometheus.MustNewConstMetric(m.slotsDesc, prometheus.GaugeValue, float64(total))
	if time.Since(m.cacheAt) >= m.opts.StatsTTL {
		m.refresh()
	}
	up := 0.0
	if m.cacheOK {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(m.upDesc, prometheus.GaugeValue, up)
	if !m.cacheOK {
		return
	}
	seen := map[[2]string]bool{}
	for i, st := range m.cached {
		backend := m.queues[i].String() // the redacted URL
		for _, qs := range st.Queues {
			if seen[[2]string{backend, qs.Name}] {
				continue // two Queues on one backend report it twice
			}
			seen[[2]string{backend, qs.Name}] = true
			for state, n := range qs.Counts {
				if state == "retrying" {
					ch <- prometheus.MustNewConstMetric(m.retryingDesc, prometheus.GaugeValue, float64(n), qs.Name)
					continue
				}
				ch <- prometheus.MustNewConstMetric(m.tasksDesc, prometheus.GaugeValue, float64(n), qs.Name, state)
			}
			ch <- prometheus.MustNewConstMetric(m.lagDesc, prometheus.GaugeValue, qs.Lag.Seconds(), qs.Name)
			paused := 0.0
			if qs.Paused {
				paused = 1
			}
			ch <- prometheus.MustNewConstMetric(m.pausedDesc, prometheus.GaugeValue, paused, qs.Name)
		}
	}
}

// refresh queries each watched Queue's counts; under m.mu.
func (m *Metrics) refresh() {
	m.cacheAt = time.Now()
	m.cached = m.cached[:0]
	m.cacheOK = true
	for _, q := range m.queues {
		ctx, cancel := context.WithTimeout(context.Background(), m.opts.StatsTimeout)
		st, err := q.Stats(ctx)
		cancel()
		if err != nil {
			m.cacheOK = false
			return
		}
		m.cached = append(m.cached, st)
	}
}
