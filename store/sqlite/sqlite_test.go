package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docketq/docket/transport"
)

var (
	ctx  = context.Background()
	base = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
)

func openFile(t *testing.T, path string, opts ...Options) *Store {
	t.Helper()
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	o.Path = path
	s, err := Open(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func msg(id string) transport.Message {
	return transport.Message{ID: id, Name: "n", Queue: "default", Payload: []byte(`1`), MaxAttempts: 1, ResultTTL: time.Hour}
}

// The claim, promote, prune and lookup statements must be index searches at
// any queue depth: no full scan of the task table, no temporary b-tree.
func TestQueryPlans(t *testing.T) {
	s := openFile(t, filepath.Join(t.TempDir(), "q.db"))
	// Give the planner statistics of a deep queue.
	msgs := make([]transport.Message, 2000)
	for i := range msgs {
		msgs[i] = msg(fmt.Sprintf("t%05d", i))
		if i%2 == 0 {
			msgs[i].ETA = base.Add(time.Hour)
		}
	}
	if _, err := s.Enqueue(ctx, transport.EnqueueParams{Now: base, Messages: msgs}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.rdb.ExecContext(ctx, "ANALYZE"); err != nil {
		t.Fatal(err)
	}
	for name, q := range map[string]string{
		"claim":         claimQuery(10, false),
		"claim-exclude": claimQuery(10, true),
		"promote":       promoteSQL,
		"next-timer":    "SELECT min(run_at) FROM docket_tasks WHERE state IN (1, 3)",
		"prune":         pruneSQL,
		"finish":        finishSQL,
		"extend":        extendSQL,
		"cancel":        cancelSQL,
		"lookup":        "SELECT id, state, cancel FROM docket_tasks WHERE id IN (SELECT value FROM json_each(?))",
		"unique":        "SELECT id FROM docket_tasks WHERE unique_key = ? AND state <= 3",
	} {
		rows, err := s.rdb.QueryContext(ctx, "EXPLAIN QUERY PLAN "+q, 1, "o", 2, "default", `["x"]`, 7, 8, 9)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		all := strings.Join(plan, "\n")
		if strings.Contains(all, "SCAN docket_tasks") || strings.Contains(all, "TEMP B-TREE") {
			t.Errorf("%s scans or sorts:\n%s", name, all)
		}
		if !strings.Contains(all, "docket_tasks") {
			t.Errorf("%s: plan does not mention the table:\n%s", name, all)
		}
	}
}

func TestFileModeAndReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	s := openFile(t, path)
	if _, err := s.Enqueue(ctx, transport.EnqueueParams{Now: base, Messages: []transport.Message{msg("a")}}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", filepath.Base(p), fi.Mode().Perm())
		}
	}
	s.Close()
	s2 := openFile(t, path)
	if _, err := s2.Get(ctx, transport.GetParams{ID: "a"}); err != nil {
		t.Fatalf("task lost across reopen: %v", err)
	}
	var mode string
	var vacuum int
	s2.rdb.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode)
	s2.rdb.QueryRowContext(ctx, "PRAGMA auto_vacuum").Scan(&vacuum)
	if mode != "wal" || vacuum != 2 {
		t.Errorf("journal_mode %q, auto_vacuum %d; want wal and 2 (incremental)", mode, vacuum)
	}
}

// A path that looks like driver parameters is a file name, never pragmas.
func TestPathCannotInjectPragmas(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.db?_pragma=journal_mode(DELETE)&_pragma=busy_timeout(1)#frag")
	s := openFile(t, path)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the literal file was not created: %v", err)
	}
	var mode string
	var busy int
	s.rdb.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode)
	s.rdb.QueryRowContext(ctx, "PRAGMA busy_timeout").Scan(&busy)
	if mode != "wal" || busy != 5000 {
		t.Fatalf("journal_mode=%q busy_timeout=%d: the path changed pragmas", mode, busy)
	}
	// Through a URL, unknown parameters are refused outright.
	u, _ := url.Parse("sqlite:x.db?_pragma=journal_mode(DELETE)")
	if _, err := ParseURL(u); err == nil || !strings.Contains(err.Error(), "unknown sqlite URL parameter") {
		t.Fatalf("ParseURL accepted a driver pragma: %v", err)
	}
}

