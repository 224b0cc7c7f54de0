// Package sqlite is docket's default store: tasks, leases, schedules and
// results in one SQLite file, through the pure-Go modernc.org/sqlite driver
// (no cgo).
//
// Importing it registers the "sqlite" and "memory" URL schemes:
//
//	sqlite:app.db                relative path
//	sqlite:/var/lib/app/app.db   absolute path (also sqlite:///var/lib/app/app.db)
//	sqlite::memory:  or  memory: a private in-memory database (tests)
//	memory:NAME                  an in-memory database shared by every Open of
//	                             the same NAME in this process, while one is open
//
// with optional query parameters synchronous=normal|full (default normal)
// and busy_timeout=<Go duration> (default 5s). Any other parameter is an
// error, so a path can never smuggle in driver pragmas.
//
// How it is fast and safe:
//   - WAL journal, busy_timeout, BEGIN IMMEDIATE transactions, STRICT tables,
//     schema versioned with PRAGMA user_version and migrated in a
//     transaction; a newer schema is refused.
//   - One writer connection per process with group commit: concurrent
//     enqueues, claims, heartbeats and completions share transactions.
//   - Claims are one UPDATE … RETURNING over a partial index of ready rows.
//   - Reads (Get, Lookup, List, Search, Stats, Wait) use a separate pool
//     and never wait for the writer.
//   - New files are created with mode 0600.
//
// synchronous=normal survives process crashes (kill -9) without losing an
// acknowledged write; a power loss may roll back the last transactions
// committed before it. Use synchronous=full when an acknowledged enqueue must
// survive power loss; commits then cost an fsync each, which group commit
// shares among concurrent callers.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/docketq/docket/transport"
)

func init() {
	transport.Register("sqlite", openURL)
	transport.Register("memory", openURL)
}

// Options configure a Store.
type Options struct {
	// Path is the database file. Empty with Memory false means "docket.db".
	Path string
	// Memory opens an in-memory database instead of a file: private, or
	// shared within the process by every Store opened with the same
	// MemoryName.
	Memory     bool
	MemoryName string
	// Synchronous is "normal" (default) or "full"; see the package doc.
	Synchronous string
	// BusyTimeout is how long a write waits for another process's lock
	// before failing with a "database is locked" error. Default 5s.
	BusyTimeout time.Duration
	// ReadConns is the size of the read pool shared with DB(). Default 4.
	ReadConns int
	// Shared lets docket add its tables to an existing database that
	// holds other tables (the application's own, for enqueueing in the
	// same transactions as its writes). Without it such a file is refused
	// with an error matching transport.ErrIncompatible before anything is
	// written to it, so a mistyped path never changes another
	// application's database.
	Shared bool
}

// Store is docket's SQLite backend: a transport.Transport that keeps every
// task in one database file. It implements every optional capability:
// schedules, listing, retention, leasing by id (as a RabbitMQ result
// store), transactional enqueue, DB and ChangeCounter, and the operations
// API (transport.Admin and transport.ScheduleAdmin).
type Store struct {
	w       *writer
	wdb     *sql.DB // holds the single writer connection
	rdb     *sql.DB // readers, and the application's own queries via DB()
	path    string
	closed  sync.Once
	file    string   // absolute path of the database file
	scratch *scratch // the file behind a memory: database
	// busyTimeout is the writer's busy_timeout, restored after a RESTART
	// checkpoint that lowered it.
	busyTimeout time.Duration
	// checkpointer
	ckptStop chan struct{}
	ckptDone chan struct{}
}

var (
	_ transport.Transport        = (*Store)(nil)
	_ transport.ChangeCounter    = (*Store)(nil)
	_ transport.ScheduleStore    = (*Store)(nil)
	_ transport.IDClaimer        = (*Store)(nil)
	_ transport.Pruner           = (*Store)(nil)
	_ transport.TxEnqueuer       = (*Store)(nil)
	_ transport.DBProvider       = (*Store)(nil)
	_ transport.Lister           = (*Store)(nil)
	_ transport.Admin            = (*Store)(nil)
	_ transport.ScheduleAdmin    = (*Store)(nil)
	_ transport.OpenFunc         = openURL
	_ interface{ Path() string } = (*Store)(nil)
)

