package docket

import (
	"context"
	"os"
	"runtime/debug"
	"sort"
	"time"

	"github.com/docketq/docket/transport"
)

// A running worker records itself in the backend every registryEvery, and
// is forgotten registryTTL after its last record: a process that stops
// without saying so (killed) leaves the list within half a minute.
const (
	registryEvery = 5 * time.Second
	registryTTL   = 30 * time.Second
)

// registryLoop keeps this worker's record in the backend's worker registry
// while it runs, and removes it when it stops.
func (w *worker) registryLoop() {
	defer w.loops.Done()
	a, ok := w.q.t.(transport.Admin)
	if !ok {
		return
	}
	host, _ := os.Hostname()
	info := transport.WorkerInfo{ID: w.owner, Host: host, PID: os.Getpid(), Concurrency: w.conc, Started: w.q.now(), Version: moduleVersion()}
	for q := range w.q.cfg.queues {
		info.Queues = append(info.Queues, q)
	}
	sort.Strings(info.Queues)
	beat := func(gone bool) {
		now := w.q.now()
		info.Heartbeat, info.Expires, info.Busy = now, now.Add(registryTTL), w.busy()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(w.ctx), registryEvery)
		defer cancel()
		if err := a.Heartbeat(ctx, transport.HeartbeatParams{Now: now, Worker: info, Gone: gone}); err != nil && !gone {
			w.q.cfg.logger.Debug("docket: worker heartbeat failed", "err", err)
		}
	}
	tick := time.NewTicker(registryEvery)
	defer tick.Stop()
	for {
		beat(false)
		select {
		case <-w.quitLoops:
			beat(true)
			return
		case <-tick.C:
		}
	}
}

// busy counts the tasks whose handlers run now.
func (w *worker) busy() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, ex := range w.inflight {
		ex.mu.Lock()
		if ex.running {
			n++
		}
		ex.mu.Unlock()
	}
	return n
}

// moduleVersion is the version of docket linked into this program, as Go
// recorded it ("(devel)" in docket's own tests).
func moduleVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if bi.Main.Path == "github.com/docketq/docket" {
		return bi.Main.Version
	}
	for _, d := range bi.Deps {
		if d.Path == "github.com/docketq/docket" {
			if d.Replace != nil {
				return d.Replace.Version
			}
			return d.Version
		}
	}
	return "unknown"
}
