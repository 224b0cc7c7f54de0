//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package sqlite

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// lockScratch opens path's lock file and holds a shared flock on it for as
// long as the Store is open; the flocks count the Stores sharing the file
// without any state in this package. The first opener (the only one that can
// take the lock exclusively) removes what a crashed process with the same
// pid may have left. A lock file that its last user removed while this one
// waited is not the current one: start again.
func lockScratch(path string) (*os.File, error) {
	for {
		f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, err
		}
		fd := int(f.Fd())
		if syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			removeScratchFiles(path)
		}
		if err := syscall.Flock(fd, syscall.LOCK_SH); err != nil {
			f.Close()
			return nil, err
		}
		held, err1 := f.Stat()
		current, err2 := os.Stat(path + ".lock")
		if err1 == nil && err2 == nil && os.SameFile(held, current) {
			return f, nil
		}
		f.Close()
	}
}

// sweepScratch removes the scratch files in dir of processes that exited
// without closing their Store: nobody holds their lock.
func sweepScratch(dir string) {
	locks, _ := filepath.Glob(filepath.Join(dir, "docket-memory-*.db.lock"))
	for _, l := range locks {
		f, err := os.OpenFile(l, os.O_RDWR, 0)
		if err != nil {
			continue
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			removeScratchFiles(strings.TrimSuffix(l, ".lock"))
			os.Remove(l)
		}
		f.Close()
	}
}

// release drops this Store's hold; the last one removes the files.
func (m *scratch) release() {
	if syscall.Flock(int(m.lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
		removeScratchFiles(m.path)
		os.Remove(m.path + ".lock")
	}
	m.lock.Close()
}
