// Package history records what happened during a fault test and checks it
// against the final state of the queue: the delivery contract, as
// invariants.
//
// Producers record enqueue outcomes, handlers record attempt starts and
// ends, and the test records the faults it injected (kills, freezes). Each
// process appends JSON lines to its own file, synced line by line, so a
// SIGKILL loses at most the line being written. Check reconciles the
// merged history with every task's final state.
package history

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"
)

// Event kinds.
const (
	EnqueueOK  = "enqueue-ok"  // the producer's Enqueue returned nil
	EnqueueErr = "enqueue-err" // it returned an error: the task may or may not exist
	Start      = "start"       // a handler began an attempt
	End        = "end"         // a handler returned (Outcome: ok or the error)
	Kill       = "kill"        // the test killed process Proc
	Stop       = "stop"        // the test froze process Proc (SIGSTOP)
	LeaseLost  = "lease-lost"  // the worker running attempt Attempt of ID was told its lease (ending Until) was lost
	Resent     = "resent"      // a process published ID again, taken for lost by the broker
	Failover   = "failover"    // the test killed the broker's primary at T; a replica, which may lack its last writes, took over at Until
)

// Event is one line of history.
type Event struct {
	Kind    string    `json:"k"`
	ID      string    `json:"id,omitempty"`
	Attempt int       `json:"a,omitempty"`
	Proc    int       `json:"p,omitempty"` // OS process id
	Outcome string    `json:"o,omitempty"`
	Key     string    `json:"u,omitempty"` // unique key, for EnqueueOK
	ETA     time.Time `json:"eta,omitzero"`
	Until   time.Time `json:"until,omitzero"` // LeaseLost: the end of the lease as last renewed; Failover: the promotion
	T       time.Time `json:"t"`
}

// Recorder appends events to a file, one synced JSON line each.
type Recorder struct {
	mu sync.Mutex
	f  *os.File
}

// Open creates (or appends to) a history file.
func Open(path string) (*Recorder, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	return &Recorder{f: f}, nil
}

// Add records e, stamping the time and process if unset.
func (r *Recorder) Add(e Event) {
	if e.T.IsZero() {
		e.T = time.Now()
	}
	if e.Proc == 0 {
		e.Proc = os.Getpid()
	}
	line, _ := json.Marshal(e)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.f.Write(append(line, '\n'))
	r.f.Sync()
}

// Close closes the file.
func (r *Recorder) Close() error { return r.f.Close() }

// Load reads every *.jsonl file in dir. A torn last line (a process killed
// mid-write) is ignored.
func Load(dir string) ([]Event, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	if err != nil {
		return nil, err
	}
	var out []Event
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var e Event
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				out = append(out, e)
			}
		}
		f.Close()
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].T.Before(out[j].T) })
	return out, nil
}

// Final is a task's state at the end of a test, as stored.
type Final struct {
	State    string // "succeeded", "failed", ...; "" if the task does not exist
	Attempt  int
	Max      int       // MaxRetries+1
	Result   string    // the stored result; handlers store "attempt:<n>"
	Created  time.Time // for uniqueness intervals
	Finished time.Time
	Key      string // unique key
}

// Options relax checks for scenarios that need it.
type Options struct {
	// ETASkew tolerates clock differences when checking that no attempt
	// started before its ETA.
	ETASkew time.Duration
}

var terminal = map[string]bool{"succeeded": true, "failed": true, "cancelled": true, "expired": true}

// Check returns every violated invariant:
//
//	I1 no loss: every acknowledged id reached exactly one terminal state
//	I2 no phantom: no attempt ran for an id that was never stored
//	I3 bounded attempts: attempts within the limit, each number started
//	   once, unless a failover lost the claim of the earlier start
//	I4 no overlap without a fault: two attempts of one id overlap in time
//	   only if the earlier one's process was killed or frozen first, its
//	   lease was lost, or a failover lost its claim
//	I5 fenced results: a succeeded task's result came from its last attempt
//	I7 ETA respected: no attempt started before the task's ETA
//	I9 uniqueness: tasks sharing a unique key were never unfinished at once
func Check(events []Event, final map[string]Final, opt Options) []error {
	var errs []error
	acked := map[string]Event{}
	starts := map[string][]Event{}
	ends := map[string][]Event{}
	faults := map[int][]Event{} // proc -> kills/stops
	var failovers []Event
	lost := map[string]map[int]time.Time{} // id -> attempt -> end of its lost lease
	for _, e := range events {
		switch e.Kind {
		case EnqueueOK:
			acked[e.ID] = e
		case Start:
			starts[e.ID] = append(starts[e.ID], e)
		case End:
			ends[e.ID] = append(ends[e.ID], e)
		case Kill, Stop:
			faults[e.Proc] = append(faults[e.Proc], e)
		case Failover:
			failovers = append(failovers, e)
		case LeaseLost:
			if lost[e.ID] == nil {
				lost[e.ID] = map[int]time.Time{}
			}
			lost[e.ID][e.Attempt] = e.Until
		}
	}
	ids := make([]string, 0, len(acked))
	for id := range acked {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if f := final[id]; !terminal[f.State] {
			errs = append(errs, fmt.Errorf("I1 lost: %s acknowledged but ended in state %q", id, f.State))
		}
	}
	for id, ss := range starts {
		f, stored := final[id]
		if _, ok := acked[id]; !ok && (!stored || f.State == "") {
			errs = append(errs, fmt.Errorf("I2 phantom: %s ran but was never stored", id))
			continue
		}
		sort.SliceStable(ss, func(i, j int) bool { return ss[i].T.Before(ss[j].T) })
		seen := map[int]Event{}
		for _, s := range ss {
			if prev, ok := seen[s.Attempt]; ok && !reclaimed(prev, s, failovers) {
				errs = append(errs, fmt.Errorf("I3 attempt %d of %s started twice", s.Attempt, id))
			}
			seen[s.Attempt] = s
			if f.Max > 0 && s.Attempt > f.Max {
				errs = append(errs, fmt.Errorf("I3 %s attempt %d exceeds the limit %d", id, s.Attempt, f.Max))
			}
			if f.Attempt > 0 && s.Attempt > f.Attempt {
				errs = append(errs, fmt.Errorf("I3 %s attempt %d started but the store counts %d", id, s.Attempt, f.Attempt))
			}
			if eta := acked[id].ETA; !eta.IsZero() && s.T.Before(eta.Add(-opt.ETASkew)) {
				errs = append(errs, fmt.Errorf("I7 %s attempt %d started %v before its ETA", id, s.Attempt, eta.Sub(s.T)))
			}
		}
		errs = append(errs, checkOverlap(id, ss, ends[id], faults, lost[id], failovers)...)
		if f.State == "succeeded" && f.Result != "" && f.Result != fmt.Sprintf("attempt:%d", f.Attempt) {
			errs = append(errs, fmt.Errorf("I5 %s succeeded with result %q but its last attempt is %d", id, f.Result, f.Attempt))
		}
	}
	errs = append(errs, checkUnique(acked, final)...)
	return errs
}

