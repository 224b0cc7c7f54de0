package docket

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestPrefetcherAdapts(t *testing.T) {
	var started atomic.Int64
	p := prefetcher{max: 32, started: &started, last: time.Now().Add(-time.Second)}
	if n := p.size(); n != 1 {
		t.Fatalf("idle prefetch %d, want 1", n)
	}
	// 20,000 tasks/s for a while: 5ms of work is 100 tasks, capped at 32.
	for range 5 {
		p.last = p.last.Add(-20 * time.Millisecond)
		started.Add(400)
		p.size()
	}
	if n := p.size(); n != 32 {
		t.Fatalf("busy prefetch %d, want the cap 32", n)
	}
	// Slow again: it shrinks back.
	for range 20 {
		p.last = p.last.Add(-time.Second)
		p.size()
	}
	if n := p.size(); n != 1 {
		t.Fatalf("prefetch after slowing down %d, want 1", n)
	}
	if n := (&prefetcher{max: 0, started: &started}).size(); n != 0 {
		t.Fatalf("Prefetch(0) gave %d", n)
	}
}
