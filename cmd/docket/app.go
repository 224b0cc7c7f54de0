package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/docketq/docket"
	"github.com/docketq/docket/store/sqlite"
	"github.com/docketq/docket/transport"
	_ "github.com/docketq/docket/transport/all" // every backend a URL can name
)

// Exit statuses.
const (
	exitOK      = 0
	exitFailure = 1 // the backend failed, or was unreachable
	exitInput   = 2 // bad input, or nothing matched; nothing was changed
)

// app is one run of the command: its streams, environment and global
// flags. Nothing outlives it, so tests run many in one process.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	now            func() time.Time
	// stdinTTY and stderrTTY say whether a person is there to answer a
	// confirmation and to watch a progress bar.
	stdinTTY, stderrTTY bool

	// Global flags.
	url, resultURL string
	json           bool
	timeout        time.Duration
	timeoutSet     bool
	// queues are the --queue of docket stats and docket queues.
	queues []string

	// ran is set once a command's own code starts: an error before it is
	// cobra's (an unknown flag or command, a wrong number of arguments).
	ran bool
	// secrets are the passwords of the URLs given, scrubbed from every
	// message as a last line of defence.
	secrets []string
}

func newApp(stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) *app {
	return &app{
		stdin: stdin, stdout: stdout, stderr: stderr, getenv: getenv, now: time.Now,
		stdinTTY: isTerminal(stdin), stderrTTY: isTerminal(stderr),
	}
}

// isTerminal reports whether f is a character device (a terminal).
func isTerminal(f any) bool {
	file, ok := f.(*os.File)
	if !ok || file == nil {
		return false
	}
	st, err := file.Stat()
	return err == nil && st.Mode()&fs.ModeCharDevice != 0
}

// usageError is bad input found by the command itself: exit status 2.
type usageError struct {
	msg string
	cmd string // the command whose --help explains, if any
}

func (e *usageError) Error() string { return e.msg }

// Unwrap makes a usage error match docket.ErrInvalid.
func (e *usageError) Unwrap() error { return docket.ErrInvalid }

func usagef(cmd *cobra.Command, format string, args ...any) error {
	e := &usageError{msg: fmt.Sprintf(format, args...)}
	if cmd != nil {
		e.cmd = cmd.CommandPath()
	}
	return e
}

// inputError is a refusal that is not about syntax (nothing matched, a
// confirmation was refused): exit status 2, without a pointer to --help.
// It matches a sentinel of package transport.
type inputError struct {
	msg string
	err error
}

func (e *inputError) Error() string { return e.msg }

// Unwrap returns the sentinel the refusal matches.
func (e *inputError) Unwrap() error { return e.err }

func inputf(sentinel error, format string, args ...any) error {
	return &inputError{msg: fmt.Sprintf(format, args...), err: sentinel}
}

func (a *app) main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetIn(a.stdin)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	code := a.exitCode(err)
	fmt.Fprintln(a.stderr, a.message(err))
	return code
}

// exitCode classifies err: 2 when the input was at fault (nothing was
// changed), 1 otherwise.
func (a *app) exitCode(err error) int {
	var ue *usageError
	var ie *inputError
	var se *transport.UnknownSchemeError
	switch {
	case errors.As(err, &ue), errors.As(err, &ie), errors.As(err, &se), !a.ran:
		return exitInput
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return exitFailure
	case errors.Is(err, docket.ErrInvalid), errors.Is(err, docket.ErrNotFound),
		errors.Is(err, docket.ErrUnsupported), errors.Is(err, docket.ErrDuplicate),
		errors.Is(err, docket.ErrIncompatible):
		return exitInput
	}
	return exitFailure
}

var spaces = regexp.MustCompile(`\s*\n\s*`)