// Open opens (creating if needed) the database described by opts and brings
// its schema up to date.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if opts.BusyTimeout == 0 {
		opts.BusyTimeout = 5 * time.Second
	}
	if opts.BusyTimeout < 0 {
		return nil, fmt.Errorf("%w: sqlite busy_timeout must not be negative", transport.ErrInvalid)
	}
	if opts.ReadConns <= 0 {
		opts.ReadConns = 4
	}
	switch strings.ToLower(opts.Synchronous) {
	case "":
		opts.Synchronous = "normal"
	case "normal", "full":
		opts.Synchronous = strings.ToLower(opts.Synchronous)
	default:
		return nil, fmt.Errorf("%w: sqlite synchronous must be normal or full, not %q", transport.ErrInvalid, opts.Synchronous)
	}
	var scr *scratch
	if opts.Memory {
		var err error
		if scr, err = openScratch(opts.MemoryName); err != nil {
			return nil, err
		}
		opts.Path, opts.Synchronous = scr.path, "off"
	}
	s, err := open(ctx, opts)
	if err != nil {
		if scr != nil {
			scr.release()
		}
		return nil, err
	}
	if scr != nil {
		s.path, s.scratch = ":memory:", scr
	}
	return s, nil
}

// open opens the file opts.Path.
func open(ctx context.Context, opts Options) (*Store, error) {
	if opts.Path == "" {
		opts.Path = "docket.db"
	}
	if strings.ContainsRune(opts.Path, 0) {
		return nil, fmt.Errorf("%w: sqlite path contains a NUL byte", transport.ErrInvalid)
	}
	if err := createPrivate(opts.Path); err != nil {
		return nil, err
	}
	if err := checkWritable(opts.Path); err != nil {
		return nil, err
	}
	if !opts.Memory {
		if err := inspect(ctx, opts); err != nil {
			return nil, err
		}
	}
	dsn, rdsn := fileDSN(opts, true), fileDSN(opts, false)
	s := &Store{path: opts.Path, file: opts.Path, busyTimeout: opts.BusyTimeout}
	if abs, err := filepath.Abs(opts.Path); err == nil {
		s.file = abs
	}
	var err error
	if s.wdb, err = sql.Open("sqlite", dsn); err != nil {
		return nil, fmt.Errorf("docket: open sqlite: %w", err)
	}
	s.wdb.SetMaxOpenConns(1)
	s.wdb.SetMaxIdleConns(1)
	s.wdb.SetConnMaxLifetime(0)
	s.wdb.SetConnMaxIdleTime(0)
	conn, err := s.wdb.Conn(ctx)
	if err != nil {
		s.wdb.Close()
		return nil, fmt.Errorf("docket: open sqlite %s: %w", s.path, classify(err))
	}
	if err := migrate(ctx, conn, opts.Shared || opts.Memory); err != nil {
		conn.Close()
		s.wdb.Close()
		return nil, classify(err)
	}
	if s.rdb, err = sql.Open("sqlite", rdsn); err != nil {
		conn.Close()
		s.wdb.Close()
		return nil, fmt.Errorf("docket: open sqlite: %w", err)
	}
	s.rdb.SetMaxOpenConns(opts.ReadConns)
	s.rdb.SetMaxIdleConns(opts.ReadConns)
	s.w = newWriter(conn)
	s.ckptStop, s.ckptDone = make(chan struct{}), make(chan struct{})
	go s.checkpointer()
	return s, nil
}

// WAL bounds. SQLite appends every commit to the -wal file and can only
// start it over once a checkpoint has copied every frame back into the
// database and no reader still uses one of them. Under a steady load some
// reader or writer is always active, so background PASSIVE checkpoints copy
// frames but the log is never reset and grows without bound. Past
// walRestartFrames frames the store therefore asks for a RESTART checkpoint,
// which waits briefly for readers (at most walRestartWait), holding off new
// writers, so that the next commit starts the log from its beginning.
// journal_size_limit then trims a file that a large transaction grew.
const (
	walRestartFrames = 4096 // 16 MiB of 4 KiB pages
	walRestartWait   = 200 * time.Millisecond
	walSizeLimit     = 64 << 20 // journal_size_limit
)

// checkpointer copies the WAL back into the database file every 100ms after
// this process committed, from a reader connection, in PASSIVE mode: it never
// blocks the writer or readers, and no commit pays for it. When the log has
// grown past walRestartFrames it has the writer run a RESTART checkpoint.
func (s *Store) checkpointer() {
	defer close(s.ckptDone)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var seen int64
	for {
		select {
		case <-s.ckptStop:
			return
		case <-tick.C:
		}
		n := s.w.commits.Load()
		if n == seen {
			continue
		}
		seen = n
		var busy, logged, done int
		if err := s.rdb.QueryRow("PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &logged, &done); err != nil {
			continue
		}
		if logged >= walRestartFrames {
			s.restartWAL()
		}
	}
}

