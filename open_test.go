package docket_test

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docketq/docket"
)

// A SQLite URL opens exactly the file it names, whatever characters the
// name holds, or fails; '#' is never cut off as a fragment.
func TestSQLitePathsOpenTheNamedFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for url, file := range map[string]string{
		"sqlite:" + dir + "/jobs#2.db":               "jobs#2.db",
		"sqlite://" + dir + "/a#b#c.db":              "a#b#c.db",
		"sqlite:" + dir + "/my jobs.db":              "my jobs.db",
		"sqlite:" + dir + "/q%3Fx.db":                "q?x.db",
		"sqlite:" + dir + "/100%25.db":               "100%.db",
		dir + "/bare#path?x%.db":                     "bare#path?x%.db",
		"sqlite:" + dir + "/s#1.db?synchronous=full": "s#1.db",
	} {
		q, err := docket.Open(bg, url)
		if err != nil {
			t.Fatalf("Open(%q): %v", url, err)
		}
		q.Close()
		if _, err := os.Stat(filepath.Join(dir, file)); err != nil {
			t.Errorf("Open(%q) did not create %q: %v", url, file, err)
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		switch name := e.Name(); {
		case name == "jobs", name == "a", name == "my", name == "q", name == "bare", name == "s":
			t.Errorf("a URL opened the truncated name %q", name)
		}
	}
	// What cannot be read unambiguously fails, with a hint, and creates
	// nothing.
	for _, url := range []string{"sqlite:" + dir + "/q?x.db", "sqlite:" + dir + "/100%.db"} {
		q, err := docket.Open(bg, url)
		if err == nil {
			q.Close()
			t.Fatalf("Open(%q) succeeded", url)
		}
		if !errors.Is(err, docket.ErrInvalid) || !strings.Contains(err.Error(), "must be written") {
			t.Errorf("Open(%q): %v", url, err)
		}
	}
}

// While the application holds a transaction that enqueued a task, reads
// (Info, List) of a memory: queue answer at once, as on a file.
func TestMemoryReadsDuringOpenTransaction(t *testing.T) {
	t.Parallel()
	q, err := docket.Open(bg, "memory:")
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	task := docket.NewTask("tx.read", func(_ context.Context, n int) (int, error) { return n, nil })
	q.Register(task)
	before, err := task.Enqueue(bg, q, 1)
	if err != nil {
		t.Fatal(err)
	}
	db, _ := q.DB()
	tx, err := db.BeginTx(bg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := task.Enqueue(bg, q.Tx(tx), 2); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(bg, 2*time.Second)
	defer cancel()
	if _, err := before.Info(ctx); err != nil {
		t.Fatalf("Info during an open transaction: %v", err)
	}
	if _, err := q.List(ctx, docket.ListOptions{}); err != nil {
		t.Fatalf("List during an open transaction: %v", err)
	}
}

// A transaction on another database is refused: the task would be written
// where no worker of this queue looks.
func TestTxOnAnotherDatabaseRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	q, err := docket.Open(bg, "sqlite:"+filepath.Join(dir, "q.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	task := docket.NewTask("tx.other", func(_ context.Context, n int) (int, error) { return n, nil })
	q.Register(task)
	// Another docket database: the insert itself would succeed there.
	q2, err := docket.Open(bg, "sqlite:"+filepath.Join(dir, "other.db"))
	if err != nil {
		t.Fatal(err)
	}
	q2.Close()
	other, err := sql.Open("sqlite", filepath.Join(dir, "other.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	tx, err := other.BeginTx(bg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	_, err = task.Enqueue(bg, q.Tx(tx), 1)
	if !errors.Is(err, docket.ErrOtherDatabase) || !errors.Is(err, docket.ErrInvalid) {
		t.Fatalf("enqueue in another database's transaction: %v", err)
	}
	// The queue's own database, reached through another pool, is fine.
	same, _ := sql.Open("sqlite", filepath.Join(dir, ".", "q.db"))
	defer same.Close()
	tx2, err := same.BeginTx(bg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := task.Enqueue(bg, q.Tx(tx2), 1); err != nil {
		t.Fatalf("enqueue in the queue's own database: %v", err)
	}
	tx2.Rollback()
}
