package amqp_test

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/docketq/docket"
	"github.com/docketq/docket/transport/amqp"
)

// rawChannel opens a plain channel on the broker, for tests that act as
// another client.
func rawChannel(t *testing.T) *amqp091.Channel {
	t.Helper()
	conn, err := amqp091.Dial(brokerURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// deadLetters reads what reached PREFIX.dead, waiting up to 20s for want
// messages.
func deadLetters(t *testing.T, prefix string, want int) []amqp091.Delivery {
	t.Helper()
	ch := rawChannel(t)
	var out []amqp091.Delivery
	for deadline := time.Now().Add(20 * time.Second); len(out) < want && time.Now().Before(deadline); {
		d, ok, err := ch.Get(prefix+".dead", true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		out = append(out, d)
	}
	return out
}

// A poison message ends in the dead-letter queue with its reason instead
// of looping: one that is not a docket task at all, and one whose worker
// died on every delivery.
func TestPoisonMessagesDeadLettered(t *testing.T) {
	url := freshURL(t, "")
	prefix := prefixOf(url)
	q, err := docket.Open(bg, url, docket.Logger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	task := docket.NewTask("poison.job", func(ctx context.Context, _ int) (int, error) { return 1, nil }, docket.MaxRetries(0))
	q.Register(task)
	r, err := task.Enqueue(bg, q, 1)
	if err != nil {
		t.Fatal(err)
	}
	// Another client takes the task and dies holding it: the broker
	// delivers it again, counted.
	raw := rawChannel(t)
	if err := raw.Qos(1, 0, false); err != nil {
		t.Fatal(err)
	}
	msgs, err := raw.Consume(prefix+".q.default", "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	<-msgs
	raw.Close()
	// Garbage published straight to the queue.
	garbage := rawChannel(t)
	if err := garbage.PublishWithContext(bg, "", prefix+".q.default", true, false, amqp091.Publishing{Body: []byte("not a task")}); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(bg)
	defer stop()
	go q.Run(ctx)
	wctx, cancel := context.WithTimeout(bg, 30*time.Second)
	defer cancel()
	if _, err := r.Wait(wctx); !errors.Is(err, docket.ErrTaskFailed) || !strings.Contains(err.Error(), "worker lost") {
		t.Fatalf("task whose worker died: %v", err)
	}
	reasons := map[string]bool{}
	for _, d := range deadLetters(t, prefix, 2) {
		reason, _ := d.Headers["docket-dead-reason"].(string)
		switch {
		case strings.HasPrefix(reason, "undecodable"):
			reasons["undecodable"] = string(d.Body) == "not a task"
		case strings.HasPrefix(reason, "worker lost") && d.MessageId == r.ID():
			reasons["worker lost"] = true
		default:
			t.Errorf("dead letter %q with reason %q", d.MessageId, reason)
		}
	}
	if !reasons["undecodable"] || !reasons["worker lost"] {
		t.Fatalf("dead letters: %v", reasons)
	}
}

// A task with a two-hour countdown waits in the delay levels, held by
// RabbitMQ: no worker receives it meanwhile, and it is not in its queue.
func TestLongCountdownHeldByBroker(t *testing.T) {
	url := freshURL(t, "")
	prefix := prefixOf(url)
	q, err := docket.Open(bg, url)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	var ran = make(chan struct{}, 1)
	task := docket.NewTask("later.job", func(ctx context.Context, _ int) (int, error) { ran <- struct{}{}; return 1, nil })
	q.Register(task)
	ctx, stop := context.WithCancel(bg)
	defer stop()
	go q.Run(ctx)
	r, err := task.Enqueue(bg, q, 1, docket.Countdown(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	select {
	case <-ran:
		t.Fatal("a two-hour countdown ran at once")
	default:
	}
	if info, _ := r.Info(bg); info.State != docket.StateScheduled {
		t.Fatalf("state %v, want scheduled", info.State)
	}
	ch := rawChannel(t)
	held := 0
	for l := 0; l < amqp.Levels; l++ {
		qi, err := ch.QueueDeclarePassive(levelQueue(prefix, l), true, false, false, false, amqp091.Table{})
		if err != nil {
			t.Fatal(err)
		}
		held += qi.Messages
	}
	target, err := ch.QueueDeclarePassive(prefix+".q.default", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	// 2h = 7,200,000 ms: its highest set bit is level 22.
	if held != 1 || target.Messages != 0 || target.Consumers != 1 {
		t.Fatalf("delay levels hold %d messages, the queue %d (with %d consumers); want 1, 0, 1", held, target.Messages, target.Consumers)
	}
}

func levelQueue(prefix string, l int) string {
	return prefix + ".delay." + string(rune('0'+l/10)) + string(rune('0'+l%10))
}

// The worker role: a process that consumes with 50 prefetched deliveries
// and reports each start on stdout, until it is killed.
func TestMain(m *testing.M) {
	if url := os.Getenv("DOCKET_AMQP_TEST_WORKER"); url != "" {
		var opts []docket.Option
		if st := os.Getenv("DOCKET_AMQP_TEST_STORE"); st != "" {
			opts = append(opts, docket.ResultStore(st))
		}
		q, err := docket.Open(context.Background(), url, append(opts, docket.Concurrency(2), docket.Prefetch(48), docket.LeaseDuration(2*time.Second))...)
		if err != nil {
			panic(err)
		}
		q.Register(slowItem())
		q.Run(context.Background())
		return
	}
	os.Exit(m.Run())
}

func slowItem() *docket.Task[item, int] {
	return docket.NewTask("fault.slow", func(ctx context.Context, it item) (int, error) {
		if os.Getenv("DOCKET_AMQP_TEST_WORKER") != "" {
			os.Stdout.WriteString("started\n")
		}
		time.Sleep(20 * time.Millisecond)
		return it.N, nil
	})
}

// A worker process killed with SIGKILL while it holds 50 prefetched
// deliveries: RabbitMQ gives them to another worker and every confirmed
// task completes. With a result store, the copies of the tasks the dead
// worker had leased wait until its lease lapses.
func TestConsumerKilledWithPrefetched(t *testing.T) {
	t.Run("alone", func(t *testing.T) { killPrefetched(t, "") })
	t.Run("sqlite-store", func(t *testing.T) {
		killPrefetched(t, "sqlite:"+filepath.Join(t.TempDir(), "state.db"))
	})
}

func killPrefetched(t *testing.T, store string) {
	url := freshURL(t, "")
	opts := []docket.Option{docket.LeaseDuration(2 * time.Second)}
	if store != "" {
		opts = append(opts, docket.ResultStore(store))
	}
	q, err := docket.Open(bg, url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	task := slowItem()
	q.Register(task)
	var rs []*docket.Result[int]
	for n := range 300 {
		r, err := task.Enqueue(bg, q, item{n})
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "DOCKET_AMQP_TEST_WORKER="+url, "DOCKET_AMQP_TEST_STORE="+store)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	for started := 0; started < 20 && sc.Scan(); started++ {
	}
	cmd.Process.Kill()
	cmd.Wait()
	ctx, stop := context.WithCancel(bg)
	defer stop()
	go q.Run(ctx)
	wctx, cancel := context.WithTimeout(bg, 60*time.Second)
	defer cancel()
	again := 0
	for i, r := range rs {
		v, err := r.Wait(wctx)
		if err != nil || v != i {
			t.Fatalf("task %d: %v, %v", i, v, err)
		}
		if info, _ := r.Info(bg); info.Attempt > 1 {
			again++
		}
	}
	t.Logf("300 tasks completed; %d counted a second attempt after the kill", again)
	// Alone, every delivery the killed worker held counts an attempt (the
	// broker's delivery count); with a store, only those it had leased.
	if want := 40; store == "" && again < want || again == 0 {
		t.Errorf("only %d tasks counted a second attempt: the killed worker held fewer than expected", again)
	}
}
