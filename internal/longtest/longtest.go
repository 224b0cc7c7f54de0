// Package longtest says which variant of docket's long-running tests to run.
//
// Fault, kill, soak and load tests have a short default variant, which keeps
// `go test -race ./...` to a few minutes on a small machine, and long
// variants selected by one environment variable, the same in every package:
//
//	DOCKET_TEST_LONG=1 go test -race ./...      # the long variants (CI runs these too)
//	DOCKET_TEST_LONG=soak go test -race -timeout 2h -run TestSoak .
//	                                            # soak lengths: minutes per scenario
//
// DOCKET_SOAK=1, the variable earlier versions of the tests read, still
// selects the soak lengths.
package longtest

import (
	"os"
	"strings"
	"testing"
)

// Enabled reports whether the long variants run: DOCKET_TEST_LONG is set
// to anything but "" or "0" (soak included), or DOCKET_SOAK is set.
func Enabled() bool {
	v := strings.TrimSpace(os.Getenv("DOCKET_TEST_LONG"))
	return (v != "" && v != "0") || Soak()
}

// Soak reports whether the soak lengths run: DOCKET_TEST_LONG=soak, or
// DOCKET_SOAK set to anything but "" or "0".
func Soak() bool {
	if strings.EqualFold(strings.TrimSpace(os.Getenv("DOCKET_TEST_LONG")), "soak") {
		return true
	}
	v := strings.TrimSpace(os.Getenv("DOCKET_SOAK"))
	return v != "" && v != "0"
}

// Require skips the test unless the long variants run; what says what
// makes the test long.
func Require(t testing.TB, what string) {
	t.Helper()
	if !Enabled() {
		t.Skipf("%s: a long variant, run with DOCKET_TEST_LONG=1", what)
	}
}

// Pick returns short by default and long when the long variants run.
func Pick[T any](short, long T) T {
	if Enabled() {
		return long
	}
	return short
}
