// Package redis is docket's Redis transport and result store: tasks, ETAs,
// leases, results, unique keys, cancellation and schedule slots in Redis,
// with the same delivery contract as SQLite. Open it from a URL, importing
// the package for its side effect:
//
//	import _ "github.com/docketq/docket/transport/redis"
//
//	q, err := docket.Open(ctx, "redis://:password@host:6379/0")
//
// or build it with New on a go-redis client the application already has:
//
//	tr, err := redis.New(ctx, rdb, redis.Options{Prefix: "jobs"})
//	if err != nil { ... }
//	q, err := docket.New(tr)
//
// URLs are go-redis URLs (redis://, rediss:// for TLS, which verifies the
// server by default) plus two docket parameters, the URL form of Options;
// any parameter go-redis does not know either is refused:
//
//	prefix=NAME   key prefix (default "docket"); every key is {NAME}:…, one
//	              Redis Cluster hash slot, so each operation is one atomic
//	              Lua script
//	strict=true   refuse to start when the server would lose tasks
//	              (appendonly no, or an evicting maxmemory-policy); without
//	              it docket logs a warning
//
// Reliable delivery: a claim moves a task from its queue's sorted set into
// a lease set with a deadline, in one script; workers renew the lease; a
// lease that lapses is rescued by the next claim, with the attempt already
// counted. Nothing is popped and hoped for. ETAs and retries wait in a
// sorted set that claims move to the ready sets. Enqueue is idempotent on
// the task id: a client retry after a lost reply finds its own task and
// succeeds without a second one. Scripts are re-sent automatically after
// SCRIPT FLUSH or a restart (EVALSHA falls back to EVAL). Pub/sub wakes
// workers and waiters on any host; after a reconnect they re-check, and a
// polling fallback covers the gap.
//
// Operations (transport.Admin): the same scripts keep every task in index
// sets, all scored 0 and so ordered by id: one per queue of all its tasks,
// and one per queue and state for the scheduled, retrying and finished
// ones. Ready tasks are counted in the queue's ready set and running ones
// as the rest, so a claim, the hot path, moves no index entry. Stats
// counts with ZCARD; Search walks the sets in id order from a cursor,
// examining a bounded number of tasks per call. Each task's latest owner, progress and
// the attempts that ended without success stay in its hash; outcomes are
// counted per queue and minute for the last two hours.
//
// Upgrading from a version without the index sets needs nothing: the
// first process of this version that opens a prefix indexes the tasks
// stored before (one SCAN over the server's keys, then {prefix}:layout
// records it). While processes of the earlier version still run, the tasks
// they enqueue are indexed when a process of this version changes their
// state (so Search and Stats may miss, or count in their old state, tasks
// that only old processes touched), and the ids of tasks they prune stay
// in the indexes (counted as running) until a Search meets and drops
// them. Once every process runs this version, the indexes are exact.
//
// Durability is Redis's: with appendonly yes (appendfsync everysec) a
// crash of the server loses at most about a second of acknowledged writes;
// with appendonly no (Debian's default) a restart loses everything.
package redis

import (
	"context"
	"crypto/sha1"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/docketq/docket/internal/wire"
	"github.com/docketq/docket/transport"
)

func init() {
	transport.Register("redis", open)
	transport.Register("rediss", open)
}

// Transport is the Redis implementation of transport.Transport.
type Transport struct {
	rdb    goredis.UniversalClient
	owned  bool // rdb was made from a URL: Close closes it
	prefix string
	log    *slog.Logger
	where  string // the redacted URL or the client's address, for errors and String

	listeners transport.Listeners
	enq       enqueuer

	// replicas and replicaTimeout: every script waits for this many
	// replicas (Options.Replicas).
	replicas       int
	replicaTimeout time.Duration
}

var (
	_ transport.Transport     = (*Transport)(nil)
	_ transport.Subscriber    = (*Transport)(nil)
	_ transport.Pruner        = (*Transport)(nil)
	_ transport.ScheduleStore = (*Transport)(nil)
)

// Options configures a Transport. The URL parameters of docket.Open set
// the same fields: prefix= sets Prefix and strict= sets Strict.
type Options struct {
	// Prefix is the key prefix, "docket" when empty: every key is
	// {Prefix}:…, so all of a queue's keys share one Redis Cluster hash
	// slot. Letters, digits, '.', '_' and '-', at most 64 of them.
	// Queues that share a prefix share their tasks.
	Prefix string
	// Strict refuses a server that would lose tasks (appendonly no, or an
	// evicting maxmemory-policy); without it New logs a warning.
	Strict bool
	// Replicas, when above zero, makes every write that docket
	// acknowledges (an enqueue, an outcome, a cancel, an operator's
	// action, a schedule's slot) wait until that many replicas have it
	// (Redis's WAIT, in the same round trip), up to ReplicaTimeout
	// (default 2 s; the client's read timeout must exceed it). Redis
	// replicates asynchronously, so without it a failover can lose the
	// writes of the last moments before the primary died that no replica
	// had yet; with it, the promoted replica has every acknowledged write
	// (with Sentinel, when Replicas is at least the number of replicas
	// that can be promoted). A write that fewer replicas confirm in time
	// fails with an error wrapping ErrOutcomeUnknown: it is on the
	// primary, and may not survive a failover. Claims and lease renewals
	// do not wait: a failover that loses one gives its tasks back, as a
	// lapsed lease does. Only a standalone or Sentinel client can wait
	// (WAIT has no key to route by). URL parameters: replicas=N,
	// replica_timeout=D.
	Replicas       int
	ReplicaTimeout time.Duration
	// Logger receives the transport's diagnostics; nil discards them.
	// docket.Open passes the Queue's logger.
	Logger *slog.Logger
}

