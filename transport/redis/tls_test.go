package redis_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/docketq/docket"
)

// rediss:// aimed at a plain server fails with a reason, not a timeout of
// the caller's whole context.
func TestTLSToPlainServerFailsClearly(t *testing.T) {
	t.Parallel()
	u, err := url.Parse(serverURL(t))
	if err != nil {
		t.Fatal(err)
	}
	u.Scheme = "rediss"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	q, err := docket.Open(ctx, u.String())
	if err == nil {
		q.Close()
		t.Fatal("rediss:// to a plain server opened")
	}
	if ctx.Err() != nil || !errors.Is(err, docket.ErrInvalid) || !strings.Contains(err.Error(), "may not speak TLS") {
		t.Fatalf("rediss:// to a plain server: %v (context: %v)", err, ctx.Err())
	}
}
