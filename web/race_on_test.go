//go:build race

package web_test

// raceEnabled: the race detector slows SQLite several times over, so a
// test that measures skips.
const raceEnabled = true
