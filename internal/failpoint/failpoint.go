// Package failpoint lets fault tests stop a process at an exact step of
// docket's work. Production code calls Hit at interesting points; unless the
// DOCKET_FAILPOINT environment variable names that point, Hit is a single
// comparison.
//
// Points are named like "claim.before-commit", "finish.after-commit",
// "handler.after" and "retry.before-record". DOCKET_FAILPOINT has the form
// name[:n[:action]]: the n-th hit (default 1)
// of the point name performs action: "kill" (default) sends SIGKILL to the
// process itself, "sleep=<duration>" pauses the caller, which widens a race
// window. The variable is read once, at start-up; this package is test
// instrumentation, like GODEBUG, not configuration.
package failpoint

import (
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

type spec struct {
	name  string
	nth   int64
	sleep time.Duration
}

// active is parsed once from the environment and never changes.
var active = parse(os.Getenv("DOCKET_FAILPOINT"))

var hits atomic.Int64

func parse(v string) spec {
	if v == "" {
		return spec{}
	}
	parts := strings.SplitN(v, ":", 3)
	s := spec{name: parts[0], nth: 1}
	if len(parts) > 1 {
		if n, err := strconv.ParseInt(parts[1], 10, 64); err == nil && n > 0 {
			s.nth = n
		}
	}
	if len(parts) > 2 {
		if d, ok := strings.CutPrefix(parts[2], "sleep="); ok {
			s.sleep, _ = time.ParseDuration(d)
		}
	}
	return s
}

// Enabled reports whether any failpoint is armed.
func Enabled() bool { return active.name != "" }

// Hit marks the point name; see the package doc.
func Hit(name string) {
	if active.name == "" || active.name != name {
		return
	}
	n := hits.Add(1)
	switch {
	case active.sleep > 0:
		if n == active.nth {
			time.Sleep(active.sleep)
		}
	case n == active.nth:
		p, err := os.FindProcess(os.Getpid())
		if err == nil {
			p.Kill() // SIGKILL: no deferred functions, no flushing
		}
		select {} // wait for the signal to land
	}
}
