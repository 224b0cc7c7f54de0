package celery_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/celerytest"
	"github.com/docketq/docket/internal/longtest"
	"github.com/docketq/docket/transport/celery"
	amqp "github.com/rabbitmq/amqp091-go"
)

// brokers are the setups the tests against Celery run on: Redis as broker
// and backend; RabbitMQ with the Redis backend; RabbitMQ with the rpc
// backend.
var brokers = []struct {
	name string
	app  func(testing.TB) *celerytest.App
}{
	{"redis", celerytest.New},
	{"amqp", func(t testing.TB) *celerytest.App { return celerytest.NewAMQP(t, false) }},
	{"rpc", func(t testing.TB) *celerytest.App { return celerytest.NewAMQP(t, true) }},
}

// open returns a docket Queue on the app's broker and backend in Celery's
// format.
func open(t *testing.T, app *celerytest.App, opts ...docket.Option) *docket.Queue {
	t.Helper()
	// docket's log, shown if the test fails.
	logs := &celerytest.Buffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("docket's log:\n%s", logs.String())
		}
	})
	opts = append([]docket.Option{docket.Logger(slog.New(slog.NewTextHandler(logs, nil)))}, opts...)
	q, err := docket.Open(context.Background(), app.DocketURL(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

// run runs q's worker until the test ends.
func run(t *testing.T, q *docket.Queue) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("worker: %v", err)
		}
	})
}

type sum struct {
	X int `json:"x"`
	Y int `json:"y"`
}

// A Python app calls tasks a docket worker runs, and reads their results
// as a Celery client: a value, a failure raised again, a countdown kept,
// an expired task revoked, an unknown task not registered, a retry, a
// chain and a link followed, and a chord refused with a clear error. On
// RabbitMQ, Celery's producer gives an expired task to RabbitMQ to drop
// (no result ever comes, between Celery's own processes too), and the rpc
// backend does not take chords: those calls are left out there.
func TestCeleryCallsDocket(t *testing.T) {
	for _, b := range brokers {
		t.Run(b.name, func(t *testing.T) { celeryCallsDocket(t, b.name, b.app(t)) })
	}
}

func celeryCallsDocket(t *testing.T, mode string, app *celerytest.App) {
	queue := fmt.Sprintf("docket-celery-calls-%d", time.Now().UnixNano())
	app.Forget(t, []string{queue, celery.DeadList(queue)})
	q := open(t, app, docket.Queues(map[string]int{queue: 1}))
	on := docket.OnQueue(queue)
	if err := q.Register(
		docket.NewTask("tasks.add", func(ctx context.Context, xy []int) (int, error) {
			n := 0
			for _, v := range xy {
				n += v
			}
			return n, nil
		}, on),
		docket.NewTask("tasks.addkw", func(ctx context.Context, s sum) (int, error) { return s.X + s.Y, nil }, on),
		docket.NewTask("tasks.fail", func(ctx context.Context, msg []string) (int, error) {
			return 0, docket.Permanent(errors.New(msg[0]))
		}, on),
		docket.NewTask("tasks.flaky", func(ctx context.Context, _ []any) (int, error) {
			tc, _ := docket.FromContext(ctx)
			if tc.Attempt < 2 {
				return 0, docket.RetryAfter(100 * time.Millisecond)
			}
			return tc.Attempt - 1, nil
		}, on),
	); err != nil {
		t.Fatal(err)
	}
	run(t, q)
	out, err := app.Python("call.py", queue, mode).Output()
	if err != nil {
		t.Fatalf("call.py: %v\n%s", err, out)
	}
	var got map[string]struct {
		Value   json.RawMessage
		Seconds float64
		Error   string
		Message string
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("call.py printed %s: %v", out, err)
	}
	want := map[string]string{
		"add": "5", "kwargs": "9", "countdown": "2", "retry": "1", "chain": "15", "link": "103",
		"fail":    "TaskError: kaput",
		"expired": "TaskRevokedError: expired",
		"unknown": "NotRegistered: 'tasks.nope'",
		"chord":   "NotImplementedError: docket: chords are not supported",
	}
	deadWant := 2 // the unknown task and the chord's member
	if mode != "redis" {
		delete(want, "expired")
	}
	if mode == "rpc" {
		delete(want, "chord")
		deadWant = 1
	}
	if len(got) != len(want) {
		t.Errorf("call.py made %d calls, want %d: %s", len(got), len(want), out)
	}
	for name, want := range want {
		g := got[name]
		text := string(g.Value)
		if g.Error != "" {
			text = g.Error + ": " + g.Message
		}
		if !strings.HasPrefix(text, want) {
			t.Errorf("%s: got %s, want %s", name, text, want)
		}
	}
	if s := got["countdown"].Seconds; s < 2 {
		t.Errorf("countdown=2 returned after %.2fs", s)
	}
	dead := deadLetters(t, app, queue)
	if len(dead) != deadWant {
		t.Fatalf("dead list: %d entries (%v), want %d", len(dead), dead, deadWant)
	}
	for _, reason := range dead {
		if reason == "" {
			t.Errorf("a dead message without its reason")
		}
	}
}

