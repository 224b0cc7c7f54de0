package amqp_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/docketq/docket"
)

// docket.Open refuses an amqp URL with an unknown parameter before it
// connects, naming the parameter.
func TestOpenRefusesUnknownParameter(t *testing.T) {
	for _, raw := range []string{
		"amqp://guest:guest@127.0.0.1:1/?prefx=app",
		"amqps://guest:guest@127.0.0.1:1/vhost?prefix=app&queuetype=classic",
	} {
		q, err := docket.Open(bg, raw)
		if err == nil {
			q.Close()
			t.Fatalf("%s: opened", raw)
		}
		if !errors.Is(err, docket.ErrInvalid) || !strings.Contains(err.Error(), "unknown amqp URL parameter") {
			t.Errorf("%s: %v; want an unknown-parameter error matching ErrInvalid", raw, err)
		}
		if strings.Contains(err.Error(), "amqp connect") {
			t.Errorf("%s: %v; want it refused before connecting", raw, err)
		}
	}
}
