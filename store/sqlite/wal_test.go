package sqlite

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docketq/docket/internal/longtest"
	"github.com/docketq/docket/transport"
)

// Under a steady load some reader is always active, so SQLite never gets to
// start the WAL over by itself. The store's RESTART checkpoints must keep
// the -wal file under journal_size_limit while more than that is written:
// one and a half times as much, four times with DOCKET_TEST_LONG=1.
func TestWALBoundedUnderSteadyLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	s := openFile(t, path)
	payload := []byte(`"` + strings.Repeat("x", 32<<10) + `"`)
	const perCommit = 16
	total := longtest.Pick(walSizeLimit*3/2, 4*walSizeLimit) // bytes of payload to write

	var stop atomic.Bool
	var readers sync.WaitGroup
	for r := range 2 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for i := 0; !stop.Load(); i++ {
				s.Get(ctx, transport.GetParams{ID: fmt.Sprintf("r%d-%d", r, i)})
			}
		}()
	}
	defer func() { stop.Store(true); readers.Wait() }()

	var maxWAL int64
	deadline := time.Now().Add(2 * time.Minute)
	for written, n := 0, 0; written < total; n++ {
		if time.Now().After(deadline) {
			t.Fatalf("wrote only %d MiB in 2 minutes", written>>20)
		}
		msgs := make([]transport.Message, perCommit)
		for i := range msgs {
			msgs[i] = msg(fmt.Sprintf("t%06d-%02d", n, i))
			msgs[i].Payload = payload
		}
		if _, err := s.Enqueue(ctx, transport.EnqueueParams{Now: base, Messages: msgs}); err != nil {
			t.Fatal(err)
		}
		written += perCommit * len(payload)
		if fi, err := os.Stat(path + "-wal"); err == nil && fi.Size() > maxWAL {
			maxWAL = fi.Size()
		}
	}
	t.Logf("largest WAL %.1f MiB after writing %d MiB", float64(maxWAL)/(1<<20), total>>20)
	if maxWAL > walSizeLimit {
		t.Fatalf("the WAL grew to %.1f MiB, over its %d MiB limit", float64(maxWAL)/(1<<20), walSizeLimit>>20)
	}
}
