package celery_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/transport"
	goredis "github.com/redis/go-redis/v9"
)

// subscribers counts the subscriptions to a task's record channel.
func subscribers(t *testing.T, rdb *goredis.Client, id string) int64 {
	t.Helper()
	n, err := rdb.PubSubNumSub(context.Background(), "celery-task-meta-"+id).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n["celery-task-meta-"+id]
}

// until polls cond for up to ten seconds.
func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited ten seconds for %s", what)
		}
	}
}

// A watch subscribes to the task's record channel, as Celery's client
// does, and returns once Redis has confirmed it; a record published there
// is reported as EventFinished, a record of a task nobody watches is not;
// the channel is left when its last watch stops, and a closed Transport
// watches nothing.
func TestWatchHearsTheRecordsOfWatchedTasks(t *testing.T) {
	tr, rdb := backend(t, "")
	ctx := context.Background()
	finished := make(chan string, 10)
	tr.(transport.Subscriber).Subscribe(func(e transport.Event) {
		if e.Kind == transport.EventFinished {
			for _, id := range e.IDs {
				finished <- id
			}
		}
	})
	w := tr.(transport.Watcher)
	id, other := fmt.Sprintf("watched-%d", time.Now().UnixNano()), fmt.Sprintf("unwatched-%d", time.Now().UnixNano())
	stop1 := w.Watch(ctx, id)
	stop2 := w.Watch(ctx, id)
	if n := subscribers(t, rdb, id); n != 1 {
		t.Fatalf("%d subscriptions to the watched task's channel after Watch returned, want 1", n)
	}
	record := `{"status": "SUCCESS", "result": 5, "traceback": null, "children": [], "date_done": "2026-12-03T03:00:00.000000", "task_id": "%s"}`
	rdb.Publish(ctx, "celery-task-meta-"+other, fmt.Sprintf(record, other))
	rdb.Publish(ctx, "celery-task-meta-"+id, fmt.Sprintf(record, id))
	select {
	case got := <-finished:
		if got != id {
			t.Fatalf("EventFinished for %q, want %q (the unwatched task's record came first)", got, id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no EventFinished for the watched task's record in ten seconds")
	}
	stop1()
	stop1() // a second stop of the same watch changes nothing
	if n := subscribers(t, rdb, id); n != 1 {
		t.Fatalf("%d subscriptions while one watch remains, want 1", n)
	}
	stop2()
	until(t, "the channel to be left", func() bool { return subscribers(t, rdb, id) == 0 })
	tr.Close()
	w.Watch(ctx, id)()
	if n := subscribers(t, rdb, id); n != 0 {
		t.Fatalf("a closed Transport subscribed (%d)", n)
	}
}

// Wait on a task another worker runs watches its record channel while it
// waits and leaves it after: the record a Celery worker writes (SET, then
// PUBLISH) ends the Wait with its result.
func TestWaitWatchesTheRecord(t *testing.T) {
	_, rdb := backend(t, "")
	queue := testQueue(t, rdb)
	base := rdb.Options()
	q, err := docket.Open(context.Background(), fmt.Sprintf("celery+redis://%s/%d?result_expires=600", base.Addr, base.DB))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	add := docket.Remote[[]int, int]("tasks.add", docket.OnQueue(queue))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := add.Enqueue(ctx, q, []int{2, 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Del(context.Background(), "celery-task-meta-"+r.ID()) })
	type outcome struct {
		v   int
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		v, err := r.Wait(ctx)
		done <- outcome{v, err}
	}()
	until(t, "Wait to watch the record's channel", func() bool { return subscribers(t, rdb, r.ID()) == 1 })
	record := fmt.Sprintf(`{"status": "SUCCESS", "result": 5, "traceback": null, "children": [], "date_done": "2026-12-03T03:00:00.000000", "task_id": "%s"}`, r.ID())
	rdb.Set(ctx, "celery-task-meta-"+r.ID(), record, 10*time.Minute)
	rdb.Publish(ctx, "celery-task-meta-"+r.ID(), record)
	if o := <-done; o.err != nil || o.v != 5 {
		t.Fatalf("Wait = %d, %v; want 5", o.v, o.err)
	}
	until(t, "Wait to leave the record's channel", func() bool { return subscribers(t, rdb, r.ID()) == 0 })
}