func TestParseURL(t *testing.T) {
	for raw, want := range map[string]Options{
		"sqlite:app.db":                   {Path: "app.db"},
		"sqlite:/var/lib/a.db":            {Path: "/var/lib/a.db"},
		"sqlite:///var/lib/a.db":          {Path: "/var/lib/a.db"},
		"memory:":                         {Memory: true},
		"sqlite::memory:":                 {Memory: true},
		"sqlite:a.db?synchronous=full":    {Path: "a.db", Synchronous: "full"},
		"sqlite:a%20b.db?busy_timeout=2s": {Path: "a b.db", BusyTimeout: 2 * time.Second},
	} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseURL(u)
		if err != nil || got != want {
			t.Errorf("ParseURL(%q) = %+v, %v; want %+v", raw, got, err, want)
		}
	}
	for _, raw := range []string{"memory:a/b", "memory:x?y", "sqlite://host/a.db", "sqlite:a.db?busy_timeout=soon", "sqlite:a.db?foo=1", "redis://x"} {
		u, _ := url.Parse(raw)
		if _, err := ParseURL(u); err == nil {
			t.Errorf("ParseURL(%q) accepted", raw)
		}
	}
	if _, err := Open(ctx, Options{Memory: true, Synchronous: "off"}); err == nil {
		t.Error("synchronous=off accepted")
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	s := openFile(t, path)
	s.Close()
	db, _ := sql.Open("sqlite", path)
	db.Exec("PRAGMA user_version = 99")
	db.Close()
	_, err := Open(ctx, Options{Path: path})
	var se *SchemaError
	if !errors.As(err, &se) || se.Version != 99 {
		t.Fatalf("Open of a newer schema: %v", err)
	}
}

func TestForeignUserVersionRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.db")
	db, _ := sql.Open("sqlite", path)
	db.Exec("CREATE TABLE users(id INTEGER PRIMARY KEY); PRAGMA user_version = 3")
	db.Close()
	for _, shared := range []bool{false, true} {
		_, err := Open(ctx, Options{Path: path, Shared: shared})
		var se *SchemaError
		if !errors.As(err, &se) || !errors.Is(err, transport.ErrIncompatible) {
			t.Fatalf("Open over an application's user_version (shared %v): %v", shared, err)
		}
	}
}

// Another application's database is refused before a byte of it changes:
// no docket tables, no switch to WAL.
func TestForeignFileRefusedUntouched(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.db")
	db, _ := sql.Open("sqlite", path)
	if _, err := db.Exec("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users(name) VALUES ('ann')"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	before, _ := os.ReadFile(path)
	_, err := Open(ctx, Options{Path: path})
	if !errors.Is(err, transport.ErrIncompatible) || !strings.Contains(err.Error(), "users") || !strings.Contains(err.Error(), "shared=true") {
		t.Fatalf("Open of another application's database: %v", err)
	}
	after, _ := os.ReadFile(path)
	if string(before) != string(after) {
		t.Fatal("the refused file was modified")
	}
	if _, err := os.Stat(path + "-wal"); err == nil {
		t.Fatal("the refused file was switched to WAL")
	}
}

// With Shared, docket's tables go beside the application's; tables an
// application adds to docket's own file later need nothing.
func TestAppTablesShareTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.db")
	db, _ := sql.Open("sqlite", path)
	if _, err := db.Exec("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	u, _ := url.Parse("sqlite:" + path + "?shared=true")
	opts, err := ParseURL(u)
	if err != nil || !opts.Shared {
		t.Fatalf("ParseURL(shared=true) = %+v, %v", opts, err)
	}
	s := openFile(t, path, opts)
	if _, err := s.DB().Exec("INSERT INTO users(name) VALUES ('ann')"); err != nil {
		t.Fatal(err)
	}
	s.Close()

	own := filepath.Join(t.TempDir(), "q.db")
	s = openFile(t, own)
	if _, err := s.DB().Exec("CREATE TABLE orders(id INTEGER PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	openFile(t, own) // reopened without Shared
}

func TestCorruptFileRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	junk := []byte(strings.Repeat("this is not a database ", 400))
	os.WriteFile(path, junk, 0o600)
	_, err := Open(ctx, Options{Path: path})
	if !errors.Is(err, transport.ErrIncompatible) {
		t.Fatalf("Open of a file that is not a database: %v", err)
	}
	got, _ := os.ReadFile(path)
	if string(got) != string(junk) {
		t.Fatal("the corrupt file was modified")
	}
}

// A database on a read-only file system fails with ErrReadOnly. Mounting
// needs root; elsewhere the test skips.
func TestReadOnlyMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a read-only file system needs root")
	}
	dir := t.TempDir()
	if err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", dir).Run(); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	existing := filepath.Join(dir, "q.db")
	s := openFile(t, existing)
	s.Close()
	if out, err := exec.Command("mount", "-o", "remount,ro", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot remount read-only: %v %s", err, out)
	}
	for _, path := range []string{existing, filepath.Join(dir, "new.db")} {
		s, err := Open(ctx, Options{Path: path})
		if err == nil {
			s.Close()
		}
		if !errors.Is(err, transport.ErrReadOnly) {
			t.Errorf("Open(%s) on a read-only mount: %v", filepath.Base(path), err)
		}
	}
}