// normalize fills in the defaults and checks o.
func (o Options) normalize() (Options, error) {
	if o.Prefix == "" {
		o.Prefix = "docket"
	}
	if !validPrefix(o.Prefix) {
		return o, fmt.Errorf("docket: redis prefix %q: use letters, digits, '.', '_', '-' (no glob or hash-tag characters): %w", o.Prefix, transport.ErrInvalid)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case o.Replicas < 0 || o.ReplicaTimeout < 0:
		return o, fmt.Errorf("docket: redis replicas %d, replica timeout %s: want neither below zero: %w", o.Replicas, o.ReplicaTimeout, transport.ErrInvalid)
	case o.ReplicaTimeout == 0:
		o.ReplicaTimeout = 2 * time.Second
	}
	return o, nil
}

// checkReplicas refuses Replicas on a client WAIT cannot serve: WAIT has no
// key, so a Cluster or Ring client would send it to any shard; and the
// client must wait for its reply longer than WAIT waits, or it gives up
// first and retries the script.
func checkReplicas(client goredis.UniversalClient, o Options) error {
	if o.Replicas == 0 {
		return nil
	}
	c, ok := client.(*goredis.Client)
	if !ok {
		return fmt.Errorf("docket: redis replicas=%d: %w with a %T: WAIT needs the connection that wrote", o.Replicas, transport.ErrUnsupported, client)
	}
	if rt := c.Options().ReadTimeout; rt > 0 && rt < o.ReplicaTimeout+500*time.Millisecond {
		return fmt.Errorf("docket: redis replicas=%d: the client's read timeout (%s) must exceed the replica timeout (%s) by half a second, or it gives up on WAIT first: %w", o.Replicas, rt, o.ReplicaTimeout, transport.ErrInvalid)
	}
	return nil
}

// New returns a Transport on client, a go-redis client the caller made and
// configured: a *goredis.Client (standalone, or Sentinel through
// NewFailoverClient) or a *goredis.ClusterClient, whose one hash slot
// {Prefix} holds every key. A *goredis.Ring works too, but a Ring that
// drops an unreachable shard sends the prefix to another shard, where its
// tasks are not. New pings the server and checks its durability settings
// (see Options.Strict) within ctx. Pass the result to docket.New.
//
// The caller keeps ownership of client: the Transport's Close (and so the
// Queue's) stops docket's subscriptions but leaves client open, to be
// closed by the caller after the Queue. A Transport opened from a URL
// made its own client, and its Close closes it.
//
// client's retry settings are the caller's; every write docket makes is
// idempotent (task ids, lease fences), so retries are safe.
func New(ctx context.Context, client goredis.UniversalClient, opts Options) (*Transport, error) {
	where, err := describe(client)
	if err != nil {
		return nil, err
	}
	return newTransport(ctx, client, false, opts, where)
}

// newTransport is the one constructor behind New and the URL opener: it
// checks opts and the server, and closes client on failure when owned.
func newTransport(ctx context.Context, client goredis.UniversalClient, owned bool, opts Options, where string) (*Transport, error) {
	opts, err := opts.normalize()
	if err == nil {
		err = checkReplicas(client, opts)
	}
	if err == nil {
		t := &Transport{rdb: client, owned: owned, prefix: opts.Prefix, log: opts.Logger, where: where,
			replicas: opts.Replicas, replicaTimeout: opts.ReplicaTimeout}
		if err = t.check(ctx, opts.Strict); err == nil {
			if err := t.upgrade(ctx); err != nil {
				t.log.Warn("docket: redis could not index the tasks stored by an earlier version; Search and Stats miss them until a process indexes them", "server", t.where, "err", err)
			}
			return t, nil
		}
	}
	if owned {
		client.Close()
	}
	return nil, err
}

// describe names client's server for errors and String, without its
// password; it refuses a nil client.
func describe(client goredis.UniversalClient) (string, error) {
	var where string
	switch c := client.(type) {
	case *goredis.Client:
		if c != nil {
			o := c.Options()
			where = fmt.Sprintf("redis://%s/%d", o.Addr, o.DB)
		}
	case *goredis.ClusterClient:
		if c != nil {
			where = "redis cluster " + strings.Join(c.Options().Addrs, ",")
		}
	case *goredis.Ring:
		if c != nil {
			where = "redis ring"
		}
	case nil:
	default:
		where = fmt.Sprintf("%T", client)
	}
	if where == "" {
		return "", fmt.Errorf("docket: redis.New: the client is nil: %w", transport.ErrInvalid)
	}
	return where, nil
}

