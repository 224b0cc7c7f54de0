package backoff

import (
	"testing"
	"time"
)

func TestExp(t *testing.T) {
	for _, c := range []struct {
		n    int
		want time.Duration
	}{{-1, time.Second}, {0, time.Second}, {1, 2 * time.Second}, {3, 8 * time.Second}, {10, time.Minute}, {1000, time.Minute}} {
		if got := Exp(time.Second, time.Minute, c.n); got != c.want {
			t.Errorf("Exp(1s, 1m, %d) = %v, want %v", c.n, got, c.want)
		}
	}
	if got := Exp(time.Hour, 0, 1000); got <= 0 {
		t.Errorf("uncapped Exp overflowed: %v", got)
	}
}

func TestSpreadAndPolicy(t *testing.T) {
	for range 1000 {
		if d := Spread(time.Second, 0.25); d < 750*time.Millisecond || d > 1250*time.Millisecond {
			t.Fatalf("Spread(1s, 0.25) = %v", d)
		}
		if d := (Policy{Min: 100 * time.Millisecond, Max: time.Second}).Delay(5); d < 500*time.Millisecond || d > time.Second {
			t.Fatalf("Delay(5) = %v, want within [500ms, 1s]", d)
		}
	}
	if d := Spread(time.Second, 0); d != time.Second {
		t.Fatalf("Spread without jitter = %v", d)
	}
}
