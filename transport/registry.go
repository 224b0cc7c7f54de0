package transport

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"
)

// Config is what docket passes to a transport's OpenFunc.
type Config struct {
	// Logger receives the transport's diagnostics; never nil.
	Logger *slog.Logger
	// Now is the clock; transports use it only for housekeeping that has no
	// params struct (timestamps in params come from the caller).
	Now func() time.Time
	// ResultURL, when set, names the store a broker transport keeps task
	// state in (see ResultStorer). Transports that keep their own state
	// are refused it by docket.Open.
	ResultURL *url.URL
}

// ResultStorer is implemented by broker transports that keep task state in
// another transport, their result store (opened from Config.ResultURL, or
// given to the broker's constructor). ResultStore returns it.
type ResultStorer interface {
	ResultStore() Transport
}

// OpenFunc opens a transport for a parsed URL.
type OpenFunc func(ctx context.Context, u *url.URL, cfg Config) (Transport, error)

var (
	registryMu sync.RWMutex
	registry   = map[string]OpenFunc{}
)

// knownPackages names the package that registers a scheme, for the error
// message of a program that forgot to import it.
var knownPackages = map[string]string{
	"amqp":          "github.com/docketq/docket/transport/amqp",
	"celery+amqp":   "github.com/docketq/docket/transport/celery",
	"celery+amqps":  "github.com/docketq/docket/transport/celery",
	"celery+redis":  "github.com/docketq/docket/transport/celery",
	"celery+rediss": "github.com/docketq/docket/transport/celery",
	"amqps":         "github.com/docketq/docket/transport/amqp",
	"redis":         "github.com/docketq/docket/transport/redis",
	"rediss":        "github.com/docketq/docket/transport/redis",
	"sqlite":        "github.com/docketq/docket/store/sqlite",
	"memory":        "github.com/docketq/docket/store/sqlite",
}

// Register makes a transport available under a URL scheme. It is meant to be
// called from an init function; like sql.Register it panics if the scheme is
// registered twice or open is nil, since both are programming errors.
func Register(scheme string, open OpenFunc) {
	scheme = strings.ToLower(scheme)
	registryMu.Lock()
	defer registryMu.Unlock()
	if open == nil {
		panic("docket: Register open func is nil for scheme " + scheme)
	}
	if _, dup := registry[scheme]; dup {
		panic("docket: Register called twice for scheme " + scheme)
	}
	registry[scheme] = open
}

// Schemes returns the registered schemes, sorted.
func Schemes() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	out := make([]string, 0, len(registry))
	for s := range registry {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// UnknownSchemeError reports a URL whose scheme no imported package
// registered.
type UnknownSchemeError struct {
	Scheme  string
	Package string // the package that would register it, when known
}

func (e *UnknownSchemeError) Error() string {
	if e.Package != "" {
		return fmt.Sprintf("docket: unknown transport scheme %q (forgotten import? add: import _ %q)", e.Scheme, e.Package)
	}
	return fmt.Sprintf("docket: unknown transport scheme %q (registered: %s)", e.Scheme, strings.Join(Schemes(), ", "))
}

// Open opens the transport registered for u's scheme.
func Open(ctx context.Context, u *url.URL, cfg Config) (Transport, error) {
	scheme := strings.ToLower(u.Scheme)
	registryMu.RLock()
	open := registry[scheme]
	registryMu.RUnlock()
	if open == nil {
		return nil, &UnknownSchemeError{Scheme: scheme, Package: knownPackages[scheme]}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return open(ctx, u, cfg)
}

// Redact returns u as a string with any password replaced by "xxxxx",
// including the password-only form "redis://:secret@host" and query
// parameters that carry one (password=, sentinel_password=, as in a
// Redis Sentinel URL).
func Redact(u *url.URL) string {
	if u == nil {
		return ""
	}
	c := *u
	if c.User != nil {
		if _, has := c.User.Password(); has {
			c.User = url.UserPassword(c.User.Username(), "xxxxx")
		}
	}
	if q := c.Query(); c.RawQuery != "" {
		changed := false
		for k, vs := range q {
			if !passwordParam(k) {
				continue
			}
			for i := range vs {
				vs[i] = "xxxxx"
			}
			changed = true
		}
		if changed {
			c.RawQuery = q.Encode()
		}
	}
	return c.String()
}

// Passwords returns the passwords u carries (its user's, and the values of
// password query parameters), for removing them from errors' text.
func Passwords(u *url.URL) []string {
	var out []string
	if u == nil {
		return nil
	}
	if u.User != nil {
		if pw, ok := u.User.Password(); ok && pw != "" {
			out = append(out, pw)
		}
	}
	for k, vs := range u.Query() {
		if passwordParam(k) {
			for _, v := range vs {
				if v != "" {
					out = append(out, v)
				}
			}
		}
	}
	return out
}

func passwordParam(k string) bool {
	k = strings.ToLower(k)
	return k == "password" || k == "sentinel_password" || k == "passwd"
}
