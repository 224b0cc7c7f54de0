package sqlite_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/docketq/docket/store/sqlite"
	"github.com/docketq/docket/transport"
	"github.com/docketq/docket/transport/transporttest"
)

// Every feature the suite knows of.
var features = transporttest.Features{
	Schedules: true, SharedState: true, Priority: true,
	Listing: true, Pruning: true, ClaimByID: true, TxEnqueue: true, Admin: true, Workflows: true, Handoff: true, Overdue: true,
}

func openStore(t *testing.T, opts sqlite.Options) transport.Transport {
	t.Helper()
	s, err := sqlite.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformanceFile(t *testing.T) {
	transporttest.Run(t, transporttest.Backend{
		NewURL: func(t *testing.T) string { return "sqlite:" + filepath.Join(t.TempDir(), "q.db") },
		Open: func(t *testing.T) transport.Transport {
			return openStore(t, sqlite.Options{Path: filepath.Join(t.TempDir(), "q.db")})
		},
		Features: features,
	})
}

// memory:NAME databases are shared by every Open of the name in this
// process, so that two Queues of a test see the same tasks.
func TestConformanceMemory(t *testing.T) {
	var n atomic.Int64
	transporttest.Run(t, transporttest.Backend{
		NewURL:   func(t *testing.T) string { return fmt.Sprintf("memory:conformance-%d", n.Add(1)) },
		Open:     func(t *testing.T) transport.Transport { return openStore(t, sqlite.Options{Memory: true}) },
		Features: features,
	})
}
