// Package health serves a docket Queue's liveness and readiness as HTTP
// handlers for an orchestrator's probes (Kubernetes' livenessProbe and
// readinessProbe, say):
//
//	mux.Handle("GET /healthz", health.Live(q))
//	mux.Handle("GET /readyz", health.Ready(q, 2*time.Second))
//
// Live answers 200 while the worker's loops come round (Queue.CheckLive),
// whether or not the backend answers: restarting a worker does not bring
// a broker back. Ready answers 200 while the backend answers a ping and
// the worker runs (Queue.CheckReady), so that a load balancer sends no
// traffic to a process that cannot enqueue. Both answer 503 with the
// reason as plain text otherwise, and send nothing secret: the reason
// names the backend by its redacted URL at most.
package health

import (
	"context"
	"net/http"
	"time"

	"github.com/docketq/docket"
)

// Live returns the liveness handler of q.
func Live(q *docket.Queue) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		answer(w, q.CheckLive())
	})
}

// Ready returns the readiness handler of q: each request pings the
// backend, for up to timeout (2s when zero or negative).
func Ready(q *docket.Queue, timeout time.Duration) http.Handler {
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		answer(w, q.CheckReady(ctx))
	})
}

func answer(w http.ResponseWriter, err error) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(err.Error() + "\n"))
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}
