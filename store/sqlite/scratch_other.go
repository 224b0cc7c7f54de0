//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package sqlite

import "os"

// lockScratch opens path's lock file. Without flock the Stores sharing a
// named scratch file cannot be counted: each removes the files only if it
// was private.
func lockScratch(path string) (*os.File, error) {
	return os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
}

// release removes a private scratch file; a named one stays until the
// temporary directory is cleaned.
func (m *scratch) release() {
	m.lock.Close()
	if m.private {
		removeScratchFiles(m.path)
		os.Remove(m.path + ".lock")
	}
}

// sweepScratch does nothing without flock: it cannot tell a live scratch
// file from a stale one.
func sweepScratch(string) {}
