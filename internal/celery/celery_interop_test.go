package celery

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/docketq/docket/internal/celerytest"
)

// What Celery's producer puts on Redis, Decode reads: names, arguments,
// times, limits, retries and the follow-ups of link and chain.
func TestReadsWhatCelerySends(t *testing.T) {
	app := celerytest.New(t)
	rdb, python := app.Redis, app.Python
	ctx := context.Background()
	q := fmt.Sprintf("docket-celery-in-%d", time.Now().UnixNano())
	app.Forget(t, []string{q})
	t0 := time.Now()
	out, err := python("produce.py", q).Output()
	if err != nil {
		t.Fatalf("produce.py: %v\n%s", err, out)
	}
	var ids map[string]string
	if err := json.Unmarshal(out, &ids); err != nil {
		t.Fatalf("produce.py printed %q: %v", out, err)
	}
	raws, err := rdb.LRange(ctx, q, 0, -1).Result()
	if err != nil || len(raws) != len(ids) {
		t.Fatalf("%d messages in %s, %v; want %d", len(raws), q, err, len(ids))
	}
	got := map[string]Task{}
	for _, raw := range raws {
		task, env, err := DecodeEnvelope([]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		if env.Properties.DeliveryTag == "" || env.Properties.DeliveryInfo.RoutingKey != q {
			t.Errorf("envelope properties: %+v", env.Properties)
		}
		got[task.ID] = task
	}
	payload := func(task Task) string {
		p, err := Payload(task.Args, task.Kwargs)
		if err != nil {
			t.Fatal(err)
		}
		return string(compact(p))
	}
	if a := got[ids["add"]]; a.Name != "tasks.add" || payload(a) != "[2,3]" || !a.ETA.IsZero() || !a.Expires.IsZero() || a.RootID != a.ID {
		t.Errorf("add: %+v", a)
	}
	var kw map[string]any // Python escapes "é" as \u00e9
	if k := got[ids["kwargs"]]; json.Unmarshal([]byte(payload(k)), &kw) != nil || kw["x"] != float64(1) || kw["s"] != "é" || len(kw) != 2 {
		t.Errorf("kwargs: %s", payload(k))
	}
	if c := got[ids["countdown"]]; c.ETA.Before(t0.Add(29*time.Second)) || c.ETA.After(time.Now().Add(31*time.Second)) {
		t.Errorf("countdown=30: eta %v, sent at %v", c.ETA, t0)
	}
	if e := got[ids["expires"]]; e.Expires.Before(t0.Add(119*time.Second)) || e.Expires.After(time.Now().Add(121*time.Second)) {
		t.Errorf("expires=120: %v, sent at %v", e.Expires, t0)
	}
	if l := got[ids["limits"]]; l.HardLimit != 10*time.Second || l.SoftLimit != 5*time.Second || l.Retries != 2 {
		t.Errorf("limits and retries: hard %v, soft %v, retries %d", l.HardLimit, l.SoftLimit, l.Retries)
	}
	if l := got[ids["link"]]; len(l.Embed.Callbacks) != 1 || l.Embed.Callbacks[0].Task != "tasks.echo" || string(compact(l.Embed.Callbacks[0].Args)) != `["cb"]` {
		t.Errorf("link: %+v", l.Embed)
	}
	c := got[ids["chain"]]
	if len(c.Embed.Chain) != 2 || c.Embed.Chain[0].Task != "tasks.echo" || c.Embed.Chain[1].Task != "tasks.add" || c.Embed.Chain[1].Options["task_id"] == nil {
		t.Errorf("chain (last step first): %+v", c.Embed.Chain)
	}
}

// What docket writes, Celery's worker runs: arguments, kwargs, a failure,
// a countdown, an expired task and a priority list; and docket reads the
// records it writes back.
func TestCeleryRunsWhatDocketSends(t *testing.T) {
	app := celerytest.New(t)
	rdb := app.Redis
	ctx := context.Background()
	q := fmt.Sprintf("docket-celery-out-%d", time.Now().UnixNano())
	now := time.Now()
	tasks := map[string]Task{
		"add":       {ID: "add-" + q, Name: "tasks.add", Args: json.RawMessage("[2,3]")},
		"kwargs":    {ID: "kwargs-" + q, Name: "tasks.echo", Kwargs: json.RawMessage(`{"x":1}`)},
		"fail":      {ID: "fail-" + q, Name: "tasks.fail", Args: json.RawMessage(`["boom"]`)},
		"eta":       {ID: "eta-" + q, Name: "tasks.add", Args: json.RawMessage("[1,1]"), ETA: now.Add(2 * time.Second)},
		"expired":   {ID: "expired-" + q, Name: "tasks.add", Args: json.RawMessage("[1,1]"), Expires: now.Add(-time.Minute)},
		"priority9": {ID: "priority9-" + q, Name: "tasks.add", Args: json.RawMessage("[4,5]"), Priority: 9},
	}
	var ids []string
	for _, task := range tasks {
		ids = append(ids, task.ID)
	}
	app.Forget(t, []string{q}, ids...)
	for _, task := range tasks {
		raw, err := EncodeEnvelope(task, q, "tag-"+task.ID)
		if err != nil {
			t.Fatal(err)
		}
		if err := rdb.LPush(ctx, PriorityList(q, task.Priority), raw).Err(); err != nil {
			t.Fatal(err)
		}
	}
	stopWorker := app.Worker(t, q)
	records := map[string]Result{}
	for deadline := time.Now().Add(60 * time.Second); len(records) < len(tasks); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d results after a minute; the worker said:\n%s", len(records), len(tasks), stopWorker())
		}
		for name, task := range tasks {
			raw, err := rdb.Get(ctx, MetaKey(task.ID)).Bytes()
			if err != nil {
				continue
			}
			r, err := DecodeResult(raw)
			if err != nil {
				t.Fatal(err)
			}
			if r.Done() {
				records[name] = r
			}
		}
	}
	stopWorker()
	want := map[string]struct{ status, result, err string }{
		"add":       {StatusSuccess, "5", ""},
		"kwargs":    {StatusSuccess, `[[],{"x":1}]`, ""},
		"fail":      {StatusFailure, "", "ValueError: boom"},
		"eta":       {StatusSuccess, "2", ""},
		"expired":   {StatusRevoked, "", "TaskRevokedError: expired"},
		"priority9": {StatusSuccess, "9", ""},
	}
	for name, w := range want {
		r := records[name]
		if r.Status != w.status || r.Error() != w.err || (w.result != "" && string(compact(r.Result)) != w.result) {
			t.Errorf("%s: %s %s (%q), want %s %s (%q)", name, r.Status, r.Result, r.Error(), w.status, w.result, w.err)
		}
	}
	done, err := time.Parse("2006-01-02T15:04:05.999999", *records["eta"].DateDone)
	if err != nil || done.Before(tasks["eta"].ETA) {
		t.Errorf("the countdown task ran at %v (%v), before its ETA %v", done, err, tasks["eta"].ETA)
	}
}

