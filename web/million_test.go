package web_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/longtest"
	"github.com/docketq/docket/web"
)

// The overview of a database with a million finished tasks, timed as a
// browser's request would be (the whole handler: the counts, the hour's
// history, the workers, the page). It measures and logs; a timing is not
// asserted, since a loaded machine would fail it for nothing:
//
//	DOCKET_TEST_LONG=1 go test -run TestOverviewOfAMillionTasks -v ./web/
func TestOverviewOfAMillionTasks(t *testing.T) {
	longtest.Require(t, "a file of a million tasks")
	if raceEnabled {
		t.Skip("a measurement: the race detector slows SQLite too much to mean anything (run without -race)")
	}
	ctx := context.Background()
	q, err := docket.Open(ctx, "sqlite:"+filepath.Join(t.TempDir(), "big.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	db, err := q.DB()
	if err != nil {
		t.Fatal(err)
	}
	// A million finished tasks (succeeded and failed) on two queues,
	// written directly in the store's table: enqueueing and running them
	// would take minutes and measure nothing more.
	start := time.Now()
	now := time.Now().UnixMilli()
	if _, err := db.ExecContext(ctx, `WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < 999999)
		INSERT INTO docket_tasks (id, name, queue, state, run_at, max_attempts, ttl_ms, payload, created_at, attempt, owner, finished_at)
		SELECT printf('t%08d', i), 'reports.build', CASE i % 4 WHEN 0 THEN 'mail' ELSE 'default' END, 4 + i % 2, ?1 + 86400000, 1, 86400000, x'7b7d', ?1 - 3600000, 1, 'w', ?1
		FROM c`, now); err != nil {
		t.Fatal(err)
	}
	t.Logf("built a million finished tasks in %v", time.Since(start).Round(time.Millisecond))
	h := web.Handler(q, web.Options{})
	var took []time.Duration
	for range 7 {
		rec := httptest.NewRecorder()
		began := time.Now()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
		took = append(took, time.Since(began))
		if body := rec.Body.String(); rec.Code != http.StatusOK || !strings.Contains(body, ">250,000<") || !strings.Contains(body, ">500,000<") {
			t.Fatalf("overview: %d, without the default queue's counts (250,000 succeeded, 500,000 failed)\n%s", rec.Code, body)
		}
	}
	slices.Sort(took)
	t.Logf("overview of 1,000,000 tasks: median %v (fastest %v, slowest %v) over %d requests",
		took[len(took)/2].Round(time.Millisecond), took[0].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond), len(took))
}