// message renders err as the one line printed on stderr: prefixed
// "docket:", on one line, with any password of the URLs scrubbed.
func (a *app) message(err error) string {
	msg := err.Error()
	var ue *usageError
	switch {
	case errors.Is(err, context.DeadlineExceeded) && a.ran:
		msg = fmt.Sprintf("%s (the --timeout of %s ran out)", msg, a.timeout)
	case errors.As(err, &ue) && ue.cmd != "":
		msg = fmt.Sprintf("%s (see '%s --help')", msg, ue.cmd)
	case !a.ran && !errors.As(err, &ue):
		msg += " (see 'docket --help')"
	}
	msg = strings.TrimSpace(spaces.ReplaceAllString(msg, " "))
	// Wrapped errors repeat the prefix: "docket: enqueue x: docket: ...".
	msg = strings.ReplaceAll(msg, ": docket: ", ": ")
	if !strings.HasPrefix(msg, "docket:") {
		msg = "docket: " + msg
	}
	return a.scrub(msg)
}

// scrub replaces every password of the URLs given with xxxxx.
func (a *app) scrub(s string) string {
	for _, p := range a.secrets {
		// As given, and as a URL, a path or a query would escape it.
		forms := []string{p, url.QueryEscape(p), url.PathEscape(p),
			strings.TrimPrefix(url.UserPassword("", p).String(), ":")}
		for _, f := range forms {
			s = strings.ReplaceAll(s, f, "xxxxx")
		}
	}
	return s
}

// action wraps a command's code: it marks the run as the command's own
// and bounds it by --timeout.
func (a *app) action(fn func(ctx context.Context, cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		a.ran = true
		a.timeoutSet = cmd.Flags().Changed("timeout")
		return fn(cmd.Context(), cmd, args)
	}
}

// bounded returns ctx bounded by --timeout (0: no bound).
func (a *app) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	if a.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, a.timeout)
}

// backendURL returns --url, or $DOCKET_URL, and notes its password.
func (a *app) backendURL() (string, error) {
	raw := a.url
	if raw == "" {
		raw = a.getenv("DOCKET_URL")
	}
	if raw == "" {
		return "", &usageError{msg: "docket: no backend: pass --url or set DOCKET_URL (sqlite:path/to/docket.db, redis://host:6379/0, or amqp://host:5672/ with --result-url)"}
	}
	a.noteSecret(raw)
	res := a.resultURL
	if res == "" {
		res = a.getenv("DOCKET_RESULT_URL")
	}
	a.resultURL = res
	a.noteSecret(res)
	return raw, nil
}

func (a *app) noteSecret(raw string) {
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			a.secrets = append(a.secrets, p)
		}
	}
}

// redact returns raw with its password replaced, for messages.
func (a *app) redact(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.Scheme != "" && u.Opaque == "" {
		return transport.Redact(u)
	}
	return a.scrub(raw)
}

// open connects to the backend. Unless create is set, a SQLite file must
// exist: a typo in the path should not make an empty database that then
// reports no tasks.
func (a *app) open(ctx context.Context, create bool, opts ...docket.Option) (*docket.Queue, error) {
	raw, err := a.backendURL()
	if err != nil {
		return nil, err
	}
	if path, ok := sqlitePath(raw); ok && !create {
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return nil, inputf(docket.ErrNotFound, "docket: no database at %s (check --url or DOCKET_URL; workers create it when they start)", path)
		}
	}
	ctx, cancel := a.bounded(ctx)
	defer cancel()
	opts = append([]docket.Option{docket.ResultStore(a.resultURL), docket.Logger(slog.New(slog.DiscardHandler))}, opts...)
	q, err := docket.Open(ctx, raw, opts...)
	if err != nil {
		return nil, err
	}
	return q, nil
}

var schemeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:`)

// sqlitePath returns the file a sqlite: URL or bare path names, as
// docket.Open reads it; false for other URLs and in-memory databases.
func sqlitePath(raw string) (string, bool) {
	var u *url.URL
	switch {
	case !schemeRE.MatchString(raw):
		u = &url.URL{Scheme: "sqlite", Opaque: url.PathEscape(raw)}
	case strings.HasPrefix(strings.ToLower(raw), "sqlite:"):
		var err error
		if u, err = url.Parse(strings.ReplaceAll(raw, "#", "%23")); err != nil {
			return "", false
		}
	default:
		return "", false
	}
	o, err := sqlite.ParseURL(u)
	if err != nil || o.Memory || o.Path == "" {
		return "", false
	}
	return o.Path, true
}