// reclaimed reports whether a failover lies between two starts of one
// attempt number: the earlier start's claim was written to the primary
// that the failover killed before any replica had it, so the promoted
// replica gave the task to the next claim under the same number. A claim
// waits for no replica (only acknowledged writes do), and no claim reaches
// a primary after its successor took over.
func reclaimed(earlier, later Event, failovers []Event) bool {
	for _, f := range failovers {
		if earlier.T.Before(f.Until) && later.T.After(f.T) {
			return true
		}
	}
	return false
}

// checkOverlap: attempt k+1 may start before attempt k ended only if the
// process running k was killed or frozen before k+1 started, or if k's
// worker was told its lease was lost and that lease had ended when k+1
// started (a live worker starved of CPU past its lease: the contract lets
// the lease's end start the next attempt, and the late outcome is
// refused), or if a failover lost k's claim (see reclaimed). A lease
// reported lost that was still running when k+1 started excuses nothing:
// that is a premature redelivery. ss is in order of time.
func checkOverlap(id string, ss []Event, ends []Event, faults map[int][]Event, lost map[int]time.Time, failovers []Event) []error {
	var errs []error
	ss = slices.Clone(ss)
	sort.SliceStable(ss, func(i, j int) bool { return ss[i].Attempt < ss[j].Attempt })
	for i := 1; i < len(ss); i++ {
		prev, cur := ss[i-1], ss[i]
		end, ended := endOf(prev, ends)
		if ended && !end.T.After(cur.T) {
			continue // no overlap
		}
		until, wasLost := lost[prev.Attempt]
		excused := wasLost && !until.IsZero() && !until.After(cur.T) || reclaimed(prev, cur, failovers)
		for _, f := range faults[prev.Proc] {
			if !f.T.Before(prev.T) && !f.T.After(cur.T) {
				excused = true
			}
		}
		if !excused && ended {
			errs = append(errs, fmt.Errorf("I4 %s attempts %d and %d overlapped without a fault", id, prev.Attempt, cur.Attempt))
		}
		if !excused && !ended && prev.Proc == cur.Proc {
			errs = append(errs, fmt.Errorf("I4 %s attempt %d never ended in process %d, which then ran attempt %d", id, prev.Attempt, prev.Proc, cur.Attempt))
		}
	}
	return errs
}

// endOf finds the end of start s among its task's ends: the first of its
// attempt and process at or after it.
func endOf(s Event, ends []Event) (Event, bool) {
	var best Event
	found := false
	for _, e := range ends {
		if e.Attempt == s.Attempt && e.Proc == s.Proc && !e.T.Before(s.T) && (!found || e.T.Before(best.T)) {
			best, found = e, true
		}
	}
	return best, found
}

// checkUnique: a task with a unique key was acknowledged (so it was
// stored by then) only after the previous holder of the key had finished.
// The stored Created time precedes the insert's commit, so the
// acknowledgement time is the sound bound.
func checkUnique(acked map[string]Event, final map[string]Final) []error {
	type span struct {
		id       string
		acked    time.Time
		finished time.Time
	}
	byKey := map[string][]span{}
	for id, e := range acked {
		if e.Key != "" {
			byKey[e.Key] = append(byKey[e.Key], span{id, e.T, final[id].Finished})
		}
	}
	const skew = 2 * time.Millisecond // stored times have millisecond precision
	var errs []error
	for key, ss := range byKey {
		sort.Slice(ss, func(i, j int) bool { return ss[i].acked.Before(ss[j].acked) })
		for i := 1; i < len(ss); i++ {
			prev, cur := ss[i-1], ss[i]
			if prev.finished.IsZero() || cur.acked.Before(prev.finished.Add(-skew)) {
				errs = append(errs, fmt.Errorf("I9 %s (unique key %q) was stored while %s still held the key", cur.id, key, prev.id))
			}
		}
	}
	return errs
}