func TestEnqueueTx(t *testing.T) {
	s := openFile(t, filepath.Join(t.TempDir(), "q.db"))
	for _, commit := range []bool{false, true} {
		tx, err := s.DB().BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprintf("tx-%v", commit)
		if _, err := s.EnqueueTx(ctx, tx, transport.EnqueueParams{Now: base, Messages: []transport.Message{msg(id)}}); err != nil {
			t.Fatal(err)
		}
		if commit {
			err = tx.Commit()
		} else {
			err = tx.Rollback()
		}
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Get(ctx, transport.GetParams{ID: id})
		if commit && err != nil || !commit && !errors.Is(err, transport.ErrNotFound) {
			t.Fatalf("commit=%v: Get = %v", commit, err)
		}
	}
	// A failed enqueue inside the caller's transaction leaves it usable.
	tx, _ := s.DB().BeginTx(ctx, nil)
	if _, err := s.EnqueueTx(ctx, tx, transport.EnqueueParams{Now: base, Messages: []transport.Message{msg("tx-a"), msg("tx-true")}}); !errors.Is(err, transport.ErrDuplicate) {
		t.Fatalf("duplicate in tx: %v", err)
	}
	if _, err := s.EnqueueTx(ctx, tx, transport.EnqueueParams{Now: base, Messages: []transport.Message{msg("tx-b")}}); err != nil {
		t.Fatal(err)
	}
	tx.Commit()
	if _, err := s.Get(ctx, transport.GetParams{ID: "tx-a"}); !errors.Is(err, transport.ErrNotFound) {
		t.Fatal("half of a failed batch was kept")
	}
	if _, err := s.Get(ctx, transport.GetParams{ID: "tx-b"}); err != nil {
		t.Fatal(err)
	}
}

// Changes moves when another connection (here: another Store on the same
// file, as another process would) commits, and not for our own writes.
func TestChangesSeeOtherWriters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	a, b := openFile(t, path), openFile(t, path)
	v0, err := a.Changes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a.Enqueue(ctx, transport.EnqueueParams{Now: base, Messages: []transport.Message{msg("own")}})
	if v, _ := a.Changes(ctx); v != v0 {
		t.Fatalf("own write moved the change counter %d -> %d", v0, v)
	}
	b.Enqueue(ctx, transport.EnqueueParams{Now: base, Messages: []transport.Message{msg("theirs")}})
	if v, _ := a.Changes(ctx); v == v0 {
		t.Fatal("another writer's commit did not move the change counter")
	}
}

