package amqp

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/docketq/docket/transport"
)

// An unknown URL parameter (a typo, or one of another backend) is refused
// with the list of the known ones instead of being ignored.
func TestParseOptionsRefusesUnknownParameters(t *testing.T) {
	for _, query := range []string{"prefx=app", "heartbeat=5&queue-type=classic", "Prefix=app", "busy_timeout=5s", "db=2"} {
		u := mustURL(t, "amqp://guest:secret@localhost/?"+query)
		_, _, err := parseOptions(u)
		switch {
		case err == nil:
			t.Errorf("%s: accepted", query)
		case !errors.Is(err, transport.ErrInvalid):
			t.Errorf("%s: %v: want an error matching ErrInvalid", query, err)
		case !strings.Contains(err.Error(), "unknown amqp URL parameter") ||
			!strings.Contains(err.Error(), "known: prefix, queue_type, delivery_limit, quorum_size, addr, heartbeat, connection_timeout"):
			t.Errorf("%s: %v: want the parameter named and the known ones listed", query, err)
		case strings.Contains(err.Error(), "secret"):
			t.Errorf("%s: error shows the password: %v", query, err)
		}
	}
}

// Every known parameter is accepted; RabbitMQ's own stay in the URL given
// to the client, whose values are checked at once.
func TestParseOptionsKnownParameters(t *testing.T) {
	u := mustURL(t, "amqps://guest:secret@localhost/vh?prefix=app&queue_type=classic&delivery_limit=5"+
		"&heartbeat=5&connection_timeout=2500&channel_max=16&auth_mechanism=PLAIN"+
		"&cacertfile=/ca.pem&certfile=/c.pem&keyfile=/k.pem&server_name_indication=rabbit.example")
	opt, clean, err := parseOptions(u)
	if err != nil {
		t.Fatal(err)
	}
	if opt.prefix != "app" || opt.quorum || opt.deliveryLimit != 5 || opt.dialTimeout != 2500*time.Millisecond {
		t.Fatalf("options %+v", opt)
	}
	for _, k := range clientParams {
		if !clean.Query().Has(k) {
			t.Errorf("%s is not passed to the client: %s", k, clean.RawQuery)
		}
	}
	for _, k := range docketParams {
		if clean.Query().Has(k) {
			t.Errorf("docket's %s is passed to the client: %s", k, clean.RawQuery)
		}
	}
	for _, bad := range []string{"heartbeat=x", "channel_max=70000", "connection_timeout=0", "connection_timeout=soon"} {
		_, _, err := parseOptions(mustURL(t, "amqp://guest:secret@localhost/?"+bad))
		if !errors.Is(err, transport.ErrInvalid) || strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: %v; want an error matching ErrInvalid, without the password", bad, err)
		}
	}
	if opt, _, err := parseOptions(mustURL(t, "amqp://localhost/")); err != nil || opt.dialTimeout != 10*time.Second || len(opt.uris) != 1 {
		t.Errorf("defaults: %+v, %v", opt, err)
	}
}

// addr= names more nodes of a cluster: each gets the URL's credentials,
// vhost and client parameters; a bad one is refused.
func TestParseOptionsClusterNodes(t *testing.T) {
	opt, _, err := parseOptions(mustURL(t, "amqp://guest:secret@node1:5672/vh?addr=node2:5673&addr=10.0.0.3:5672&heartbeat=5&prefix=app"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"amqp://guest:secret@node1:5672/vh?heartbeat=5",
		"amqp://guest:secret@node2:5673/vh?heartbeat=5",
		"amqp://guest:secret@10.0.0.3:5672/vh?heartbeat=5",
	}
	if strings.Join(opt.uris, " ") != strings.Join(want, " ") {
		t.Errorf("uris %q, want %q", opt.uris, want)
	}
	for _, bad := range []string{"addr=node2", "addr=:5672", "addr=node2:port"} {
		_, _, err := parseOptions(mustURL(t, "amqp://guest:secret@localhost/?"+bad))
		if !errors.Is(err, transport.ErrInvalid) || strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: %v; want an error matching ErrInvalid, without the password", bad, err)
		}
	}
}
