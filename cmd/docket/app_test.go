package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/transport"
)

// runApp runs the command in this process, with stderr taken for a
// terminal or not.
func runApp(t *testing.T, stderrTTY bool, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	a := newApp(strings.NewReader(""), &out, &errb, func(string) string { return "" })
	a.stderrTTY = stderrTTY
	code = a.main(args)
	return code, out.String(), errb.String()
}

// A bulk action over 2,000 tasks draws a progress bar when stderr is a
// terminal, and never otherwise.
func TestProgressBar(t *testing.T) {
	u := "sqlite:" + filepath.Join(t.TempDir(), "docket.db")
	if err := fixtureSeed(context.Background(), []string{"--url", u, "--n", "2500", "--queue", "a"}); err != nil {
		t.Fatal(err)
	}
	if err := fixtureSeed(context.Background(), []string{"--url", u, "--n", "2500", "--queue", "b"}); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runApp(t, true, "--url", u, "tasks", "delete", "--all", "--queue", "a", "--yes")
	if code != 0 || out != "delete: changed 2500, skipped 0, missing 0\n" {
		t.Fatalf("delete on a terminal: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	final := "\rdelete [" + strings.Repeat("#", 30) + "] 2,500/2,500 examined, 2,500 changed 100%\033[K\n"
	if !strings.HasSuffix(errs, final) {
		t.Errorf("stderr on a terminal = %q; want it to end with %q", errs, final)
	}

	code, out, errs = runApp(t, false, "--url", u, "tasks", "delete", "--all", "--queue", "b", "--yes")
	if code != 0 || out != "delete: changed 2500, skipped 0, missing 0\n" || errs != "" {
		t.Fatalf("delete, not on a terminal: exit %d, stdout %q, stderr %q; want no stderr", code, out, errs)
	}
}

// A small action draws no bar, even on a terminal.
func TestNoProgressBarWhenSmall(t *testing.T) {
	u := "sqlite:" + filepath.Join(t.TempDir(), "docket.db")
	if err := fixtureSeed(context.Background(), []string{"--url", u, "--n", "20"}); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runApp(t, true, "--url", u, "tasks", "cancel", "--all", "--yes")
	if code != 0 || out != "cancel: changed 20, skipped 0, missing 0\n" || strings.Contains(errs, "examined") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errs)
	}
}

func TestExitCode(t *testing.T) {
	a := &app{ran: true}
	for _, c := range []struct {
		err  error
		want int
	}{
		{fmt.Errorf("docket: x: %w", docket.ErrNotFound), exitInput},
		{fmt.Errorf("docket: x: %w", docket.ErrInvalid), exitInput},
		{fmt.Errorf("docket: x: %w", docket.ErrUnsupported), exitInput},
		{&transport.UnknownSchemeError{Scheme: "pg"}, exitInput},
		{inputf(docket.ErrInvalid, "docket: not confirmed"), exitInput},
		{usagef(nil, "docket: bad"), exitInput},
		{fmt.Errorf("docket: x: %w", context.DeadlineExceeded), exitFailure},
		{errors.New("dial tcp: connection refused"), exitFailure},
		{fmt.Errorf("docket: x: %w", docket.ErrBusy), exitFailure},
	} {
		if got := a.exitCode(c.err); got != c.want {
			t.Errorf("exitCode(%v) = %d, want %d", c.err, got, c.want)
		}
	}
	if got := (&app{}).exitCode(errors.New(`unknown flag: --x`)); got != exitInput {
		t.Errorf("an error before the command ran (cobra's) = %d, want %d", got, exitInput)
	}
}

// message puts an error on one line, prefixed once, without passwords.
func TestMessage(t *testing.T) {
	a := &app{ran: true, secrets: []string{"p@ss word"}}
	got := a.message(errors.New("docket: open: docket: dial redis://:p%40ss%20word@h/0\nfailed\n\tagain"))
	if want := "docket: open: dial redis://:xxxxx@h/0 failed again"; got != want {
		t.Errorf("message = %q, want %q", got, want)
	}
}

func TestFormat(t *testing.T) {
	now := time.Date(2024, 5, 1, 3, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		t          time.Time
		short, two string
	}{
		{time.Time{}, "-", "-"},
		{now.Add(-300 * time.Millisecond), "now", "now"},
		{now.Add(-45 * time.Second), "45s ago", "45s ago"},
		{now.Add(-(3*time.Minute + 12*time.Second)), "3m ago", "3m12s ago"},
		{now.Add(2*time.Hour + 5*time.Minute), "in 2h", "in 2h5m"},
		{now.Add(-(100*time.Hour + 1)), "4d ago", "4d4h ago"},
	} {
		if got := ago(c.t, now); got != c.short {
			t.Errorf("ago(%v) = %q, want %q", c.t, got, c.short)
		}
		if got := agoLong(c.t, now); got != c.two {
			t.Errorf("agoLong(%v) = %q, want %q", c.t, got, c.two)
		}
	}
	if got := sparkline([]int64{0, 1, 50, 100}); got != "▁▂▅█" {
		t.Errorf("sparkline = %q", got)
	}
	if got := sparkline([]int64{0, 0}); got != "▁▁" {
		t.Errorf("sparkline of zeros = %q", got)
	}
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -2000: "-2,000"} {
		if got := count(n); got != want {
			t.Errorf("count(%d) = %q, want %q", n, got, want)
		}
	}
	if got := firstLine("\n  boom: it broke\nstack\n", 8); got != "boom: i…" {
		t.Errorf("firstLine = %q", got)
	}
}

func TestParseTime(t *testing.T) {
	now := time.Date(2024, 5, 1, 3, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"":                     {},
		"90m":                  now.Add(-90 * time.Minute),
		"3d":                   now.Add(-72 * time.Hour),
		"1d12h":                now.Add(-36 * time.Hour),
		"2024-04-30T10:00:00Z": time.Date(2024, 4, 30, 10, 0, 0, 0, time.UTC),
		"2024-04-30":           time.Date(2024, 4, 30, 0, 0, 0, 0, time.Local),
		"2024-04-30 10:15":     time.Date(2024, 4, 30, 10, 15, 0, 0, time.Local),
	} {
		got, err := parseTime(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseTime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"yesterday", "-5m", "3x", "d"} {
		if _, err := parseTime(in, now); err == nil {
			t.Errorf("parseTime(%q) succeeded; want an error", in)
		}
	}
}

func TestSQLitePath(t *testing.T) {
	for in, want := range map[string]string{
		"sqlite:app.db":             "app.db",
		"app.db":                    "app.db",
		"sqlite:///var/lib/x.db":    "/var/lib/x.db",
		"sqlite:dir/a#b.db":         "dir/a#b.db",
		"sqlite:x.db?shared=true":   "x.db",
		"memory:":                   "",
		"sqlite::memory:":           "",
		"redis://localhost:6379/0":  "",
		"amqp://guest:guest@host/v": "",
	} {
		got, ok := sqlitePath(in)
		if got != want || ok != (want != "") {
			t.Errorf("sqlitePath(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}