// Concurrent callers share transactions: far fewer commits than operations.
func TestGroupCommit(t *testing.T) {
	s := openFile(t, filepath.Join(t.TempDir(), "q.db"))
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				if _, err := s.Enqueue(ctx, transport.EnqueueParams{Now: base, Messages: []transport.Message{msg(fmt.Sprintf("g%d-%d", g, i))}}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	st := s.WriterStats()
	if st.Ops < 3200 {
		t.Fatalf("ops %d", st.Ops)
	}
	if st.Commits*2 > st.Ops {
		t.Fatalf("group commit did not batch: %d ops in %d commits", st.Ops, st.Commits)
	}
	t.Logf("%d ops in %d commits (%.1f per commit)", st.Ops, st.Commits, float64(st.Ops)/float64(st.Commits))
}

// A write lock held by another process longer than busy_timeout makes writes
// fail with a clear error, and the store recovers once the lock is gone.
func TestLockedDatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	s, err := Open(ctx, Options{Path: path, BusyTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	other, _ := sql.Open("sqlite", "file:"+path+"?_txlock=immediate&_busy_timeout=5000")
	defer other.Close()
	tx, err := other.Begin()
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Enqueue(ctx, transport.EnqueueParams{Now: base, Messages: []transport.Message{msg("l1")}})
	if !errors.Is(err, transport.ErrBusy) || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("enqueue under a foreign lock: %v", err)
	}
	tx.Rollback()
	if _, err := s.Enqueue(ctx, transport.EnqueueParams{Now: base, Messages: []transport.Message{msg("l1")}}); err != nil {
		t.Fatalf("after the lock was released: %v", err)
	}
}

// A rescuer (another worker's claim, after the lease lapsed) racing the
// original worker's completion: whichever commits first wins, and the
// other does nothing. Never both, never a result from the stale attempt
// on a rescued task (River #1302).
func TestRescuerRacesCompletion(t *testing.T) {
	s := openFile(t, filepath.Join(t.TempDir(), "q.db"))
	wins := map[string]int{}
	for i := range 200 {
		id := fmt.Sprintf("race%03d", i)
		if _, err := s.Enqueue(ctx, transport.EnqueueParams{Now: base, Messages: []transport.Message{func() transport.Message {
			m := msg(id)
			m.Queue, m.MaxAttempts = id, 3
			return m
		}()}}); err != nil {
			t.Fatal(err)
		}
		res, _ := s.Claim(ctx, transport.ClaimParams{Now: base, Owner: "a", Queues: []string{id}, Limit: 1, LeaseUntil: base.Add(time.Second)})
		lease := res.Deliveries[0].Lease()
		late := base.Add(2 * time.Second)
		var wg sync.WaitGroup
		var fin []transport.FinishResult
		var rescued transport.ClaimResult
		wg.Add(2)
		go func() {
			defer wg.Done()
			fin, _ = s.Finish(ctx, transport.FinishParams{Now: late, Items: []transport.Outcome{{Lease: lease, State: transport.StateSucceeded, Result: []byte(`"a"`)}}})
		}()
		go func() {
			defer wg.Done()
			rescued, _ = s.Claim(ctx, transport.ClaimParams{Now: late, Owner: "b", Queues: []string{id}, Limit: 1, LeaseUntil: late.Add(time.Second)})
		}()
		wg.Wait()
		in, _ := s.Get(ctx, transport.GetParams{ID: id})
		switch {
		case !fin[0].Lost && len(rescued.Deliveries) == 0:
			wins["completion"]++
			if in.State != transport.StateSucceeded || in.Attempt != 1 || string(in.Result) != `"a"` {
				t.Fatalf("completion won but the task is %v attempt %d result %s", in.State, in.Attempt, in.Result)
			}
		case fin[0].Lost && len(rescued.Deliveries) == 1:
			wins["rescue"]++
			if in.State != transport.StateRunning || in.Attempt != 2 || in.Result != nil {
				t.Fatalf("rescue won but the task is %v attempt %d result %s", in.State, in.Attempt, in.Result)
			}
		default:
			t.Fatalf("both or neither won: finish lost=%v, rescued %d", fin[0].Lost, len(rescued.Deliveries))
		}
	}
	t.Logf("outcomes over 200 races: %v", wins)
}

// An operation that refuses (a duplicate, a cancel of a missing task)
// never fails the other operations sharing its transaction.
func TestRefusalDoesNotFailTheBatch(t *testing.T) {
	s := openFile(t, filepath.Join(t.TempDir(), "q.db"))
	s.Enqueue(ctx, transport.EnqueueParams{Now: base, Messages: []transport.Message{msg("taken")}})
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				var err error
				switch g % 4 {
				case 0:
					_, err = s.Enqueue(ctx, transport.EnqueueParams{Now: base, Messages: []transport.Message{msg(fmt.Sprintf("ok-%d-%d", g, i))}})
				case 1:
					_, err = s.Enqueue(ctx, transport.EnqueueParams{Now: base, Messages: []transport.Message{msg("taken")}})
					if errors.Is(err, transport.ErrDuplicate) {
						err = nil
					}
				case 2:
					_, err = s.Cancel(ctx, transport.CancelParams{Now: base, ID: "missing"})
					if errors.Is(err, transport.ErrNotFound) {
						err = nil
					}
					if err == nil {
						_, err = s.Claim(ctx, transport.ClaimParams{Now: base, Owner: "w", Queues: []string{"default"}, Limit: 2, LeaseUntil: base.Add(time.Minute)})
					}
				case 3:
					// A row the schema refuses (NOT NULL payload) fails
					// its own call alone.
					bad := msg(fmt.Sprintf("bad-%d-%d", g, i))
					bad.Payload = nil
					if _, err = s.Enqueue(ctx, transport.EnqueueParams{Now: base, Messages: []transport.Message{bad}}); err == nil {
						err = fmt.Errorf("a task with no payload was stored")
					} else if strings.Contains(err.Error(), "sqlite write") {
						err = fmt.Errorf("the refused row failed its batch: %w", err)
					} else {
						err = nil
					}
				}
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st := s.WriterStats(); st.Commits >= st.Ops {
		t.Logf("no batching happened (%d ops, %d commits); the test proved less than it could", st.Ops, st.Commits)
	}
}
