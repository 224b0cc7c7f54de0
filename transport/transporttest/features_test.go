package transporttest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/docketq/docket/store/sqlite"
	"github.com/docketq/docket/transport"
)

var memories atomic.Int64

func memoryURL(*testing.T) string { return fmt.Sprintf("memory:features-%d", memories.Add(1)) }

func openMemory(t *testing.T) transport.Transport {
	s, err := sqlite.Open(context.Background(), sqlite.Options{Memory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// bare hides every optional interface of the transport it holds.
type bare struct{ transport.Transport }

// The check reports a claim the transport does not keep, and an interface
// it implements without the claim.
func TestMismatches(t *testing.T) {
	all := Features{Schedules: true, SharedState: true, Priority: true, Listing: true, Pruning: true, ClaimByID: true, TxEnqueue: true, Admin: true, Workflows: true, Overdue: true}
	s := openMemory(t)
	if m := mismatches(s, all); len(m) != 0 {
		t.Fatalf("SQLite claiming everything: %v", m)
	}
	count := func(ms []string, word string) int {
		n := 0
		for _, m := range ms {
			if strings.Contains(m, word) {
				n++
			}
		}
		return n
	}
	if m := mismatches(s, Features{SharedState: true, Priority: true}); len(m) != 8 || count(m, "does not claim") != 8 {
		t.Errorf("SQLite claiming no interface feature: %d mismatches, want 8 unclaimed interfaces:\n%s", len(m), strings.Join(m, "\n"))
	}
	if m := mismatches(bare{s}, all); len(m) != 10 || count(m, "does not implement") != 9 || count(m, "DBProvider") != 1 {
		t.Errorf("a transport without optional interfaces claiming everything: %d mismatches, want 10 (8 interfaces, ScheduleAdmin, DBProvider):\n%s", len(m), strings.Join(m, "\n"))
	}
	if m := mismatches(bare{s}, Features{SharedState: true, Priority: true}); len(m) != 0 {
		t.Errorf("a transport without optional interfaces claiming none: %v", m)
	}
}

// The capture scheme hands the suite the transport docket opened.
func TestOpenCaptured(t *testing.T) {
	q, tr := openCaptured(t, Backend{NewURL: memoryURL})
	defer q.Close()
	if _, ok := tr.(*sqlite.Store); !ok {
		t.Fatalf("captured %T, want *sqlite.Store", tr)
	}
	if !slices.Contains(transport.Schemes(), captureScheme) {
		t.Fatalf("%s is not registered", captureScheme)
	}
}
