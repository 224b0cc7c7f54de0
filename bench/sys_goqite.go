package main

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"maragu.dev/goqite"
	"maragu.dev/goqite/jobs"
)

// goqiteSchema reads the schema goqite tells applications to create, from
// the goqite module itself (schema_sqlite.sql), rather than keeping a copy.
func goqiteSchema() (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "maragu.dev/goqite").Output()
	if err != nil {
		return "", fmt.Errorf("locate the goqite module (needs the go command): %w", err)
	}
	raw, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "schema_sqlite.sql"))
	return string(raw), err
}

// goqiteSystem runs goqite's job runner (maragu.dev/goqite/jobs) on
// modernc.org/sqlite, with one connection as goqite's README sets up.
type goqiteSystem struct{}

func (goqiteSystem) Name() string                        { return "goqite" }
func (goqiteSystem) Available(ctx context.Context) error { return nil }
func (goqiteSystem) dbFile() string                      { return "goqite.db" }

func (goqiteSystem) Storage(ctx context.Context, dir string) (int64, error) {
	return sqliteStorage(ctx, filepath.Join(dir, goqiteSystem{}.dbFile()))
}

type goqiteInstance struct {
	o       Options
	db      *sql.DB
	obs     *sql.DB
	q       *goqite.Queue
	stop    context.CancelFunc
	stopped chan struct{}
}

const goqiteJob = "noop"

func (goqiteSystem) Open(ctx context.Context, o Options) (Instance, error) {
	path := filepath.Join(o.Dir, goqiteSystem{}.dbFile())
	db, err := sql.Open("sqlite", sqliteDSN(path))
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	if err := goqiteMigrate(ctx, db); err != nil {
		db.Close()
		return nil, err
	}
	obs, err := openObserver(path)
	if err != nil {
		db.Close()
		return nil, err
	}
	// MaxReceive and Timeout keep goqite's defaults (3 receives, 5 s).
	q := goqite.New(goqite.NewOpts{DB: db, Name: "bench"})
	return &goqiteInstance{o: o, db: db, obs: obs, q: q}, nil
}

// goqiteMigrate creates goqite's table unless it exists.
func goqiteMigrate(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var exists bool
	if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'goqite')`).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		schema, err := goqiteSchema()
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, schema); err != nil {
			return err
		}
	}
	return tx.Commit()
}

func stampBody(stamp int64) []byte {
	if stamp == 0 {
		return nil
	}
	return binary.LittleEndian.AppendUint64(nil, uint64(stamp))
}

func (g *goqiteInstance) Enqueue(ctx context.Context, stamp int64) error {
	_, err := jobs.Create(ctx, g.q, goqiteJob, goqite.Message{Body: stampBody(stamp)})
	return err
}

// EnqueueBatch uses CreateTx (SendTx under the job runner's envelope) n
// times in one transaction: goqite has no multi-row insert.
func (g *goqiteInstance) EnqueueBatch(ctx context.Context, n int) error {
	tx, err := g.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for range n {
		if _, err := jobs.CreateTx(ctx, tx, g.q, goqiteJob, goqite.Message{}); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// Start runs goqite's job runner with Limit = Concurrency and
// PollInterval = -poll (goqite's default, 100 ms, when Poll is 0). The runner also sleeps
// one PollInterval whenever all Limit slots are busy.
func (g *goqiteInstance) Start(ctx context.Context) error {
	if g.stop != nil {
		return errors.New("goqite: already started")
	}
	h := g.o.Handler
	if h == nil {
		h = func(int64) {}
	}
	r := jobs.NewRunner(jobs.NewRunnerOpts{
		Limit:        max(1, g.o.Concurrency),
		PollInterval: g.o.Poll,
		Queue:        g.q,
	})
	r.Register(goqiteJob, func(ctx context.Context, m []byte) error {
		var stamp int64
		if len(m) == 8 {
			stamp = int64(binary.LittleEndian.Uint64(m))
		}
		h(stamp)
		return nil
	})
	runCtx, stop := context.WithCancel(context.Background())
	g.stop, g.stopped = stop, make(chan struct{})
	go func() {
		defer close(g.stopped)
		r.Start(runCtx)
	}()
	return nil
}

func (g *goqiteInstance) Stop(ctx context.Context) error {
	if g.stop == nil {
		return nil
	}
	g.stop()
	g.stop = nil
	select {
	case <-g.stopped:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *goqiteInstance) Unfinished(ctx context.Context) (bool, error) {
	var left bool
	err := g.obs.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM goqite)`).Scan(&left)
	return left, err
}

func (g *goqiteInstance) Cleanup(ctx context.Context) (string, *PollErrors, error) {
	return "none needed: the runner deletes a message when its job succeeds (no history kept); freed pages stay in the file (no vacuum)", nil, nil
}

func (g *goqiteInstance) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := g.Stop(ctx)
	return errors.Join(err, g.obs.Close(), g.db.Close())
}