// deadLetters returns the reasons of the messages in queue's dead list
// (Redis) or dead queue (RabbitMQ).
func deadLetters(t *testing.T, app *celerytest.App, queue string) []string {
	t.Helper()
	var reasons []string
	if app.Broker == app.URL {
		dead, err := app.Redis.LRange(context.Background(), celery.DeadList(queue), 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range dead {
			var entry struct{ Reason, Message string }
			if json.Unmarshal([]byte(d), &entry) != nil || !strings.Contains(entry.Message, `"delivery_tag"`) {
				t.Errorf("dead entry %s", d)
			}
			reasons = append(reasons, entry.Reason)
		}
		return reasons
	}
	conn, err := amqp.Dial(app.Broker)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.QueueDelete(celery.DeadList(queue), false, false, false)
	for {
		d, ok, err := ch.Get(celery.DeadList(queue), true)
		if err != nil || !ok {
			return reasons
		}
		r, _ := d.Headers["x-docket-reason"].(string)
		reasons = append(reasons, r)
	}
}

// A docket producer calls tasks a Celery worker runs, and Wait reads
// their results from Celery's backend: a value, a failure, a countdown
// kept, an expired task, a task that retries, and a priority.
func TestDocketCallsCelery(t *testing.T) {
	for _, b := range brokers {
		t.Run(b.name, func(t *testing.T) { docketCallsCelery(t, b.app(t)) })
	}
}

func docketCallsCelery(t *testing.T, app *celerytest.App) {
	ctx := context.Background()
	queue := fmt.Sprintf("docket-celery-sends-%d", time.Now().UnixNano())
	q := open(t, app)
	on := docket.OnQueue(queue)
	// The tasks the Python app owns, known here by name and types.
	if err := q.Register(
		docket.Remote[[]int, int]("tasks.add", on),
		docket.Remote[map[string]int, json.RawMessage]("tasks.echo", on),
		docket.Remote[[]string, int]("tasks.fail", on),
		docket.Remote[any, int]("tasks.flaky", on),
	); err != nil {
		t.Fatal(err)
	}
	type call struct {
		name string
		args any
		opts []docket.TaskOption
		want string // the result's JSON, or the error's text
	}
	start := time.Now()
	calls := map[string]call{
		"add":       {"tasks.add", []int{2, 3}, nil, "5"},
		"kwargs":    {"tasks.echo", map[string]int{"x": 1}, nil, `[[],{"x":1}]`},
		"fail":      {"tasks.fail", []string{"boom"}, nil, "ValueError: boom"},
		"countdown": {"tasks.add", []int{1, 1}, []docket.TaskOption{docket.Countdown(2 * time.Second)}, "2"},
		"expired":   {"tasks.add", []int{1, 1}, []docket.TaskOption{docket.Expires(50 * time.Millisecond)}, "TaskRevokedError: expired"},
		"retry":     {"tasks.flaky", nil, nil, "1"},
		"priority":  {"tasks.add", []int{4, 5}, []docket.TaskOption{docket.Priority(9)}, "9"},
	}
	results := map[string]*docket.Result[json.RawMessage]{}
	var ids []string
	for name, c := range calls {
		r, err := q.EnqueueByName(ctx, c.name, c.args, append(c.opts, on)...)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		results[name] = r
		ids = append(ids, r.ID())
	}
	app.Forget(t, []string{queue}, ids...)
	stop := app.Worker(t, queue)
	wait, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for name, c := range calls {
		v, err := results[name].Wait(wait)
		var compact bytes.Buffer
		json.Compact(&compact, v)
		got := compact.String()
		var te *docket.TaskError
		if errors.As(err, &te) {
			got = te.Message
			if name == "expired" && !errors.Is(err, docket.ErrTaskExpired) {
				t.Errorf("expired: %v does not match ErrTaskExpired", err)
			}
		} else if err != nil {
			t.Fatalf("%s: %v; the worker said:\n%s", name, err, stop())
		}
		if got != c.want {
			t.Errorf("%s: got %s, want %s", name, got, c.want)
		}
	}
	if in, err := q.Info(ctx, results["countdown"].ID()); err != nil || in.Finished.Sub(start) < 2*time.Second {
		t.Errorf("countdown of 2s: finished %v after the enqueue (%v)", in.Finished.Sub(start), err)
	}
}

// A mixed fleet: a Celery producer and a docket producer send the same
// task to one queue that a Celery worker and a docket worker both work
// on. Every task runs once, on one side or the other, and every result is
// read back by both a Celery client and docket. (Celery's rpc backend
// gives a result to its producer alone, so it has no place here.)
func TestMixedFleet(t *testing.T) {
	for _, b := range brokers[:2] {
		t.Run(b.name, func(t *testing.T) { mixedFleet(t, b.app(t)) })
	}
}

func mixedFleet(t *testing.T, app *celerytest.App) {
	ctx := context.Background()
	n := longtest.Pick(300, 2000)
	queue := fmt.Sprintf("docket-celery-fleet-%d", time.Now().UnixNano())
	runs := queue + ":runs"
	app.Forget(t, []string{queue})
	t.Cleanup(func() { app.Redis.Del(context.Background(), runs, runs+":celery", runs+":docket") })
	q := open(t, app, docket.Queues(map[string]int{queue: 1}))
	mark := docket.NewTask("tasks.mark", func(ctx context.Context, args []json.RawMessage) (int, error) {
		tc, _ := docket.FromContext(ctx)
		var key string
		var i int
		if len(args) != 2 || json.Unmarshal(args[0], &key) != nil || json.Unmarshal(args[1], &i) != nil {
			return 0, docket.Permanent(fmt.Errorf("want [key, n], got %d arguments", len(args)))
		}
		pipe := app.Redis.TxPipeline()
		pipe.HIncrBy(ctx, key, tc.ID, 1)
		pipe.Incr(ctx, key+":docket")
		if _, err := pipe.Exec(ctx); err != nil {
			return 0, err
		}
		return 2 * i, nil
	}, docket.OnQueue(queue))
	if err := q.Register(mark); err != nil {
		t.Fatal(err)
	}
	stopCelery := app.Worker(t, queue)
	run(t, q)

	fleet := app.Python("fleet.py", queue, runs, fmt.Sprint(n))
	var fromCelery bytes.Buffer
	fleet.Stdout = &fromCelery
	if err := fleet.Start(); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{} // task id: its result
	for i := 0; i < n; i += 100 {
		args := make([][]json.RawMessage, 0, 100)
		for j := i; j < min(i+100, n); j++ {
			args = append(args, []json.RawMessage{json.RawMessage(strconv.Quote(runs)), json.RawMessage(strconv.Itoa(j))})
		}
		rs, err := mark.EnqueueMany(ctx, q, args)
		if err != nil {
			t.Fatal(err)
		}
		for k, r := range rs {
			want[r.ID()] = 2 * (i + k)
		}
	}
	if err := fleet.Wait(); err != nil {
		t.Fatalf("fleet.py: %v", err)
	}
	for i, id := range strings.Fields(fromCelery.String()) {
		want[id] = 2 * i
	}
	if len(want) != 2*n {
		t.Fatalf("%d distinct task ids from the two producers, want %d", len(want), 2*n)
	}
	var ids []string
	for id := range want {
		ids = append(ids, id)
	}
	app.Forget(t, nil, ids...)

	// docket reads every result, whichever side ran it.
	wait, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	waited := 0
	for id, v := range want {
		w0 := time.Now()
		got, err := mark.ResultOf(q, id).Wait(wait)
		if err != nil || got != v {
			in, ierr := q.Info(ctx, id)
			t.Logf("after %d results read, this one's Wait took %v; docket's view of the task: %+v, %v", waited, time.Since(w0), in, ierr)
			t.Fatalf("task %s: docket read %d, %v; want %d; Celery's worker said:\n%s", id, got, err, v, stopCelery())
		}
		waited++
	}
	// So does a Celery client.
	collect := app.Python("collect.py")
	collect.Stdin = strings.NewReader(strings.Join(ids, "\n"))
	out, err := collect.Output()
	if err != nil {
		t.Fatalf("collect.py: %v", err)
	}
	var read map[string]any
	if err := json.Unmarshal(out, &read); err != nil {
		t.Fatalf("collect.py printed %.200s: %v", out, err)
	}
	for id, v := range want {
		if f, ok := read[id].(float64); !ok || int(f) != v {
			t.Fatalf("task %s: a Celery client read %v, want %d", id, read[id], v)
		}
	}
	// Each ran once.
	counts, err := app.Redis.HGetAll(ctx, runs).Result()
	if err != nil {
		t.Fatal(err)
	}
	for id := range want {
		if counts[id] != "1" {
			t.Errorf("task %s ran %q times", id, counts[id])
		}
	}
	if len(counts) != len(want) {
		t.Errorf("%d tasks ran, want %d", len(counts), len(want))
	}
	byCelery, _ := app.Redis.Get(ctx, runs+":celery").Int()
	byDocket, _ := app.Redis.Get(ctx, runs+":docket").Int()
	t.Logf("%d tasks from each producer: %d run by Celery's worker, %d by docket's", n, byCelery, byDocket)
	if byCelery == 0 || byDocket == 0 || byCelery+byDocket != 2*n {
		t.Errorf("runs: %d by Celery, %d by docket; want both sides to work, %d in all", byCelery, byDocket, 2*n)
	}
}
