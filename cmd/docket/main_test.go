package main

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/docketq/docket/internal/amqptest"
	"github.com/docketq/docket/internal/longtest"
	"github.com/docketq/docket/internal/redistest"
)

// TestMain makes the test binary also the docket command and the fixture
// command the scripts in testdata run.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"docket":  func() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) },
		"fixture": func() { os.Exit(fixtureMain()) },
	})
}

// params returns the scripts' parameters: setup adds what a backend
// needs.
func params(setup func(env *testscript.Env) error) testscript.Params {
	return testscript.Params{
		RequireExplicitExec: true,
		Setup: func(env *testscript.Env) error {
			// A race-enabled binary sleeps a second on exit by default;
			// the scripts run the command dozens of times.
			env.Setenv("GORACE", "atexit_sleep_ms=0")
			return setup(env)
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"grab":   grab,
			"common": common,
		},
	}
}

// grab VAR REGEXP sets $VAR to the first submatch of REGEXP in the last
// command's stdout (multi-line mode), and fails when nothing matches.
func grab(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: grab VAR REGEXP")
	}
	re, err := regexp.Compile("(?m)" + args[1])
	ts.Check(err)
	m := re.FindStringSubmatch(ts.ReadFile("stdout"))
	if len(m) < 2 {
		ts.Fatalf("grab: no match for %q in stdout", args[1])
	}
	ts.Setenv(args[0], m[1])
}

// common VAR A B sets $VAR to the longest common prefix of A and B.
func common(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: common VAR A B")
	}
	a, b := args[1], args[2]
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	ts.Setenv(args[0], a[:n])
}

// story sets the size of the 3 a.m. story in the script's environment.
func story(env *testscript.Env, n, fail int) {
	env.Setenv("N", strconv.Itoa(n))
	env.Setenv("FAIL", strconv.Itoa(fail))
	env.Setenv("OK", strconv.Itoa(n-fail))
	// As the tables print them.
	env.Setenv("NS", count(int64(n)))
	env.Setenv("OKS", count(int64(n-fail)))
	env.Setenv("FAILS", count(int64(fail)))
	env.Setenv("RERUNS", count(int64(n+fail)))
}

// TestScripts runs every script in testdata on a SQLite file in the
// script's $WORK.
func TestScripts(t *testing.T) {
	t.Parallel()
	p := params(func(env *testscript.Env) error {
		env.Setenv("DOCKET_URL", "sqlite:"+filepath.Join(env.WorkDir, "docket.db"))
		story(env, longtest.Pick(2_000, 10_000), longtest.Pick(400, 2_000))
		return nil
	})
	p.Dir = "testdata"
	testscript.Run(t, p)
}

// TestStoryRedis runs the 3 a.m. story on Redis, under a fresh key prefix
// deleted afterwards.
func TestStoryRedis(t *testing.T) {
	t.Parallel()
	base := os.Getenv("DOCKET_TEST_REDIS_URL")
	if base == "" {
		t.Skip("set DOCKET_TEST_REDIS_URL (redis://127.0.0.1:6379/15) to run the story on Redis")
	}
	p := params(func(env *testscript.Env) error {
		prefix := freshPrefix()
		u, err := withParam(base, "prefix", prefix)
		if err != nil {
			return err
		}
		env.Setenv("DOCKET_URL", u)
		env.Defer(func() { redistest.DeletePrefix(base, prefix) })
		story(env, longtest.Pick(2_000, 10_000), longtest.Pick(400, 2_000))
		return nil
	})
	p.Files = []string{"testdata/story.txtar"}
	testscript.Run(t, p)
}

// TestStoryAMQP runs the 3 a.m. story on RabbitMQ with a SQLite result
// store, under a fresh name prefix whose queues and exchanges are deleted
// afterwards. It uses fewer tasks than the other backends: every task is a
// broker round trip through quorum queues.
func TestStoryAMQP(t *testing.T) {
	t.Parallel()
	base := os.Getenv("DOCKET_TEST_AMQP_URL")
	if base == "" {
		t.Skip("set DOCKET_TEST_AMQP_URL (amqp://guest:guest@127.0.0.1:5672/) to run the story on RabbitMQ")
	}
	p := params(func(env *testscript.Env) error {
		prefix := freshPrefix()
		u, err := withParam(base, "prefix", prefix)
		if err != nil {
			return err
		}
		env.Setenv("DOCKET_URL", u)
		env.Setenv("DOCKET_RESULT_URL", "sqlite:"+filepath.Join(env.WorkDir, "results.db"))
		env.Defer(func() { amqptest.DeleteTopology(t, base, prefix, "default") })
		story(env, longtest.Pick(500, 2_000), longtest.Pick(100, 400))
		return nil
	})
	p.Files = []string{"testdata/story.txtar"}
	testscript.Run(t, p)
}

// freshPrefix returns a key or name prefix no other run uses (RabbitMQ
// takes at most 32 characters).
func freshPrefix() string {
	return fmt.Sprintf("dtcli-%d-%s", os.Getpid(), strconv.FormatInt(time.Now().UnixNano(), 36))
}

// withParam returns raw with the query parameter key set to value.
func withParam(raw, key, value string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	q := u.Query()
	q.Set(key, value)
	u.RawQuery = q.Encode()
	return u.String(), nil
}
