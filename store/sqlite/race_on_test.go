//go:build race

package sqlite

// raceEnabled: the race detector slows SQLite (compiled Go) many times
// over, so tests that measure speed skip.
const raceEnabled = true
