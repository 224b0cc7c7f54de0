package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
)

// riverSystem runs River with its SQLite driver on database/sql and
// modernc.org/sqlite, with the pool limited to one connection as the
// driver's documentation asks.
type riverSystem struct{}

func (riverSystem) Name() string                        { return "River" }
func (riverSystem) Available(ctx context.Context) error { return nil }
func (riverSystem) dbFile() string                      { return "river.db" }

func (riverSystem) Storage(ctx context.Context, dir string) (int64, error) {
	return sqliteStorage(ctx, filepath.Join(dir, riverSystem{}.dbFile()))
}

// riverArgs is the no-op job; T is the enqueue stamp (0 for plain no-ops).
type riverArgs struct {
	T int64 `json:"t,omitempty"`
}

// Kind names the job kind for River.
func (riverArgs) Kind() string { return "bench_noop" }

type riverInstance struct {
	o       Options
	db      *sql.DB
	obs     *sql.DB
	client  *river.Client[*sql.Tx]
	started bool
}

// riverLogger keeps River quiet on stdout (child processes report there).
func riverLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

func (s riverSystem) Open(ctx context.Context, o Options) (Instance, error) {
	path := filepath.Join(o.Dir, riverSystem{}.dbFile())
	db, err := sql.Open("sqlite", sqliteDSN(path))
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	migrator, err := rivermigrate.New(riversqlite.New(db), &rivermigrate.Config{Logger: riverLogger()})
	if err != nil {
		db.Close()
		return nil, err
	}
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		db.Close()
		return nil, fmt.Errorf("river migrate: %w", err)
	}
	obs, err := openObserver(path)
	if err != nil {
		db.Close()
		return nil, err
	}
	r := &riverInstance{o: o, db: db, obs: obs}
	if r.client, err = r.newClient(o.ShortRetention); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// newClient builds a client. Fetch timing: FetchPollInterval is the
// harness's -poll (River's default is 1 s) and FetchCooldown River's
// minimum, 1 ms (default 100 ms, which caps throughput); with Poll 0 both
// keep River's defaults.
func (r *riverInstance) newClient(shortRetention bool) (*river.Client[*sql.Tx], error) {
	h := r.o.Handler
	if h == nil {
		h = func(int64) {}
	}
	workers := river.NewWorkers()
	river.AddWorker(workers, river.WorkFunc(func(ctx context.Context, j *river.Job[riverArgs]) error {
		h(j.Args.T)
		return nil
	}))
	cfg := &river.Config{
		Logger:  riverLogger(),
		Workers: workers,
		Queues:  map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: max(1, r.o.Concurrency)}},
	}
	if r.o.Poll > 0 {
		cfg.FetchCooldown = river.FetchCooldownMin
		cfg.FetchPollInterval = max(r.o.Poll, river.FetchPollIntervalMin)
	}
	if shortRetention {
		cfg.CompletedJobRetentionPeriod = time.Millisecond
	}
	return river.NewClient(riversqlite.New(r.db), cfg)
}

func (r *riverInstance) Enqueue(ctx context.Context, stamp int64) error {
	_, err := r.client.Insert(ctx, riverArgs{T: stamp}, nil)
	return err
}

func (r *riverInstance) EnqueueBatch(ctx context.Context, n int) error {
	params := make([]river.InsertManyParams, n)
	for i := range params {
		params[i].Args = riverArgs{}
	}
	_, err := r.client.InsertMany(ctx, params)
	return err
}

func (r *riverInstance) Start(ctx context.Context) error {
	if r.started {
		return errors.New("river: already started")
	}
	if err := r.client.Start(context.Background()); err != nil {
		return err
	}
	r.started = true
	return nil
}

func (r *riverInstance) Stop(ctx context.Context) error {
	if !r.started {
		return nil
	}
	r.started = false
	return r.client.Stop(ctx)
}

func (r *riverInstance) Unfinished(ctx context.Context) (bool, error) {
	var left bool
	err := r.obs.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM river_job
		WHERE state IN ('available', 'running', 'pending', 'scheduled', 'retryable'))`).Scan(&left)
	return left, err
}

// Cleanup relies on River's JobCleaner, which runs on the elected leader
// when it starts and then every 30 s (not configurable). Rather than wait
// up to 30 s, it restarts the client with CompletedJobRetentionPeriod 1 ms
// so that the cleaner's first run happens now.
func (r *riverInstance) Cleanup(ctx context.Context) (string, *PollErrors, error) {
	const how = "JobCleaner on the leader: CompletedJobRetentionPeriod 1ms, client restarted so its first pass runs at once (interval 30s, fixed); freed pages stay in the file (no vacuum)"
	if err := r.Stop(ctx); err != nil {
		return how, nil, err
	}
	c, err := r.newClient(true)
	if err != nil {
		return how, nil, err
	}
	r.client = c
	if err := r.Start(ctx); err != nil {
		return how, nil, err
	}
	poll, err := waitFor(ctx, 20*time.Millisecond, func(ctx context.Context) (bool, error) {
		var n int
		err := r.obs.QueryRowContext(ctx, `SELECT count(*) FROM river_job`).Scan(&n)
		return n == 0, err
	})
	return how, poll, err
}

func (r *riverInstance) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := r.Stop(ctx)
	return errors.Join(err, r.obs.Close(), r.db.Close())
}