// open is the URL opener registered for redis:// and rediss://.
func open(ctx context.Context, u *url.URL, cfg transport.Config) (transport.Transport, error) {
	where := transport.Redact(u)
	opts, rest, err := parseParams(u)
	if err != nil {
		return nil, err
	}
	opts.Logger = cfg.Logger
	if _, err := opts.normalize(); err != nil {
		return nil, err
	}
	clean := *u
	clean.RawQuery = rest.Encode()
	if rest.Has("master_name") {
		// Sentinel: go-redis's failover URL, whose host and addr=
		// parameters are the Sentinels.
		fopts, err := goredis.ParseFailoverURL(clean.String())
		if err != nil {
			return nil, fmt.Errorf("docket: redis URL %s: %s: %w", where, redactErr(err, u), transport.ErrInvalid)
		}
		fopts.MaxRetries = 3 // safe: every write is idempotent (task ids, fences)
		fopts.DisableIdentity = true
		return newTransport(ctx, goredis.NewFailoverClient(fopts), true, opts, where)
	}
	ropts, err := goredis.ParseURL(clean.String())
	if err != nil {
		return nil, fmt.Errorf("docket: redis URL %s: %s: %w", where, redactErr(err, u), transport.ErrInvalid)
	}
	ropts.MaxRetries = 3 // safe: every write is idempotent (task ids, fences)
	ropts.DisableIdentity = true
	if ropts.TLSConfig != nil {
		if err := probeTLS(ctx, ropts); err != nil {
			return nil, fmt.Errorf("docket: redis %s: %w", where, err)
		}
	}
	return newTransport(ctx, goredis.NewClient(ropts), true, opts, where)
}

// parseParams reads docket's URL parameters into Options and returns the
// others, for go-redis (which refuses those it does not know).
func parseParams(u *url.URL) (Options, url.Values, error) {
	q := u.Query()
	opts := Options{Prefix: q.Get("prefix")}
	if v := q.Get("strict"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return opts, nil, fmt.Errorf("docket: redis strict=%q: want true or false: %w", v, transport.ErrInvalid)
		}
		opts.Strict = b
	}
	if v := q.Get("replicas"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return opts, nil, fmt.Errorf("docket: redis replicas=%q: want a number of replicas: %w", v, transport.ErrInvalid)
		}
		opts.Replicas = n
	}
	if v := q.Get("replica_timeout"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return opts, nil, fmt.Errorf("docket: redis replica_timeout=%q: want a duration such as 2s: %w", v, transport.ErrInvalid)
		}
		opts.ReplicaTimeout = d
	}
	for _, k := range []string{"prefix", "strict", "replicas", "replica_timeout"} {
		q.Del(k)
	}
	return opts, q, nil
}

