//go:build !race

package docket_test

// raceEnabled: the race detector slows everything several times over, so
// tests that measure rates skip.
const raceEnabled = false
