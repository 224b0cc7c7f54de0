package history

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func at(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }

func TestRecordAndLoad(t *testing.T) {
	dir := t.TempDir()
	r, err := Open(filepath.Join(dir, "a.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	r.Add(Event{Kind: EnqueueOK, ID: "x"})
	r.Add(Event{Kind: Start, ID: "x", Attempt: 1})
	r.Close()
	evs, err := Load(dir)
	if err != nil || len(evs) != 2 || evs[1].Proc == 0 || evs[0].T.IsZero() {
		t.Fatalf("Load = %+v, %v", evs, err)
	}
}

// Each invariant is detected when broken, and a clean history passes.
func TestCheckFindsViolations(t *testing.T) {
	ok := Final{State: "succeeded", Attempt: 1, Max: 3, Result: "attempt:1"}
	clean := []Event{
		{Kind: EnqueueOK, ID: "a", T: at(0)},
		{Kind: Start, ID: "a", Attempt: 1, Proc: 1, T: at(1)},
		{Kind: End, ID: "a", Attempt: 1, Proc: 1, T: at(2)},
	}
	if errs := Check(clean, map[string]Final{"a": ok}, Options{}); len(errs) != 0 {
		t.Fatalf("clean history: %v", errs)
	}
	cases := map[string]struct {
		events []Event
		final  map[string]Final
	}{
		"I1": {clean, map[string]Final{"a": {State: "ready"}}},
		"I2": {append(clean[1:3:3], Event{Kind: Start, ID: "ghost", Attempt: 1, T: at(3)}), map[string]Final{"a": ok}},
		"I3": {append(clean[:3:3], Event{Kind: Start, ID: "a", Attempt: 1, Proc: 2, T: at(3)}), map[string]Final{"a": ok}},
		"I4": {[]Event{
			{Kind: EnqueueOK, ID: "a", T: at(0)},
			{Kind: Start, ID: "a", Attempt: 1, Proc: 1, T: at(1)},
			{Kind: Start, ID: "a", Attempt: 2, Proc: 2, T: at(2)},
			{Kind: End, ID: "a", Attempt: 1, Proc: 1, T: at(3)},
		}, map[string]Final{"a": {State: "succeeded", Attempt: 2, Max: 3, Result: "attempt:2"}}},
		"I5": {clean, map[string]Final{"a": {State: "succeeded", Attempt: 2, Max: 3, Result: "attempt:1"}}},
		"I7": {[]Event{
			{Kind: EnqueueOK, ID: "a", ETA: at(10), T: at(0)},
			{Kind: Start, ID: "a", Attempt: 1, Proc: 1, T: at(5)},
		}, map[string]Final{"a": ok}},
		"I9": {[]Event{
			{Kind: EnqueueOK, ID: "a", Key: "k", T: at(0)},
			{Kind: EnqueueOK, ID: "b", Key: "k", T: at(3)},
		}, map[string]Final{
			"a": {State: "succeeded", Created: at(0), Finished: at(5)},
			"b": {State: "succeeded", Created: at(1), Finished: at(6)},
		}},
	}
	for inv, c := range cases {
		errs := Check(c.events, c.final, Options{})
		found := false
		for _, e := range errs {
			found = found || strings.HasPrefix(e.Error(), inv+" ")
		}
		if !found {
			t.Errorf("%s violation not reported; got %v", inv, errs)
		}
	}
	// An overlap after a kill of the first attempt's process is allowed.
	killed := []Event{
		{Kind: EnqueueOK, ID: "a", T: at(0)},
		{Kind: Start, ID: "a", Attempt: 1, Proc: 1, T: at(1)},
		{Kind: Kill, Proc: 1, T: at(2)},
		{Kind: Start, ID: "a", Attempt: 2, Proc: 2, T: at(3)},
		{Kind: End, ID: "a", Attempt: 2, Proc: 2, T: at(4)},
	}
	if errs := Check(killed, map[string]Final{"a": {State: "succeeded", Attempt: 2, Max: 3, Result: "attempt:2"}}, Options{}); len(errs) != 0 {
		t.Fatalf("kill then rescue: %v", errs)
	}
	// So is one whose first attempt's worker was told its lease was lost,
	// even when it learns it after the second attempt started; a lost lease
	// of another attempt or task excuses nothing.
	starved := []Event{
		{Kind: EnqueueOK, ID: "a", T: at(0)},
		{Kind: Start, ID: "a", Attempt: 1, Proc: 1, T: at(1)},
		{Kind: Start, ID: "a", Attempt: 2, Proc: 2, T: at(2)},
		{Kind: End, ID: "a", Attempt: 1, Proc: 1, T: at(3)},
		{Kind: End, ID: "a", Attempt: 2, Proc: 2, T: at(4)},
	}
	final := map[string]Final{"a": {State: "succeeded", Attempt: 2, Max: 3, Result: "attempt:2"}}
	if errs := Check(append(slices.Clone(starved), Event{Kind: LeaseLost, ID: "a", Attempt: 1, Proc: 1, Until: at(2), T: at(3)}), final, Options{}); len(errs) != 0 {
		t.Fatalf("lease lost then rescue: %v", errs)
	}
	// A failover that lost the first start's claim excuses its number
	// starting again, overlapping or not; a failover before the first
	// start or after the second does not.
	reclaim := []Event{
		{Kind: EnqueueOK, ID: "a", T: at(0)},
		{Kind: Start, ID: "a", Attempt: 1, Proc: 1, T: at(1)},
		{Kind: Start, ID: "a", Attempt: 1, Proc: 1, T: at(6)},
		{Kind: End, ID: "a", Attempt: 1, Proc: 1, T: at(7)},
		{Kind: End, ID: "a", Attempt: 1, Proc: 1, T: at(8)},
	}
	once := map[string]Final{"a": {State: "succeeded", Attempt: 1, Max: 3, Result: "attempt:1"}}
	if errs := Check(append(slices.Clone(reclaim), Event{Kind: Failover, T: at(2), Until: at(5)}), once, Options{}); len(errs) != 0 {
		t.Fatalf("claim lost in a failover: %v", errs)
	}
	for _, f := range []Event{{Kind: Failover, T: at(-3), Until: at(0)}, {Kind: Failover, T: at(9), Until: at(12)}} {
		errs := Check(append(slices.Clone(reclaim), f), once, Options{})
		if len(errs) != 2 || !strings.HasPrefix(errs[0].Error(), "I3 ") || !strings.HasPrefix(errs[1].Error(), "I4 ") {
			t.Errorf("failover at %v excused the repeat, or reported %v", f.T, errs)
		}
	}
	for _, other := range []Event{
		{Kind: LeaseLost, ID: "a", Attempt: 1, Proc: 1, Until: at(3), T: at(3)}, // still leased when attempt 2 started
		{Kind: LeaseLost, ID: "a", Attempt: 1, Proc: 1, T: at(3)},               // no lease end known
		{Kind: LeaseLost, ID: "a", Attempt: 2, Proc: 2, Until: at(1), T: at(3)},
		{Kind: LeaseLost, ID: "b", Attempt: 1, Proc: 1, Until: at(1), T: at(3)},
	} {
		if errs := Check(append(slices.Clone(starved), other), final, Options{}); len(errs) == 0 {
			t.Errorf("overlap excused by %+v", other)
		}
	}
}