// restartWAL runs a RESTART checkpoint on the writer connection, between
// its transactions, with the busy timeout lowered to walRestartWait: a
// reader that holds a snapshot for longer (an application's long read
// transaction on DB()) makes this attempt give up rather than stall
// every write; the next tick tries again.
func (s *Store) restartWAL() {
	ctx := context.Background()
	s.w.doNoTx(ctx, func(r runner) error {
		_, err := r.exec(ctx, fmt.Sprintf("PRAGMA busy_timeout = %d", walRestartWait.Milliseconds()))
		if err != nil {
			return err
		}
		rows, err := r.query(ctx, "PRAGMA wal_checkpoint(RESTART)")
		if err == nil {
			for rows.Next() {
			}
			err = rows.Close()
		}
		_, rerr := r.exec(ctx, fmt.Sprintf("PRAGMA busy_timeout = %d", s.busyTimeout.Milliseconds()))
		return errors.Join(err, rerr)
	})
}

// createPrivate creates the database file with mode 0600 if it does not
// exist, so SQLite (which copies the main file's mode to -wal and -shm)
// never makes a world-readable queue.
func createPrivate(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case err == nil:
		return f.Close()
	case errors.Is(err, os.ErrExist):
		return nil
	case errors.Is(err, syscall.EROFS), errors.Is(err, os.ErrPermission):
		return fmt.Errorf("docket: create sqlite database: %w: %w", transport.ErrReadOnly, err)
	default:
		return fmt.Errorf("docket: create sqlite database: %w", err)
	}
}

// fileDSN builds the driver DSN as a file: URI with the path percent-encoded,
// so characters such as '?' and '#' in a path are part of the name and can
// never start driver parameters. busy_timeout goes in the driver's own key,
// which it applies before anything else, so no setting below can fail
// instantly on a lock. The writer's DSN also asks for auto_vacuum, which
// only takes effect on a new file, before anything (even the journal mode)
// writes its first page; it lets the pruner hand freed pages back
// (incremental_vacuum). Readers never ask: the pragma would want a write
// lock on every new connection.
func fileDSN(o Options, writer bool) string {
	q := url.Values{}
	q.Set("_txlock", "immediate")
	q.Set("_busy_timeout", strconv.FormatInt(o.BusyTimeout.Milliseconds(), 10))
	if writer {
		q.Set("_auto_vacuum", "incremental")
		// The writer never checkpoints: a checkpoint inside a commit
		// would stall every caller of that commit for an fsync. The
		// store's checkpointer does it in the background instead.
		q.Add("_pragma", "wal_autocheckpoint(0)")
		// The writer's working set is small whatever the depth: the head
		// of the ready index and the rows it claims, the tail where new
		// rows go. Half a MiB of page cache (SQLite's default is 2 MiB per
		// connection) drains as fast and keeps a worker's peak RSS about
		// 1.5 MiB lower (bench/, rss and drain rows).
		q.Add("_pragma", "cache_size(-512)")
	}
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous("+o.Synchronous+")")
	q.Add("_pragma", "journal_size_limit("+strconv.Itoa(walSizeLimit)+")")
	q.Add("_pragma", "foreign_keys(0)")
	// Workflow triggers advance a pass-through step's successor from
	// inside the trigger that completed it (schema version 3).
	q.Add("_pragma", "recursive_triggers(1)")
	return fileURI(o.Path, q)
}

// plainDSN opens the file with none of docket's pragmas, to look at it
// before anything is written.
func plainDSN(o Options) string {
	q := url.Values{}
	q.Set("_busy_timeout", strconv.FormatInt(o.BusyTimeout.Milliseconds(), 10))
	q.Set("mode", "rw")
	return fileURI(o.Path, q)
}

// fileURI is the driver's file: URI for path with the query q. The path is
// absolute and percent-encoded, as SQLite expects.
func fileURI(path string, q url.Values) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		abs = path
	}
	u := url.URL{Scheme: "file", Path: abs}
	return "file:" + u.EscapedPath() + "?" + q.Encode()
}

// openURL is the transport.OpenFunc for the sqlite and memory schemes.
func openURL(ctx context.Context, u *url.URL, _ transport.Config) (transport.Transport, error) {
	opts, err := ParseURL(u)
	if err != nil {
		return nil, err
	}
	return Open(ctx, opts)
}