// The records docket writes (SET, then PUBLISH on the key's channel, as
// Celery's Redis backend does) are what a Celery client waiting in
// AsyncResult.get() reads: a value, or the exception raised again.
func TestCeleryReadsWhatDocketRecords(t *testing.T) {
	app := celerytest.New(t)
	rdb, python := app.Redis, app.Python
	ctx := context.Background()
	suffix := fmt.Sprint(time.Now().UnixNano())
	ok, failed, foreign := "ok-"+suffix, "failed-"+suffix, "foreign-"+suffix
	app.Forget(t, nil, ok, failed, foreign)
	client := python("result.py", ok, failed, foreign)
	var out strings.Builder
	client.Stdout, client.Stderr = &out, &out
	if err := client.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // the client waits on the channels by now
	done := time.Now()
	for _, r := range []Result{
		Succeeded(ok, json.RawMessage(`{"sum":5}`), done),
		Failed(failed, Exception{Type: "ValueError", Message: []string{"kaput"}, Module: "builtins"}, "", done),
		Failed(foreign, Exception{Type: "TaskError", Message: []string{"no such order"}, Module: "docket"}, "", done),
	} {
		raw, _ := json.Marshal(r)
		pipe := rdb.TxPipeline()
		pipe.Set(ctx, MetaKey(r.TaskID), raw, time.Hour)
		pipe.Publish(ctx, MetaKey(r.TaskID), raw)
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := client.Wait(); err != nil {
		t.Fatalf("result.py: %v\n%s", err, out.String())
	}
	var got map[string]map[string]any
	if err := json.Unmarshal([]byte(out.String()), &got); err != nil {
		t.Fatalf("result.py printed %q: %v", out.String(), err)
	}
	if v, _ := got[ok]["value"].(map[string]any); v["sum"] != float64(5) {
		t.Errorf("success: %v", got[ok])
	}
	if e := got[failed]; e["error"] != "ValueError" || e["message"] != "kaput" {
		t.Errorf("failure of a builtin: %v", e)
	}
	if e := got[foreign]; e["error"] != "TaskError" || e["message"] != "no such order" {
		t.Errorf("failure of docket's own type: %v", e)
	}
}
