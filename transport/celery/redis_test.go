package celery_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/transport"
	"github.com/docketq/docket/transport/celery"
	goredis "github.com/redis/go-redis/v9"
)

// backend opens the transport on DOCKET_TEST_REDIS_URL with the URL
// parameters params, and a client on the same database; it skips without
// the URL.
func backend(t *testing.T, params string) (transport.Transport, *goredis.Client) {
	t.Helper()
	base := os.Getenv("DOCKET_TEST_REDIS_URL")
	if base == "" {
		t.Skip("DOCKET_TEST_REDIS_URL is not set; skipping the Celery transport's tests on Redis")
	}
	u, err := url.Parse(strings.Replace(base, "redis://", "celery+redis://", 1) + "?" + params)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := transport.Open(context.Background(), u, transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	opts, _ := goredis.ParseURL(base)
	rdb := goredis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	return tr, rdb
}

func testQueue(t *testing.T, rdb *goredis.Client) string {
	q := fmt.Sprintf("docket-celery-%s-%d", strings.ToLower(t.Name()), time.Now().UnixNano())
	t.Cleanup(func() {
		rdb.Del(context.Background(), q, q+"\x06\x163", q+"\x06\x166", q+"\x06\x169", "_kombu.binding."+q, celery.DeadList(q))
	})
	return q
}

func claim(t *testing.T, tr transport.Transport, queue, owner string) transport.ClaimResult {
	t.Helper()
	now := time.Now()
	res, err := tr.Claim(context.Background(), transport.ClaimParams{Now: now, Owner: owner, Queues: []string{queue}, Limit: 10, LeaseUntil: now.Add(30 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func message(id, queue string) transport.Message {
	return transport.Message{ID: id, Name: "tasks.add", Queue: queue, Payload: []byte("[1,2]"), MaxAttempts: 1, Created: time.Now()}
}

func TestURLParameters(t *testing.T) {
	for _, raw := range []string{
		"celery+redis://127.0.0.1:1/0?visibility_timeout=soon",
		"celery+redis://127.0.0.1:1/0?visibility_timeout=0",
		"celery+redis://127.0.0.1:1/0?result_expires=-5",
		"celery+redis://127.0.0.1:1/0?max_retries=-1",
		"celery+redis://127.0.0.1:1/0?track_started=maybe",
		"celery+redis://127.0.0.1:1/0?backend=http://x",
		"celery+redis://127.0.0.1:1/0?nonsense=1",
	} {
		_, err := docket.Open(context.Background(), raw)
		if !errors.Is(err, docket.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", raw, err)
		}
	}
}

// A message whose worker died (fetched, never acknowledged) goes back to
// its list after the visibility timeout, to be fetched again, and the dead
// worker's lease is lost: its late Finish writes nothing. A worker that
// extends its lease keeps its message.
func TestLapsedMessagesAreRestored(t *testing.T) {
	ctx := context.Background()
	dead, rdb := backend(t, "visibility_timeout=1")
	other, _ := backend(t, "visibility_timeout=1")
	q := testQueue(t, rdb)
	lapsedID, keptID := "lapsed-"+q, "kept-"+q
	t.Cleanup(func() { rdb.Del(context.Background(), "celery-task-meta-"+lapsedID, "celery-task-meta-"+keptID) })
	if _, err := dead.Enqueue(ctx, transport.EnqueueParams{Now: time.Now(), Messages: []transport.Message{message(lapsedID, q), message(keptID, q)}}); err != nil {
		t.Fatal(err)
	}
	got := map[string]*transport.Delivery{}
	for _, d := range claim(t, dead, q, "dead").Deliveries {
		got[d.ID] = &d
	}
	if len(got) != 2 {
		t.Fatalf("%d deliveries, want 2", len(got))
	}
	var again []transport.Delivery
	for deadline := time.Now().Add(10 * time.Second); len(again) == 0 && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		ext, err := dead.Extend(ctx, transport.ExtendParams{Now: time.Now(), Leases: []transport.Lease{got[keptID].Lease()}, Until: time.Now().Add(time.Minute)})
		if err != nil || ext[0].Lost {
			t.Fatalf("extend of a held message: %+v, %v", ext, err)
		}
		again = append(again, claim(t, other, q, "other").Deliveries...)
	}
	if len(again) != 1 || again[0].ID != lapsedID || again[0].Attempt != 1 {
		t.Fatalf("restored and fetched again: %+v, want only %s, the same attempt", again, lapsedID)
	}
	finish := func(tr transport.Transport, d *transport.Delivery, result string) bool {
		t.Helper()
		res, err := tr.Finish(ctx, transport.FinishParams{Now: time.Now(), Items: []transport.Outcome{{Lease: d.Lease(), State: transport.StateSucceeded, Result: []byte(result)}}})
		if err != nil {
			t.Fatal(err)
		}
		return res[0].Lost
	}
	if !finish(dead, got[lapsedID], "1") {
		t.Error("the dead worker's late finish of a restored message was not lost")
	}
	if finish(dead, got[keptID], "2") || finish(other, &again[0], "3") {
		t.Error("a finish by the message's holder was lost")
	}
	for id, want := range map[string]string{lapsedID: "3", keptID: "2"} {
		in, err := other.Get(ctx, transport.GetParams{Now: time.Now(), ID: id})
		if err != nil || in.State != transport.StateSucceeded || string(in.Result) != want {
			t.Errorf("%s: %v %s (%v), want succeeded with %s", id, in.State, in.Result, err, want)
		}
	}
	if n, _ := rdb.LLen(ctx, q).Result(); n != 0 {
		t.Errorf("%d messages left on the list", n)
	}
}

// Messages docket cannot read go to the queue's dead list with the reason,
// and the messages behind them still run: no crash, no hot loop.
func TestMalformedMessagesGoToTheDeadList(t *testing.T) {
	ctx := context.Background()
	tr, rdb := backend(t, "")
	q := testQueue(t, rdb)
	env := func(contentType, body string) string {
		return fmt.Sprintf(`{"body": %q, "content-encoding": "utf-8", "content-type": %q, "headers": {"task": "tasks.add", "id": "bad-%s"}, "properties": {"delivery_tag": "tag-%s", "delivery_info": {"exchange": "", "routing_key": %q}, "body_encoding": ""}}`,
			body, contentType, contentType+body, contentType+body, q)
	}
	bad := []string{
		"not json at all",
		`{"body": "W10=", "properties": {"delivery_info": {}}}`, // no delivery tag
		env("", "[[1,2],{},null]"),                              // no content type
		env("application/x-python-serialize", "gAJ9cQAu"),       // pickle
		env("application/json", "[[1,2],{}]"),                   // two elements
		env("application/json", "{not json"),
	}
	for _, b := range bad {
		if err := rdb.LPush(ctx, q, b).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tr.Enqueue(ctx, transport.EnqueueParams{Now: time.Now(), Messages: []transport.Message{message("good-"+q, q)}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Del(context.Background(), "celery-task-meta-good-"+q) })
	res := claim(t, tr, q, "w")
	if len(res.Deliveries) != 1 || res.Deliveries[0].ID != "good-"+q {
		t.Fatalf("deliveries %+v, want the good message only", res.Deliveries)
	}
	if _, err := tr.Finish(ctx, transport.FinishParams{Now: time.Now(), Items: []transport.Outcome{{Lease: res.Deliveries[0].Lease(), State: transport.StateSucceeded, Result: []byte("3")}}}); err != nil {
		t.Fatal(err)
	}
	dead, err := rdb.LRange(ctx, celery.DeadList(q), 0, -1).Result()
	if err != nil || len(dead) != len(bad) {
		t.Fatalf("dead list: %d entries (%v), want %d", len(dead), err, len(bad))
	}
	reasons := map[string]bool{}
	for _, d := range dead {
		var e struct{ Reason, Message string }
		if err := json.Unmarshal([]byte(d), &e); err != nil || e.Reason == "" {
			t.Errorf("dead entry %s: %v", d, err)
		}
		reasons[e.Reason] = true
		if !slices.Contains(bad, e.Message) {
			t.Errorf("dead entry's message %q is not one pushed", e.Message)
		}
	}
	for _, want := range []string{"delivery tag", "no content type", "application/x-python-serialize", "2 elements", "not a JSON array"} {
		found := false
		for r := range reasons {
			found = found || strings.Contains(r, want)
		}
		if !found {
			t.Errorf("no dead entry's reason mentions %q: %v", want, reasons)
		}
	}
	if n, _ := rdb.LLen(ctx, q).Result(); n != 0 {
		t.Errorf("%d messages left on the list", n)
	}
	for _, b := range bad {
		if strings.Contains(b, "tag-") {
			tag := b[strings.Index(b, "tag-"):]
			tag = tag[:strings.Index(tag, `"`)]
			if ok, _ := rdb.HExists(ctx, "unacked", tag).Result(); ok {
				t.Errorf("%s is still unacked", tag)
			}
		}
	}
}

// A task whose ETA is ahead is held by the process that fetched it, and
// given back to the head of its list when that process closes.
func TestHeldMessagesGoBackAtClose(t *testing.T) {
	ctx := context.Background()
	tr, rdb := backend(t, "")
	q := testQueue(t, rdb)
	m := message("later-"+q, q)
	m.ETA = time.Now().Add(time.Hour)
	if _, err := tr.Enqueue(ctx, transport.EnqueueParams{Now: time.Now(), Messages: []transport.Message{m}}); err != nil {
		t.Fatal(err)
	}
	res := claim(t, tr, q, "w")
	if len(res.Deliveries) != 0 || res.NextAt.IsZero() || res.NextAt.After(m.ETA) {
		t.Fatalf("claim of a task due in an hour: %d deliveries, next at %v (want %v)", len(res.Deliveries), res.NextAt, m.ETA)
	}
	if n, _ := rdb.LLen(ctx, q).Result(); n != 0 {
		t.Fatalf("the held message is still on the list (%d)", n)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	raws, err := rdb.LRange(ctx, q, 0, -1).Result()
	if err != nil || len(raws) != 1 || !strings.Contains(raws[0], m.ID) {
		t.Fatalf("after close, the list holds %q (%v); want the held message", raws, err)
	}
}