// ParseURL turns a sqlite: or memory: URL into Options.
func ParseURL(u *url.URL) (Options, error) {
	var o Options
	switch strings.ToLower(u.Scheme) {
	case "memory":
		o.Memory = true
		name := u.Opaque
		if name == "" {
			name = strings.TrimPrefix(u.Path, "/")
		}
		if name != "" {
			for _, c := range name {
				if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
					return o, fmt.Errorf("%w: memory database name %q: use letters, digits, '-', '_' and '.'", transport.ErrInvalid, name)
				}
			}
			o.MemoryName = name
		}
	case "sqlite", "":
		p := u.Opaque
		if p == "" {
			p = u.Path
			if u.Host != "" {
				return o, fmt.Errorf("%w: sqlite URL %q has a host; use sqlite:relative/path.db or sqlite:///absolute/path.db", transport.ErrInvalid, u.Redacted())
			}
		} else if unescaped, err := url.PathUnescape(p); err == nil {
			p = unescaped
		}
		if u.Fragment != "" || u.RawFragment != "" {
			// SQLite URLs have no fragment: a '#' belongs to the file name,
			// and docket.Open keeps it there. A URL parsed elsewhere has
			// cut the name short, so refuse it rather than open another file.
			return o, fmt.Errorf("%w: sqlite URL %q: a '#' in a file name must be written %%23 (url.Parse cut the name at it)", transport.ErrInvalid, u.Redacted())
		}
		if p == ":memory:" {
			o.Memory = true
		} else {
			o.Path = p
		}
	default:
		return o, fmt.Errorf("%w: not a sqlite URL: %q", transport.ErrInvalid, u.Redacted())
	}
	for key, vals := range u.Query() {
		v := vals[len(vals)-1]
		switch key {
		case "synchronous":
			o.Synchronous = v
		case "busy_timeout":
			d, err := time.ParseDuration(v)
			if err != nil {
				return o, fmt.Errorf("%w: sqlite busy_timeout %q: %w", transport.ErrInvalid, v, err)
			}
			o.BusyTimeout = d
		case "shared":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return o, fmt.Errorf("%w: sqlite shared %q: want true or false", transport.ErrInvalid, v)
			}
			o.Shared = b
		default:
			return o, fmt.Errorf("%w: unknown sqlite URL parameter %q (known: synchronous, busy_timeout, shared; a '?' in a file name must be written %%3F)", transport.ErrInvalid, key)
		}
	}
	return o, nil
}

// Path returns the database file's path, or ":memory:".
func (s *Store) Path() string { return s.path }

// DB returns a connection pool on the same database, with the same settings
// (WAL, busy_timeout, BEGIN IMMEDIATE), for the application's own tables.
// Enqueue inside one of its transactions with docket's Queue.Tx. Do not
// close it; Close does.
func (s *Store) DB() *sql.DB { return s.rdb }

// Changes implements transport.ChangeCounter with PRAGMA data_version on the
// writer connection, which changes only when another connection commits.
func (s *Store) Changes(ctx context.Context) (uint64, error) {
	var v uint64
	err := s.w.doNoTx(ctx, func(r runner) error {
		rows, err := r.query(ctx, "PRAGMA data_version")
		if err != nil {
			return err
		}
		defer rows.Close()
		if rows.Next() {
			err = rows.Scan(&v)
		}
		if err == nil {
			err = rows.Err()
		}
		return err
	})
	return v, err
}

// WriterStats counts the writer's work since Open.
type WriterStats struct {
	Commits int64 // write transactions committed
	Ops     int64 // operations (enqueue calls, claims, finishes, ...) in them
}

// WriterStats reports how much group commit is batching: Ops/Commits is
// the mean number of operations that shared one transaction. (Stats, of
// transport.Stater, counts the tasks.)
func (s *Store) WriterStats() WriterStats {
	return WriterStats{Commits: s.w.commits.Load(), Ops: s.w.ops.Load()}
}

// Close stops the writer and closes both pools. It is safe to call twice.
func (s *Store) Close() error {
	var err error
	s.closed.Do(func() {
		close(s.ckptStop)
		<-s.ckptDone
		s.w.close()
		err = errors.Join(s.w.conn.Close(), s.wdb.Close(), s.rdb.Close())
		if s.scratch != nil {
			s.scratch.release()
		}
	})
	return err
}

// Ping implements transport.Pinger: it reads the database file's header
// through the reader pool.
func (s *Store) Ping(ctx context.Context) error {
	var v int64
	if err := s.rdb.QueryRowContext(ctx, "PRAGMA schema_version").Scan(&v); err != nil {
		return fmt.Errorf("docket: sqlite ping: %w", err)
	}
	return nil
}
