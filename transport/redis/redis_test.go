package redis_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docketq/docket/internal/redistest"
	"github.com/docketq/docket/transport"
	_ "github.com/docketq/docket/transport/redis"
	"github.com/docketq/docket/transport/transporttest"
)

// Tests run against the server in DOCKET_TEST_REDIS_URL (for example
// redis://127.0.0.1:6379/15), each under its own key prefix, deleted at the
// end. Without the variable they are skipped.

func serverURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("DOCKET_TEST_REDIS_URL")
	if u == "" {
		t.Skip("DOCKET_TEST_REDIS_URL is not set; skipping the Redis suite")
	}
	return u
}

var prefixes atomic.Int64

// freshURL returns the server URL with a new key prefix, whose keys are
// deleted when the test ends.
func freshURL(t testing.TB) string {
	t.Helper()
	base := serverURL(t)
	prefix := fmt.Sprintf("dockettest-%d-%d", os.Getpid(), prefixes.Add(1))
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("prefix", prefix)
	u.RawQuery = q.Encode()
	t.Cleanup(func() { redistest.DeletePrefix(base, prefix) })
	return u.String()
}

// TestConformance runs the whole suite: the contract on transports opened
// directly (Redis takes every decision's time from the params), and
// docket's API end to end.
func TestConformance(t *testing.T) {
	serverURL(t)
	transporttest.Run(t, transporttest.Backend{
		NewURL: func(t *testing.T) string { return freshURL(t) },
		Open: func(t *testing.T) transport.Transport {
			u, _ := url.Parse(freshURL(t))
			tr, err := transport.Open(context.Background(), u, transport.Config{})
			if err != nil {
				t.Fatal(err)
			}
			return tr
		},
		Features: transporttest.Features{
			Schedules: true, SharedState: true, Priority: true,
			Listing: true, Pruning: true, ClaimByID: true, Admin: true, Workflows: true, Handoff: true, Overdue: true,
		},
	})
}

func TestRedactsPassword(t *testing.T) {
	for _, raw := range []string{
		"redis://:S3CR3T-pw@127.0.0.1:1/0",
		"redis://127.0.0.1:1/0?master_name=m&password=S3CR3T-pw",
	} {
		redactsPassword(t, raw)
	}
}

func redactsPassword(t *testing.T, raw string) {
	u, _ := url.Parse(raw)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := transport.Open(ctx, u, transport.Config{})
	if err == nil {
		t.Fatal("connected to a closed port")
	}
	if s := err.Error(); contains(s, "S3CR3T") {
		t.Fatalf("error leaks the password: %s", s)
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}
