package amqp

import (
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/docketq/docket/transport"
)

// options are the docket parameters of the URL.
type options struct {
	prefix        string
	quorum        bool
	deliveryLimit int
	quorumSize    int           // x-quorum-initial-group-size; 0: RabbitMQ's default (every node)
	dialTimeout   time.Duration // connection_timeout
	// uris are the client URIs of the cluster's nodes: the URL's host,
	// then each addr= parameter, with the same credentials, vhost and
	// client parameters.
	uris []string
}

// docketParams are the URL parameters docket reads itself; clientParams
// are RabbitMQ's URI query parameters, passed on to the client.
var (
	docketParams = []string{"prefix", "queue_type", "delivery_limit", "quorum_size", "addr"}
	clientParams = []string{"heartbeat", "connection_timeout", "channel_max", "auth_mechanism", "cacertfile", "certfile", "keyfile", "server_name_indication"}
)

func parseOptions(u *url.URL) (options, *url.URL, error) {
	opt := options{prefix: "docket", quorum: true, deliveryLimit: 20, dialTimeout: 10 * time.Second}
	q := u.Query()
	for key := range q {
		if !slices.Contains(docketParams, key) && !slices.Contains(clientParams, key) {
			return opt, nil, fmt.Errorf("docket: unknown amqp URL parameter %q (known: %s, %s): %w",
				key, strings.Join(docketParams, ", "), strings.Join(clientParams, ", "), transport.ErrInvalid)
		}
	}
	if p := q.Get("prefix"); p != "" {
		opt.prefix = p
	}
	if !validPrefix(opt.prefix) {
		return opt, nil, fmt.Errorf("docket: amqp prefix %q: use letters, digits, '_' and '-': %w", opt.prefix, transport.ErrInvalid)
	}
	switch v := q.Get("queue_type"); v {
	case "", "quorum":
	case "classic":
		opt.quorum = false
	default:
		return opt, nil, fmt.Errorf("docket: amqp queue_type=%q: want quorum or classic: %w", v, transport.ErrInvalid)
	}
	if v := q.Get("delivery_limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return opt, nil, fmt.Errorf("docket: amqp delivery_limit=%q: want a number from 1 to 1000: %w", v, transport.ErrInvalid)
		}
		opt.deliveryLimit = n
	}
	if v := q.Get("quorum_size"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 99 || !opt.quorum {
			return opt, nil, fmt.Errorf("docket: amqp quorum_size=%q: want the number of nodes each quorum queue is replicated on, from 1 to 99, with quorum queues: %w", v, transport.ErrInvalid)
		}
		opt.quorumSize = n
	}
	if v := q.Get("connection_timeout"); v != "" {
		// RabbitMQ's URI parameter, in milliseconds; docket dials the
		// connection itself, so it applies it here.
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return opt, nil, fmt.Errorf("docket: amqp connection_timeout=%q: want milliseconds, at least 1: %w", v, transport.ErrInvalid)
		}
		opt.dialTimeout = time.Duration(n) * time.Millisecond
	}
	addrs := q["addr"]
	for _, k := range docketParams {
		q.Del(k)
	}
	clean := *u
	clean.RawQuery = q.Encode()
	// The client's own parameters are checked now rather than at each
	// connection attempt.
	if _, err := amqp.ParseURI(clean.String()); err != nil {
		return opt, nil, fmt.Errorf("docket: amqp URL %s: %v: %w", transport.Redact(u), redactErr(err, clean.String()), transport.ErrInvalid)
	}
	opt.uris = []string{clean.String()}
	for _, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if _, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil {
			return opt, nil, fmt.Errorf("docket: amqp addr=%q: want host:port of another node of the cluster: %w", a, transport.ErrInvalid)
		}
		node := clean
		node.Host = a
		opt.uris = append(opt.uris, node.String())
	}
	return opt, &clean, nil
}

func validPrefix(p string) bool {
	if p == "" || len(p) > 32 {
		return false
	}
	for _, c := range p {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// redactErr removes the password of uri from err's text.
func redactErr(err error, uri string) error {
	u, perr := amqp.ParseURI(uri)
	if perr != nil || u.Password == "" || !strings.Contains(err.Error(), u.Password) {
		return err
	}
	return fmt.Errorf("%s", strings.ReplaceAll(err.Error(), u.Password, "xxxxx"))
}
