//go:build unix

package sqlite

import (
	"fmt"
	"path/filepath"
	"syscall"

	"github.com/docketq/docket/transport"
)

// checkWritable reports a directory docket cannot write its -wal and -shm
// files into (a read-only mount, missing permissions) as ErrReadOnly, which
// SQLite itself only reports as "unable to open database file".
func checkWritable(path string) error {
	dir := filepath.Dir(path)
	switch err := syscall.Access(dir, 2 /* W_OK */); err {
	case nil:
		return nil
	case syscall.EROFS, syscall.EACCES, syscall.EPERM:
		return fmt.Errorf("docket: sqlite directory %s: %w: %w", dir, transport.ErrReadOnly, err)
	default:
		return nil // let SQLite report it
	}
}
