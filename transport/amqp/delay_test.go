package amqp

import (
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

// topicMatch is RabbitMQ's topic matching: "*" is one word, "#" zero or
// more.
func topicMatch(pattern, key string) bool {
	var match func(p, k []string) bool
	match = func(p, k []string) bool {
		switch {
		case len(p) == 0:
			return len(k) == 0
		case p[0] == "#":
			for i := 0; i <= len(k); i++ {
				if match(p[1:], k[i:]) {
					return true
				}
			}
			return false
		case len(k) == 0:
			return false
		case p[0] == "*" || p[0] == k[0]:
			return match(p[1:], k[1:])
		}
		return false
	}
	return match(strings.Split(pattern, "."), strings.Split(key, "."))
}

// trip follows a routing key through the declared bindings, as the broker
// would, and returns the total time spent in delay queues and the queue
// it ends in.
func trip(t *testing.T, key string) (time.Duration, string) {
	t.Helper()
	const target = "docket.q.mail.send"
	var total time.Duration
	level := Levels - 1
	for level >= 0 {
		inQueue := topicMatch(levelPattern(level, "1"), key)
		passes := topicMatch(levelPattern(level, "0"), key)
		if inQueue == passes {
			t.Fatalf("level %d: key %q matches both or neither binding", level, key)
		}
		if inQueue {
			total += time.Duration(1<<level) * time.Millisecond
		}
		level--
	}
	final := strings.Repeat("*.", Levels) + target
	if !topicMatch(final, key) {
		t.Fatalf("key %q does not reach %s", key, target)
	}
	return total, target
}

func TestDelayLevels(t *testing.T) {
	for _, d := range []time.Duration{
		0, time.Millisecond, 400 * time.Millisecond, 1234 * time.Millisecond,
		time.Second, 2 * time.Hour, 7 * 24 * time.Hour, 49 * 24 * time.Hour, MaxDelay,
	} {
		ms, again := delayMillis(d)
		if again {
			t.Fatalf("%v: needs another trip", d)
		}
		got, _ := trip(t, delayKey(ms, "docket.q.mail.send"))
		if got != d {
			t.Errorf("delay %v: the levels hold it for %v", d, got)
		}
	}
}

func TestDelayRoundsUp(t *testing.T) {
	ms, _ := delayMillis(1500 * time.Microsecond)
	if ms != 2 {
		t.Fatalf("1.5ms rounds to %dms, want 2 (never early)", ms)
	}
	if ms, _ := delayMillis(-time.Second); ms != 0 {
		t.Fatalf("a past ETA waits %dms", ms)
	}
}

// A delay beyond one trip takes the longest trip and is sent around again
// by the worker that receives it early.
func TestDelayBeyondOneTrip(t *testing.T) {
	year := 365 * 24 * time.Hour
	ms, again := delayMillis(year)
	if !again || time.Duration(ms)*time.Millisecond != MaxDelay {
		t.Fatalf("one year: %dms, again=%v", ms, again)
	}
	if MaxDelay < 49*24*time.Hour {
		t.Fatalf("MaxDelay %v is under 49 days", MaxDelay)
	}
	trips := 0
	for left := year; left > 0; trips++ {
		ms, _ := delayMillis(left)
		left -= time.Duration(ms) * time.Millisecond
	}
	if trips != 8 {
		t.Fatalf("a year takes %d trips, want 8", trips)
	}
}

func TestRoutingKeyFits(t *testing.T) {
	// Queue names are at most 128 bytes; the prefix at most 32.
	target := strings.Repeat("p", 32) + ".q." + strings.Repeat("n", 128)
	if k := delayKey(uint64(MaxDelay/time.Millisecond), target); len(k) > 255 {
		t.Fatalf("routing key of %d bytes exceeds AMQP's 255", len(k))
	}
}

func TestParseOptions(t *testing.T) {
	for _, bad := range []string{"prefix=a*b", "prefix=a.b", "queue_type=stream", "delivery_limit=0", "delivery_limit=x", "quorum_size=0", "quorum_size=x", "queue_type=classic&quorum_size=3"} {
		u := mustURL(t, "amqp://guest:secret@localhost/?"+bad)
		if _, _, err := parseOptions(u); err == nil {
			t.Errorf("%s: accepted", bad)
		} else if strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: error shows the password: %v", bad, err)
		}
	}
	u := mustURL(t, "amqp://guest:secret@localhost/vh?prefix=app&queue_type=classic&delivery_limit=5&heartbeat=5")
	opt, clean, err := parseOptions(u)
	if err != nil || opt.prefix != "app" || opt.quorum || opt.deliveryLimit != 5 {
		t.Fatalf("parse: %+v, %v", opt, err)
	}
	if clean.RawQuery != "heartbeat=5" {
		t.Fatalf("broker URL keeps docket's parameters: %q", clean.RawQuery)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestAckBook: outcomes that close the gap from the floor go in one frame
// with the multiple flag, naming a tag not acknowledged before; the rest
// are held back until ackHold passed, and covered by the multiple frame if
// the gap closes first; nothing is acknowledged twice.
func TestAckBook(t *testing.T) {
	var b ackBook
	t0 := time.Now()
	now := t0
	check := func(tags []uint64, wantMulti uint64, wantSingle []uint64, wantFloor uint64) {
		t.Helper()
		m, s := b.plan(tags, now, 100)
		if m != wantMulti || !slices.Equal(s, wantSingle) || b.floor != wantFloor {
			t.Fatalf("plan(%v) = %d, %v (floor %d); want %d, %v (floor %d)", tags, m, s, b.floor, wantMulti, wantSingle, wantFloor)
		}
	}
	check([]uint64{2, 1, 3}, 3, nil, 3)
	check([]uint64{5, 7}, 0, nil, 3) // 4 still runs: held back
	check([]uint64{6}, 0, nil, 3)    // still above the gap
	if got := b.next(); !got.Equal(t0.Add(ackHold)) {
		t.Fatalf("next = %v, want %v", got, t0.Add(ackHold))
	}
	check([]uint64{4}, 7, nil, 7)          // closes it: one frame covers 4–7
	check([]uint64{9, 8, 10}, 10, nil, 10) // out of order within a batch
	check([]uint64{10, 9, 3}, 0, nil, 10)  // already acknowledged: nothing
	check([]uint64{12}, 0, nil, 10)        // above a gap: held
	now = t0.Add(ackHold)
	check([]uint64{14}, 0, []uint64{12, 14}, 10) // 12's time is up: alone, and 14 too (11 is a long task)
	if got := b.due(now, false); len(got) != 0 {
		t.Fatalf("due = %v, want none", got)
	}
	check([]uint64{11, 13}, 13, nil, 14) // the frame names 13, the last not yet acknowledged
	now = now.Add(time.Millisecond)
	check([]uint64{16}, 0, nil, 14)
	if got := b.due(time.Time{}, true); !slices.Equal(got, []uint64{16}) {
		t.Fatalf("due(all) = %v, want [16]", got)
	}
	check([]uint64{15}, 15, nil, 16)         // the frame names 15, not 16: 16 is acknowledged
	check([]uint64{17, 17, 18}, 18, nil, 18) // duplicates in one call
	check(nil, 0, nil, 18)
	if len(b.above) != 0 || len(b.held) != 0 || !b.next().IsZero() {
		t.Fatalf("tags above the floor kept: %v, held %v", b.above, b.held)
	}
	// A held tag that comes due means a long task below it: until the
	// floor moves, later tags are not held back behind it.
	check([]uint64{20}, 0, nil, 18)
	now = now.Add(ackHold)
	check([]uint64{21}, 0, []uint64{20, 21}, 18)
	check([]uint64{22}, 0, []uint64{22}, 18)
	check([]uint64{19}, 19, nil, 22) // the floor moves: 20–22 were sent alone
	check([]uint64{24}, 0, nil, 22)  // held again
	if m, s := b.plan([]uint64{25}, now, 0); m != 0 || !slices.Equal(s, []uint64{24, 25}) {
		t.Fatalf("with no holding allowed: %d, %v; want 0, [24 25]", m, s)
	}
}

// TestAckBookLongGap: one delivery that stays unacknowledged (a long task)
// does not make every later acknowledgement cost more, and holds back at
// most the limit of them.
func TestAckBookLongGap(t *testing.T) {
	var b ackBook
	const n = 200_000
	now := time.Now()
	start := time.Now()
	sent := 0
	const limit = 80
	for tag := uint64(2); tag <= n; tag++ {
		m, s := b.plan([]uint64{tag}, now, limit)
		if m != 0 || len(b.held) > limit {
			t.Fatalf("tag %d: %d, %v, %d held", tag, m, s, len(b.held))
		}
		sent += len(s)
	}
	sent += len(b.due(time.Time{}, true))
	if sent != n-1 {
		t.Fatalf("%d acknowledged alone, want %d", sent, n-1)
	}
	if m, s := b.plan([]uint64{1}, now, limit); m != 1 || len(s) != 0 || b.floor != n || len(b.above) != 0 {
		t.Fatalf("closing the gap: %d, %v, floor %d, %d above", m, s, b.floor, len(b.above))
	}
	t.Logf("%d acknowledgements behind a gap in %v", n, time.Since(start))
}