// probeTLS completes one TLS handshake with the server before go-redis
// dials: a plain server never answers a ClientHello (it waits for the end
// of a command line), so without the probe a rediss:// URL aimed at it
// only times out, through every retry.
func probeTLS(ctx context.Context, opts *goredis.Options) error {
	wait := opts.DialTimeout
	if wait <= 0 {
		wait = 5 * time.Second
	}
	pctx := ctx
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	d := tls.Dialer{Config: opts.TLSConfig}
	c, err := d.DialContext(ctx, "tcp", opts.Addr)
	if err != nil {
		if pctx.Err() != nil {
			return pctx.Err()
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w: no TLS handshake from %s within %v: the server may not speak TLS (a plain server takes redis://)", transport.ErrInvalid, opts.Addr, wait)
		}
		return fmt.Errorf("TLS handshake with %s: %w", opts.Addr, err)
	}
	return c.Close()
}

func validPrefix(p string) bool {
	if p == "" || len(p) > 64 {
		return false
	}
	for _, c := range p {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// redactErr returns err's text with any password from u removed.
func redactErr(err error, u *url.URL) string {
	s := err.Error()
	for _, pw := range transport.Passwords(u) {
		s = strings.ReplaceAll(s, pw, "xxxxx")
	}
	return s
}

// check pings the server and warns (or, strict, refuses) when it is set up
// to lose tasks.
func (t *Transport) check(ctx context.Context, strict bool) error {
	if err := t.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("docket: redis %s: %w", t.where, t.wrap(err))
	}
	var problems []string
	if v, err := t.rdb.ConfigGet(ctx, "appendonly").Result(); err == nil && v["appendonly"] == "no" {
		problems = append(problems, "appendonly is no: a Redis restart loses every queued task")
	}
	if v, err := t.rdb.ConfigGet(ctx, "maxmemory-policy").Result(); err == nil {
		if p := v["maxmemory-policy"]; p != "" && p != "noeviction" {
			problems = append(problems, "maxmemory-policy is "+p+": Redis may evict tasks; use noeviction")
		}
	}
	for _, p := range problems {
		if strict {
			return fmt.Errorf("docket: redis %s refused (strict): %s: %w", t.where, p, transport.ErrUnsupported)
		}
		t.log.Warn("docket: redis may lose tasks", "server", t.where, "problem", p)
	}
	return nil
}

// String names the server: its URL with the password redacted, or the
// address of the client given to New.
func (t *Transport) String() string { return "redis transport " + t.where }

// Close stops the transport's subscriptions. It closes the Redis client
// only when the transport made it (opened from a URL); a client passed to
// New stays open for its owner.
func (t *Transport) Close() error {
	t.listeners.Stop()
	if !t.owned {
		return nil
	}
	return t.rdb.Close()
}

// wrap maps server replies to docket's typed errors.
func (t *Transport) wrap(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	switch {
	case strings.HasPrefix(msg, "OOM"):
		return fmt.Errorf("%w: %s", transport.ErrStorageFull, msg)
	case strings.HasPrefix(msg, "READONLY"):
		return fmt.Errorf("%w: %s", transport.ErrReadOnly, msg)
	case strings.HasPrefix(msg, "LOADING"), strings.HasPrefix(msg, "BUSY"), strings.HasPrefix(msg, "MASTERDOWN"):
		return fmt.Errorf("%w: %s", transport.ErrBusy, msg)
	}
	return err
}

// run runs script s on the prefix's keys. With Options.Replicas, it
// waits for the replicas too, in the same round trip (see runLease for
// the scripts that do not).
func (t *Transport) run(ctx context.Context, s *goredis.Script, args ...any) (any, error) {
	return t.runScript(ctx, s, t.replicas > 0, args...)
}

// runLease runs a script that leases or renews (a claim, a claim by id, a
// heartbeat's extension, progress) without waiting for replicas: a
// failover that loses its write gives the tasks back to the next claim,
// as a lapsed lease would, while an error here would drop the leases it
// took on the primary.
func (t *Transport) runLease(ctx context.Context, s *goredis.Script, args ...any) (any, error) {
	return t.runScript(ctx, s, false, args...)
}

func (t *Transport) runScript(ctx context.Context, s *goredis.Script, replicas bool, args ...any) (any, error) {
	full := append([]any{"{" + t.prefix + "}"}, args...)
	keys := []string{"{" + t.prefix + "}:ev"}
	if !replicas {
		v, err := s.Run(ctx, t.rdb, keys, full...).Result()
		return v, t.wrap(err)
	}
	// The script and WAIT in one pipeline, so on one connection: WAIT
	// counts the replicas that have this connection's writes.
	for attempt := 0; ; attempt++ {
		pipe := t.rdb.Pipeline()
		var ev *goredis.Cmd
		if attempt == 0 {
			ev = s.EvalSha(ctx, pipe, keys, full...)
		} else {
			ev = s.Eval(ctx, pipe, keys, full...)
		}
		wait := pipe.Do(ctx, "WAIT", t.replicas, t.replicaTimeout.Milliseconds())
		pipe.Exec(ctx)
		v, err := ev.Result()
		if attempt == 0 && err != nil && goredis.HasErrorPrefix(err, "NOSCRIPT") {
			continue
		}
		if err != nil {
			return v, t.wrap(err)
		}
		n, err := wait.Int64()
		switch {
		case err != nil:
			return v, fmt.Errorf("docket: redis %s: written, but the wait for its replicas failed: %w (%w)", t.where, transport.ErrOutcomeUnknown, t.wrap(err))
		case n < int64(t.replicas):
			return v, fmt.Errorf("docket: redis %s: written, but %d of %d replicas had it within %s, so a failover may lose it: %w", t.where, n, t.replicas, t.replicaTimeout, transport.ErrOutcomeUnknown)
		}
		return v, nil
	}
}

func ukHash(key string) string {
	if key == "" {
		return ""
	}
	h := sha1.Sum([]byte(key))
	return hex.EncodeToString(h[:])
}

// messageArgs appends the script fields of m (see scripts.go).
func messageArgs(args []any, m *transport.Message) ([]any, error) {
	meta, err := wire.EncodeMeta(m)
	if err != nil {
		return nil, err
	}
	created := wire.Millis(m.Created)
	ret := "0"
	if m.ReturnExisting {
		ret = "1"
	}
	args = append(args, m.ID, m.Name, m.Queue, m.Priority, wire.Millis(m.ETA), wire.Millis(m.Expires), m.MaxAttempts,
		m.Timeout.Milliseconds(), m.ResultTTL.Milliseconds(), m.UniqueKey, ukHash(m.UniqueKey),
		string(m.Payload), meta, created, ret)
	if f := m.Flow; f != nil {
		return append(args, f.ID, f.Next, f.Slot, f.Waits, int(f.Mode), f.Catch, f.Branch), nil
	}
	return append(args, "", "", -1, 0, 0, "", 0), nil
}

// outcomeUnknown reports whether a failed script call may still have run:
// any failure but a reply from the server. go-redis retries a call whose
// connection broke, so even "connection refused" can follow an attempt
// whose reply was lost after Redis ran the script.
func outcomeUnknown(err error) bool {
	var reply goredis.Error
	return !errors.As(err, &reply) && !errors.Is(err, transport.ErrStorageFull) &&
		!errors.Is(err, transport.ErrReadOnly) && !errors.Is(err, transport.ErrBusy)
}

func row(v any) []any { r, _ := v.([]any); return r }

func str(r []any, i int) string {
	if i >= len(r) {
		return ""
	}
	switch x := r[i].(type) {
	case string:
		return x
	case int64:
		return strconv.FormatInt(x, 10)
	}
	return ""
}

func num(r []any, i int) int64 {
	if i >= len(r) {
		return 0
	}
	switch x := r[i].(type) {
	case int64:
		return x
	case string:
		n, _ := strconv.ParseInt(x, 10, 64)
		return n
	}
	return 0
}

// Claim implements transport.Transport.
func (t *Transport) Claim(ctx context.Context, p transport.ClaimParams) (transport.ClaimResult, error) {
	var res transport.ClaimResult
	if p.Limit <= 0 || len(p.Queues) == 0 {
		return res, nil
	}
	args := []any{wire.Millis(p.Now), p.Owner, wire.Millis(p.LeaseUntil), p.Limit, len(p.Queues)}
	for _, q := range p.Queues {
		args = append(args, q)
	}
	args = append(args, len(p.Exclude))
	for _, x := range p.Exclude {
		args = append(args, x)
	}
	v, err := t.runLease(ctx, claimScript, args...)
	if err != nil {
		return res, fmt.Errorf("docket: redis claim: %w", err)
	}
	parts := row(v)
	for _, g := range row(parts[0]) {
		f := row(g)
		d, err := deliveryFrom(f, str(f, 13), p.Owner, p.LeaseUntil)
		if err != nil {
			return res, err
		}
		res.Deliveries = append(res.Deliveries, d)
	}
	for _, e := range row(parts[1]) {
		r := row(e)
		res.Ended = append(res.Ended, transport.Status{ID: str(r, 0), State: transport.State(num(r, 1)), Name: str(r, 2), Queue: str(r, 3), Attempt: int(num(r, 4))})
	}
	if n := num(parts, 2); n > 0 {
		res.NextAt = wire.FromMillis(n)
	}
	return res, nil
}

// deliveryFrom reads a leased task from the script's fields: name queue
// prio exp att max tmo ttl uk pay meta created err, the id (not read
// here), and fl (its workflow).
func deliveryFrom(f []any, id, owner string, leaseUntil time.Time) (transport.Delivery, error) {
	d := transport.Delivery{Owner: owner, LeaseUntil: leaseUntil}
	d.ID, d.Name, d.Queue, d.Priority = id, str(f, 0), str(f, 1), int(num(f, 2))
	d.Expires, d.Attempt, d.MaxAttempts = wire.FromMillis(num(f, 3)), int(num(f, 4)), int(num(f, 5))
	d.Timeout, d.ResultTTL = time.Duration(num(f, 6))*time.Millisecond, time.Duration(num(f, 7))*time.Millisecond
	d.UniqueKey, d.Payload = str(f, 8), []byte(str(f, 9))
	d.Created, d.LastError = wire.FromMillis(num(f, 11)), str(f, 12)
	if fl := str(f, 14); fl != "" {
		d.Flow = &transport.FlowStep{ID: fl}
	}
	return d, wire.DecodeDeliveryMeta(str(f, 10), &d.Message)
}

var _ transport.IDClaimer = (*Transport)(nil)

// ClaimIDs implements transport.IDClaimer.
func (t *Transport) ClaimIDs(ctx context.Context, p transport.ClaimIDsParams) ([]transport.ClaimIDResult, error) {
	out := make([]transport.ClaimIDResult, len(p.IDs))
	if len(p.IDs) == 0 {
		return out, nil
	}
	args := []any{wire.Millis(p.Now), p.Owner, wire.Millis(p.LeaseUntil), len(p.IDs)}
	for _, id := range p.IDs {
		args = append(args, id)
	}
	v, err := t.runLease(ctx, claimIDsScript, args...)
	if err != nil {
		return nil, fmt.Errorf("docket: redis claim by id: %w", err)
	}
	for i, x := range row(v) {
		r := row(x)
		switch str(r, 0) {
		case "lease":
			d, err := deliveryFrom(r[1:], p.IDs[i], p.Owner, p.LeaseUntil)
			if err != nil {
				return nil, err
			}
			out[i] = transport.ClaimIDResult{Delivery: &d, State: transport.StateRunning}
		case "end":
			out[i] = transport.ClaimIDResult{State: transport.State(num(r, 1)), Ended: true}
		case "left":
			out[i] = transport.ClaimIDResult{State: transport.State(num(r, 1))}
			if !out[i].State.Terminal() {
				out[i].RunAt = wire.FromMillis(num(r, 2))
			}
		}
	}
	return out, nil
}

// Extend implements transport.Transport.
func (t *Transport) Extend(ctx context.Context, p transport.ExtendParams) ([]transport.ExtendResult, error) {
	out := make([]transport.ExtendResult, len(p.Leases))
	if len(p.Leases) == 0 {
		return out, nil
	}
	args := []any{wire.Millis(p.Until), len(p.Leases)}
	for _, l := range p.Leases {
		args = append(args, l.ID, l.Attempt, l.Owner)
	}
	v, err := t.runLease(ctx, extendScript, args...)
	if err != nil {
		return nil, fmt.Errorf("docket: redis extend leases: %w", err)
	}
	r := row(v)
	for i := range out {
		switch num(r, i) {
		case -1:
			out[i].Lost = true
		case 1:
			out[i].CancelRequested = true
		}
	}
	return out, nil
}

// Finish implements transport.Transport.
func (t *Transport) Finish(ctx context.Context, p transport.FinishParams) ([]transport.FinishResult, error) {
	out := make([]transport.FinishResult, len(p.Items))
	if len(p.Items) == 0 {
		return out, nil
	}
	args := []any{wire.Millis(p.Now), len(p.Items)}
	for _, o := range p.Items {
		switch o.State {
		case transport.StateScheduled, transport.StateReady, transport.StateSucceeded, transport.StateFailed, transport.StateCancelled:
		default:
			return nil, fmt.Errorf("docket: finish task %s: invalid outcome state %v: %w", o.ID, o.State, transport.ErrInvalid)
		}
		args = append(args, o.ID, o.Attempt, o.Owner, int(o.State), wire.Millis(o.RunAt), string(o.Result), o.Error)
	}
	if h := p.Handoff; h != nil && h.Limit > 0 {
		args = append(args, h.Owner, wire.Millis(h.LeaseUntil), h.Limit, len(h.Queues))
		for _, q := range h.Queues {
			args = append(args, q)
		}
		args = append(args, len(h.Exclude))
		for _, x := range h.Exclude {
			args = append(args, x)
		}
	}
	v, err := t.run(ctx, finishScript, args...)
	if err != nil {
		return nil, fmt.Errorf("docket: redis finish: %w", err)
	}
	r := row(v)
	for i := range p.Items {
		// 2: a retry or release that ended the task, its cancel pending;
		// 3: a step's success, and its workflow has ended; a row: a
		// step's success, and the next step leased by the handoff.
		if h := row(r[i]); h != nil {
			d, err := deliveryFrom(h[2:], str(h, 1), p.Handoff.Owner, p.Handoff.LeaseUntil)
			if err != nil {
				return nil, err
			}
			out[i].Next = &d
			continue
		}
		n := num(r, i)
		out[i].Lost, out[i].Cancelled, out[i].FlowEnded = n == 0, n == 2, n == 3
	}
	return out, nil
}

// Cancel implements transport.Transport.
func (t *Transport) Cancel(ctx context.Context, p transport.CancelParams) (transport.CancelResult, error) {
	v, err := t.run(ctx, cancelScript, wire.Millis(p.Now), p.ID)
	if err != nil {
		return transport.CancelResult{}, fmt.Errorf("docket: redis cancel %s: %w", p.ID, err)
	}
	st, _ := v.(int64)
	if st < 0 {
		return transport.CancelResult{}, fmt.Errorf("docket: cancel %s: %w", p.ID, transport.ErrNotFound)
	}
	return transport.CancelResult{State: transport.State(st)}, nil
}

func (t *Transport) key(parts ...string) string {
	return "{" + t.prefix + "}:" + strings.Join(parts, ":")
}

// Get implements transport.Transport.
func (t *Transport) Get(ctx context.Context, p transport.GetParams) (transport.Info, error) {
	h, err := t.rdb.HGetAll(ctx, t.key("t", p.ID)).Result()
	if err != nil {
		return transport.Info{}, fmt.Errorf("docket: redis read task %s: %w", p.ID, t.wrap(err))
	}
	if len(h) == 0 || h["state"] == "" {
		return transport.Info{}, fmt.Errorf("docket: task %s: %w", p.ID, transport.ErrNotFound)
	}
	in, err := infoFrom(p.ID, h)
	in.Attempts = decodeAttempts(h["atts"])
	return in, err
}

func infoFrom(id string, h map[string]string) (transport.Info, error) {
	n := func(k string) int64 { v, _ := strconv.ParseInt(h[k], 10, 64); return v }
	in := transport.Info{State: transport.State(n("state")), Attempt: int(n("att"))}
	in.ID, in.Name, in.Queue, in.Priority = id, h["name"], h["queue"], int(n("prio"))
	in.Payload, in.MaxAttempts = []byte(h["pay"]), int(n("max"))
	in.Expires, in.Created = wire.FromMillis(n("exp")), wire.FromMillis(n("created"))
	in.Timeout, in.ResultTTL = time.Duration(n("tmo"))*time.Millisecond, time.Duration(n("ttl"))*time.Millisecond
	in.UniqueKey, in.Error, in.CancelRequested = h["uk"], h["err"], h["cancel"] == "1"
	in.RunAt, in.Started, in.Finished = wire.FromMillis(n("run_at")), wire.FromMillis(n("started")), wire.FromMillis(n("finished"))
	if r, ok := h["res"]; ok {
		in.Result = []byte(r)
	}
	in.Owner = h["owner"]
	if v := h["prog"]; v != "" { // a claim empties it: a new attempt has none yet
		in.Progress = []byte(v)
	}
	if in.State == transport.StateScheduled {
		in.ETA = in.RunAt
	}
	if fl := h["fl"]; fl != "" {
		in.Flow = &transport.FlowStep{ID: fl, Next: h["fn"], Slot: int(n("fs")), Waits: max(int(n("fw")), 0)}
	}
	return in, wire.DecodeMeta(h["meta"], &in.Message)
}

var _ transport.Workflows = (*Transport)(nil)

// Steps implements transport.Workflows.
func (t *Transport) Steps(ctx context.Context, p transport.StepsParams) ([]transport.Info, error) {
	ids, err := t.rdb.SMembers(ctx, t.key("f", p.ID)).Result()
	if err != nil {
		return nil, fmt.Errorf("docket: redis read workflow %s: %w", p.ID, t.wrap(err))
	}
	slices.Sort(ids)
	out, err := t.readTasks(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("docket: redis read workflow %s: %w", p.ID, err)
	}
	return out, nil
}

// readTasks reads the tasks ids in one pipeline, in their order, leaving
// out those that no longer exist (pruned or deleted since).
func (t *Transport) readTasks(ctx context.Context, ids []string) ([]transport.Info, error) {
	pipe := t.rdb.Pipeline()
	cmds := make([]*goredis.MapStringStringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HGetAll(ctx, t.key("t", id))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return nil, t.wrap(err)
	}
	out := make([]transport.Info, 0, len(ids))
	for i, c := range cmds {
		h := c.Val()
		if len(h) == 0 || h["state"] == "" {
			continue
		}
		in, err := infoFrom(ids[i], h)
		if err != nil {
			return nil, err
		}
		out = append(out, in)
	}
	return out, nil
}

var _ transport.FlowOutbox = (*Transport)(nil)

// Outbox implements transport.FlowOutbox. Steps of the outbox that are no
// longer ready (claimed, ended or deleted since) are taken off it.
func (t *Transport) Outbox(ctx context.Context, p transport.OutboxParams) ([]transport.Message, error) {
	ids, err := t.rdb.ZRange(ctx, t.key("ob"), 0, int64(max(p.Limit, 1))-1).Result()
	if err != nil {
		return nil, fmt.Errorf("docket: redis read workflow outbox: %w", t.wrap(err))
	}
	in, err := t.readTasks(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("docket: redis read workflow outbox: %w", err)
	}
	out := make([]transport.Message, 0, len(in))
	gone := map[string]bool{}
	for _, id := range ids {
		gone[id] = true
	}
	for _, x := range in {
		if x.State == transport.StateReady {
			out = append(out, x.Message)
			delete(gone, x.ID)
		}
	}
	if len(gone) > 0 {
		if err := t.Published(ctx, transport.PublishedParams{Now: p.Now, IDs: slices.Collect(maps.Keys(gone))}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

var _ transport.Overdue = (*Transport)(nil)

// Overdue implements transport.Overdue. The scheduled and running tasks
// come from the head of their zsets (by time; see overdueIDs), the ready
// ones from the head of each queue's.
func (t *Transport) Overdue(ctx context.Context, p transport.OverdueParams) ([]transport.Message, error) {
	if len(p.Queues) == 0 {
		return nil, nil
	}
	limit := max(p.Limit, 1)
	var ids []string
	for _, k := range []string{t.key("sched"), t.key("lease")} {
		got, err := t.overdueIDs(ctx, k, p.Before, p.Queues, limit)
		if err != nil {
			return nil, fmt.Errorf("docket: redis read overdue tasks: %w", t.wrap(err))
		}
		ids = append(ids, got...)
	}
	pipe := t.rdb.Pipeline()
	cmds := make([]*goredis.StringSliceCmd, len(p.Queues))
	for i, q := range p.Queues {
		cmds[i] = pipe.ZRange(ctx, t.key("r", q), 0, int64(limit)-1)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return nil, fmt.Errorf("docket: redis read overdue tasks: %w", t.wrap(err))
	}
	for _, c := range cmds {
		ids = append(ids, c.Val()...)
	}
	in, err := t.readTasks(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("docket: redis read overdue tasks: %w", err)
	}
	in = slices.DeleteFunc(in, func(x transport.Info) bool {
		switch x.State {
		case transport.StateScheduled, transport.StateReady, transport.StateRunning:
			return !x.RunAt.Before(p.Before) || !slices.Contains(p.Queues, x.Queue)
		}
		return true
	})
	slices.SortFunc(in, func(a, b transport.Info) int { return a.RunAt.Compare(b.RunAt) })
	out := make([]transport.Message, 0, min(len(in), limit))
	for _, x := range in[:min(len(in), limit)] {
		out = append(out, x.Message)
	}
	return out, nil
}

// overdueScan bounds how many entries of a zset one Overdue reads, and
// overduePage how many it reads per round trip.
const (
	overdueScan = 20_000
	overduePage = 500
)

// overdueIDs returns up to limit ids of the zset key (scored by time in
// ms) scored before before, of tasks in queues. The zsets hold every
// queue's tasks, and a queue with a backlog may hold many past their time
// at its head: the queue of each is checked as it is read, up to
// overdueScan entries.
func (t *Transport) overdueIDs(ctx context.Context, key string, before time.Time, queues []string, limit int) ([]string, error) {
	top := strconv.FormatInt(before.UnixMilli()-1, 10)
	var out []string
	for offset := int64(0); offset < overdueScan && len(out) < limit; {
		ids, err := t.rdb.ZRangeByScore(ctx, key, &goredis.ZRangeBy{Min: "-inf", Max: top, Offset: offset, Count: overduePage}).Result()
		if err != nil || len(ids) == 0 {
			return out, err
		}
		pipe := t.rdb.Pipeline()
		qs := make([]*goredis.StringCmd, len(ids))
		for i, id := range ids {
			qs[i] = pipe.HGet(ctx, t.key("t", id), "queue")
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
			return nil, err
		}
		for i, c := range qs {
			if slices.Contains(queues, c.Val()) {
				out = append(out, ids[i])
			}
		}
		offset += int64(len(ids))
		if len(ids) < overduePage {
			break
		}
	}
	return out[:min(len(out), limit)], nil
}

// Published implements transport.FlowOutbox.
func (t *Transport) Published(ctx context.Context, p transport.PublishedParams) error {
	if len(p.IDs) == 0 {
		return nil
	}
	if err := t.rdb.ZRem(ctx, t.key("ob"), p.IDs).Err(); err != nil {
		return fmt.Errorf("docket: redis workflow outbox: %w", t.wrap(err))
	}
	return nil
}

// CancelFlow implements transport.Workflows: one script.
func (t *Transport) CancelFlow(ctx context.Context, p transport.CancelParams) (transport.CancelFlowResult, error) {
	var res transport.CancelFlowResult
	v, err := t.run(ctx, cancelFlowScript, wire.Millis(p.Now), p.ID)
	if err != nil {
		return res, fmt.Errorf("docket: redis cancel workflow %s: %w", p.ID, err)
	}
	if n, ok := v.(int64); ok && n < 0 {
		return res, fmt.Errorf("docket: cancel workflow %s: %w", p.ID, transport.ErrNotFound)
	}
	parts := row(v)
	for _, x := range row(parts[0]) {
		res.Ended = append(res.Ended, str([]any{x}, 0))
	}
	for _, x := range row(parts[1]) {
		res.Running = append(res.Running, str([]any{x}, 0))
	}
	return res, nil
}

// Lookup implements transport.Transport.
func (t *Transport) Lookup(ctx context.Context, p transport.LookupParams) ([]transport.Status, error) {
	if len(p.IDs) == 0 {
		return nil, nil
	}
	pipe := t.rdb.Pipeline()
	cmds := make([]*goredis.SliceCmd, len(p.IDs))
	for i, id := range p.IDs {
		cmds[i] = pipe.HMGet(ctx, t.key("t", id), "state", "cancel")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return nil, fmt.Errorf("docket: redis look up tasks: %w", t.wrap(err))
	}
	var out []transport.Status
	for i, c := range cmds {
		v := c.Val()
		if len(v) < 2 || v[0] == nil {
			continue
		}
		st, _ := strconv.Atoi(fmt.Sprint(v[0]))
		out = append(out, transport.Status{ID: p.IDs[i], State: transport.State(st), CancelRequested: fmt.Sprint(v[1]) == "1"})
	}
	return out, nil
}

// Prune implements transport.Pruner.
func (t *Transport) Prune(ctx context.Context, p transport.PruneParams) (int, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = 1000
	}
	v, err := t.run(ctx, pruneScript, wire.Millis(p.Now), limit)
	if err != nil {
		return 0, fmt.Errorf("docket: redis prune: %w", err)
	}
	n, _ := v.(int64)
	return int(n), nil
}

var _ transport.Lister = (*Transport)(nil)

// keyNode returns the client whose SCAN sees the prefix's keys: in a
// cluster or ring, the one node that holds their hash tag.
func (t *Transport) keyNode(ctx context.Context) (goredis.Cmdable, error) {
	switch c := t.rdb.(type) {
	case *goredis.ClusterClient:
		return c.MasterForKey(ctx, t.key("t"))
	case *goredis.Ring:
		return c.GetShardClientForKey(t.key("t"))
	}
	return t.rdb, nil
}

// List implements transport.Lister by scanning the task keys: it costs a
// pass over the keyspace, so it is meant for tests and administration, not
// for hot paths.
func (t *Transport) List(ctx context.Context, p transport.ListParams) ([]transport.Info, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = 1000
	}
	var ids []string
	prefix := t.key("t", "")
	node, err := t.keyNode(ctx)
	if err != nil {
		return nil, fmt.Errorf("docket: redis list tasks: %w", t.wrap(err))
	}
	iter := node.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		if id := strings.TrimPrefix(iter.Val(), prefix); id > p.After {
			ids = append(ids, id)
		}
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("docket: redis list tasks: %w", t.wrap(err))
	}
	slices.Sort(ids)
	states := map[transport.State]bool{}
	for _, s := range p.States {
		states[s] = true
	}
	var out []transport.Info
	for len(ids) > 0 && len(out) < limit {
		chunk := ids[:min(len(ids), 500)]
		ids = ids[len(chunk):]
		infos, err := t.readTasks(ctx, chunk)
		if err != nil {
			return nil, fmt.Errorf("docket: redis list tasks: %w", err)
		}
		for _, in := range infos {
			if p.Name != "" && in.Name != p.Name || p.Queue != "" && in.Queue != p.Queue || len(states) > 0 && !states[in.State] {
				continue
			}
			out = append(out, in)
			if len(out) == limit {
				break
			}
		}
	}
	return out, nil
}

// Ping implements transport.Pinger with Redis's PING.
func (t *Transport) Ping(ctx context.Context) error {
	if err := t.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("docket: redis %s: ping: %w", t.where, err)
	}
	return nil
}
