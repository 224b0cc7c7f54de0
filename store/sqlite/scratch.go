package sqlite

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/oklog/ulid/v2"
)

// A memory: database is a scratch file in WAL mode, in RAM where the system
// has a tmpfs at /dev/shm (else in the temporary directory), written with
// synchronous=off and removed when the last Store using it closes. SQLite's
// own in-memory databases (the memdb VFS) cannot do WAL: while one
// connection holds a write transaction, such as an application's DB()
// transaction that enqueued a task, every other connection's reads fail
// with "database is locked". A scratch file behaves exactly like a file
// database, at in-memory speed.
type scratch struct {
	path    string
	private bool
	lock    *os.File // held shared while open; see lockScratch
}

// scratchDir is /dev/shm when it is a writable directory, else os.TempDir().
func scratchDir() string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() && checkWritable("/dev/shm/x") == nil {
		return "/dev/shm"
	}
	return os.TempDir()
}

// openScratch returns the scratch file for name: a new private one when
// name is empty, else the one every Store of this process opened with the
// same name shares.
func openScratch(name string) (*scratch, error) {
	private := name == ""
	if private {
		name = "private-" + ulid.Make().String()
	} else {
		name = fmt.Sprintf("named-%d-%s", os.Getpid(), name)
	}
	dir := scratchDir()
	sweepScratch(dir)
	path := filepath.Join(dir, "docket-memory-"+name+".db")
	lock, err := lockScratch(path)
	if err != nil {
		return nil, fmt.Errorf("docket: open memory database: %w", err)
	}
	return &scratch{path: path, private: private, lock: lock}, nil
}

// removeScratchFiles deletes the database and its WAL and shared-memory
// files.
func removeScratchFiles(path string) {
	for _, p := range []string{path, path + "-wal", path + "-shm", path + "-journal"} {
		os.Remove(p) // absent files are fine
	}
}
