package celery

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// The headers of send_task("tasks.add", args=[2, 3]) as Celery 5.2 sends
// them over RabbitMQ, typed as amqp091-go decodes them.
func celeryHeaders() map[string]any {
	return map[string]any{
		"lang": "py", "task": "tasks.add", "id": "e682cf37-f4a0-4788-bfaf-81b6835e5115",
		"shadow": nil, "eta": nil, "expires": nil, "group": nil, "group_index": nil,
		"retries": int32(0), "timelimit": []any{nil, nil},
		"root_id": "e682cf37-f4a0-4788-bfaf-81b6835e5115", "parent_id": nil,
		"argsrepr": "[2, 3]", "kwargsrepr": "{}", "origin": "gen9726@vm", "ignore_result": false,
	}
}

const celeryBody = `[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]`

func TestDecodeCeleryMessage(t *testing.T) {
	h := celeryHeaders()
	h["eta"] = "2026-11-24T00:52:32.568264+00:00"
	h["expires"] = "2030-01-02T03:04:05" // naive: UTC
	h["retries"] = int32(2)
	h["timelimit"] = []any{int32(10), 2.5}
	h["x-custom"] = "v"
	task, err := Decode("application/json", "utf-8", h, []byte(celeryBody))
	if err != nil {
		t.Fatal(err)
	}
	want := Task{
		ID: "e682cf37-f4a0-4788-bfaf-81b6835e5115", Name: "tasks.add",
		Args: json.RawMessage("[2, 3]"), Kwargs: json.RawMessage("{}"),
		ETA:     time.Date(2026, 11, 24, 0, 52, 32, 568264000, time.UTC),
		Expires: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC),
		Retries: 2, HardLimit: 10 * time.Second, SoftLimit: 2500 * time.Millisecond,
		RootID: "e682cf37-f4a0-4788-bfaf-81b6835e5115",
		Other:  map[string]any{"x-custom": "v"},
	}
	if !reflect.DeepEqual(task, want) {
		t.Fatalf("Decode:\n got %+v\nwant %+v", task, want)
	}
}

func TestDecodeEnvelope(t *testing.T) {
	h := celeryHeaders()
	for k, v := range h { // as encoding/json decodes them
		if n, ok := v.(int32); ok {
			h[k] = float64(n)
		}
	}
	raw, _ := json.Marshal(map[string]any{
		"body": base64.StdEncoding.EncodeToString([]byte(celeryBody)), "content-encoding": "utf-8",
		"content-type": "application/json", "headers": h,
		"properties": map[string]any{
			"correlation_id": "e682cf37-f4a0-4788-bfaf-81b6835e5115", "reply_to": "c703589e-e740-3c3a-9528-98d2232d3f25",
			"delivery_mode": 2, "delivery_info": map[string]any{"exchange": "", "routing_key": "capture_redis"},
			"priority": 0, "body_encoding": "base64", "delivery_tag": "94eabaad-f38b-41fd-892a-8b43e2b5d3c3",
		},
	})
	task, env, err := DecodeEnvelope(raw)
	if err != nil {
		t.Fatal(err)
	}
	if task.Name != "tasks.add" || string(task.Args) != "[2, 3]" || task.ReplyTo != "c703589e-e740-3c3a-9528-98d2232d3f25" ||
		env.Properties.DeliveryTag != "94eabaad-f38b-41fd-892a-8b43e2b5d3c3" || env.Properties.DeliveryInfo.RoutingKey != "capture_redis" {
		t.Fatalf("DecodeEnvelope: %+v, %+v", task, env)
	}
	// Without body_encoding, kombu takes the body as it is.
	var m map[string]any
	json.Unmarshal(raw, &m)
	m["body"] = celeryBody
	delete(m["properties"].(map[string]any), "body_encoding")
	raw, _ = json.Marshal(m)
	if task, _, err := DecodeEnvelope(raw); err != nil || string(task.Args) != "[2, 3]" {
		t.Fatalf("a raw body: %+v, %v", task, err)
	}
}

// What docket writes, Decode reads back the same, over AMQP and in
// kombu's envelope.
func TestRoundTrip(t *testing.T) {
	i := 1
	in := Task{
		ID: "a1", Name: "tasks.echo", Args: json.RawMessage(`["é",2]`), Kwargs: json.RawMessage(`{}`),
		Embed:   Embed{Callbacks: []Signature{{Task: "tasks.next", Args: json.RawMessage(`[]`), Kwargs: json.RawMessage(`{}`), Options: map[string]any{"task_id": "cb1"}}}},
		ETA:     time.Date(2030, 1, 2, 3, 4, 5, 123456000, time.UTC),
		Expires: time.Date(2030, 1, 3, 0, 0, 0, 0, time.UTC), Retries: 3, HardLimit: 30 * time.Second,
		SoftLimit: 1500 * time.Millisecond, IgnoreResult: true, RootID: "r1", ParentID: "p1", Group: "g1", GroupIndex: &i,
		Other: map[string]any{"x-custom": "v"},
	}
	h := in.Headers()
	if h["eta"] != "2030-01-02T03:04:05.123456+00:00" || h["retries"] != int32(3) || !reflect.DeepEqual(h["timelimit"], []any{int32(30), 1.5}) {
		t.Fatalf("headers: %v", h)
	}
	body, err := in.Body()
	if err != nil {
		t.Fatal(err)
	}
	out, err := Decode(ContentType, "utf-8", h, body)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(out, in) {
		t.Fatalf("AMQP round trip:\n got %+v\nwant %+v", out, in)
	}
	in.ReplyTo, in.CorrelationID, in.Priority = "reply", "a1", 6
	raw, err := EncodeEnvelope(in, "jobs", "tag1")
	if err != nil {
		t.Fatal(err)
	}
	out, env, err := DecodeEnvelope(raw)
	if err != nil {
		t.Fatal(err)
	}
	out.Other = in.Other // JSON numbers come back as float64; Other holds only a string here
	if out.GroupIndex == nil || *out.GroupIndex != 1 || env.Properties.DeliveryTag != "tag1" || env.Properties.DeliveryInfo.RoutingKey != "jobs" {
		t.Fatalf("envelope: %+v, %+v", out, env)
	}
	if !reflect.DeepEqual(out, in) {
		t.Fatalf("envelope round trip:\n got %+v\nwant %+v", out, in)
	}
}

// What Celery's own worker rejects or crashes on is refused, naming why.
func TestDecodeRefusesMalformed(t *testing.T) {
	without := func(k string) map[string]any { h := celeryHeaders(); delete(h, k); return h }
	with := func(k string, v any) map[string]any { h := celeryHeaders(); h[k] = v; return h }
	for _, c := range []struct {
		name, ctype, enc string
		headers          map[string]any
		body             string
		why              string
	}{
		{"no content type", "", "utf-8", celeryHeaders(), celeryBody, "no content type"},
		{"pickle", "application/x-python-serialize", "binary", celeryHeaders(), celeryBody, "content type"},
		{"protocol 1", ContentType, "utf-8", without("task"), celeryBody, "protocol 1"},
		{"no id", ContentType, "utf-8", without("id"), celeryBody, "no id"},
		{"two elements", ContentType, "utf-8", celeryHeaders(), `[[2, 3], {}]`, "2 elements"},
		{"not JSON", ContentType, "utf-8", celeryHeaders(), `[[2, 3], {}, `, "not a JSON array"},
		{"args not a list", ContentType, "utf-8", celeryHeaders(), `[{}, {}, null]`, "args"},
		{"kwargs not an object", ContentType, "utf-8", celeryHeaders(), `[[], [], null]`, "kwargs"},
		{"bad eta", ContentType, "utf-8", with("eta", "tomorrow"), celeryBody, "eta"},
		{"eta not a string", ContentType, "utf-8", with("eta", int32(5)), celeryBody, "eta"},
		{"retries not a number", ContentType, "utf-8", with("retries", "two"), celeryBody, "retries"},
	} {
		_, err := Decode(c.ctype, c.enc, c.headers, []byte(c.body))
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%s: %v, want ErrMalformed naming %q", c.name, err, c.why)
		}
	}
	for name, raw := range map[string]string{
		"a body that is not base64": `{"body": "%%%", "content-type": "application/json", "properties": {"body_encoding": "base64", "delivery_tag": "t", "delivery_info": {}}}`,
		"no delivery tag":           `{"body": "W10=", "content-type": "application/json", "properties": {"body_encoding": "base64", "delivery_info": {}}}`,
		"no delivery info":          `{"body": "W10=", "content-type": "application/json", "properties": {"body_encoding": "base64", "delivery_tag": "t"}}`,
	} {
		if _, _, err := DecodeEnvelope([]byte(raw)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Numbers Celery's worker takes are taken, within bounds.
	for v, want := range map[any]int{float64(1 << 40): math.MaxInt32, int64(-1): 0, float64(2): 2, int32(3): 3} {
		if task, err := Decode(ContentType, "utf8", with("retries", v), []byte(celeryBody)); err != nil || task.Retries != want {
			t.Errorf("retries %v: %d, %v; want %d", v, task.Retries, err, want)
		}
	}
	// Times as Celery's worker reads them.
	for in, want := range map[string]time.Time{
		"2026-11-24 00:52:32":              time.Date(2026, 11, 24, 0, 52, 32, 0, time.UTC),
		"2026-11-24T00:52Z":                time.Date(2026, 11, 24, 0, 52, 0, 0, time.UTC),
		"2026-11-24":                       time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC),
		"2026-11-24T02:52:32.000001+02:00": time.Date(2026, 11, 24, 0, 52, 32, 1000, time.UTC),
	} {
		if task, err := Decode(ContentType, "utf-8", with("eta", in), []byte(celeryBody)); err != nil || !task.ETA.Equal(want) {
			t.Errorf("eta %q: %v, %v; want %v", in, task.ETA, err, want)
		}
	}
	// A null or partial embed is accepted, as by Celery's worker.
	for _, body := range []string{`[[1], {}, null]`, `[[1], {}, {}]`, `[[1], {}, {"chain": null}]`} {
		if _, err := Decode(ContentType, "utf-8", celeryHeaders(), []byte(body)); err != nil {
			t.Errorf("%s: %v", body, err)
		}
	}
}

func TestPayloadAndSplit(t *testing.T) {
	for _, c := range []struct{ args, kwargs, payload string }{
		{`[2, 3]`, `{}`, `[2, 3]`},
		{`[]`, `{"x": 1}`, `{"x": 1}`},
		{`[]`, `{}`, `null`},
		{``, ``, `null`},
	} {
		p, err := Payload(json.RawMessage(c.args), json.RawMessage(c.kwargs))
		if err != nil || string(p) != c.payload {
			t.Errorf("Payload(%s, %s) = %s, %v; want %s", c.args, c.kwargs, p, err, c.payload)
		}
	}
	if _, err := Payload(json.RawMessage(`[1]`), json.RawMessage(`{"x": 1}`)); !errors.Is(err, ErrMalformed) {
		t.Errorf("args and kwargs both: %v", err)
	}
	for _, c := range []struct{ payload, args, kwargs string }{
		{`[2,3]`, `[2,3]`, `{}`},
		{`{"x":1}`, `[]`, `{"x":1}`},
		{`null`, `[]`, `{}`},
		{`"hi"`, `["hi"]`, `{}`},
		{`7`, `[7]`, `{}`},
	} {
		a, k := Split(json.RawMessage(c.payload))
		if string(a) != c.args || string(k) != c.kwargs {
			t.Errorf("Split(%s) = %s, %s; want %s, %s", c.payload, a, k, c.args, c.kwargs)
		}
	}
}

// What docket writes, Celery's worker takes: a signature's empty parts as
// [], {} and {}, never null; arguments of the right shapes only; an
// envelope with its delivery tag.
func TestEncodeKeepsCeleryWhole(t *testing.T) {
	raw, err := json.Marshal(Signature{Task: "tasks.next"})
	if want := `{"task":"tasks.next","args":[],"kwargs":{},"options":{},"subtask_type":null,"immutable":false}`; err != nil || string(raw) != want {
		t.Errorf("an empty signature: %s, %v; want %s", raw, err, want)
	}
	if _, err := json.Marshal(Signature{Task: "x", Args: json.RawMessage("5")}); err == nil {
		t.Error("a signature whose args are not an array was written")
	}
	if _, err := (Task{ID: "a", Name: "t", Args: json.RawMessage("5")}).Body(); !errors.Is(err, ErrMalformed) {
		t.Errorf("args that are not an array: %v", err)
	}
	if _, err := EncodeEnvelope(Task{ID: "a", Name: "t"}, "q", ""); !errors.Is(err, ErrMalformed) {
		t.Errorf("an envelope without a delivery tag: %v", err)
	}
	// A header read from a Redis envelope goes back out as Celery sends it.
	h := Task{ID: "a", Name: "t", Other: map[string]any{"x-count": float64(3), "redelivered": true}}.Headers()
	if h["x-count"] != int32(3) || h["redelivered"] != nil {
		t.Errorf("other headers: %v", h)
	}
}

func TestArgsReprIsClipped(t *testing.T) {
	long := `["` + strings.Repeat("é", 1000) + `"]`
	h := Task{ID: "a", Name: "t", Args: json.RawMessage(long)}.Headers()
	r := h["argsrepr"].(string)
	if len(r) > 1024 || !strings.HasSuffix(r, "...") || !utf8.ValidString(r) {
		t.Fatalf("argsrepr of %d bytes: %q…", len(r), r[:20])
	}
}

func TestPriorityList(t *testing.T) {
	for p, want := range map[int]string{0: "q", 1: "q", 3: "q\x06\x163", 5: "q\x06\x163", 6: "q\x06\x166", 9: "q\x06\x169", 12: "q\x06\x169"} {
		if got := PriorityList("q", p); got != want {
			t.Errorf("PriorityList(q, %d) = %q, want %q", p, got, want)
		}
	}
}

// The records are what Celery's Redis backend writes, field for field.
func TestResults(t *testing.T) {
	done := time.Date(2026, 11, 24, 0, 53, 25, 608506000, time.UTC)
	raw, _ := json.Marshal(Succeeded("id1", json.RawMessage("5"), done))
	if want := `{"status":"SUCCESS","result":5,"traceback":null,"children":[],"date_done":"2026-11-24T00:53:25.608506","task_id":"id1"}`; string(raw) != want {
		t.Fatalf("success:\n got %s\nwant %s", raw, want)
	}
	raw, _ = json.Marshal(Failed("id2", Exception{Type: "ValueError", Message: []string{"kaput"}, Module: "builtins"}, "Traceback: …", done))
	if want := `{"status":"FAILURE","result":{"exc_type":"ValueError","exc_message":["kaput"],"exc_module":"builtins"},"traceback":"Traceback: …","children":[],"date_done":"2026-11-24T00:53:25.608506","task_id":"id2"}`; string(raw) != want {
		t.Fatalf("failure:\n got %s\nwant %s", raw, want)
	}
	for _, c := range []struct{ raw, err string }{
		{`{"status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": ["kaput"], "exc_module": "builtins"}, "traceback": "…", "children": [], "date_done": "2026-11-24T00:53:25.608506", "task_id": "x"}`, "ValueError: kaput"},
		{`{"status": "FAILURE", "result": {"exc_type": "TaskError", "exc_message": "boom", "exc_module": "go"}, "task_id": "x"}`, "TaskError: boom"},
		{`{"status": "REVOKED", "result": {"exc_type": "TaskRevokedError", "exc_message": ["expired"], "exc_module": "celery.exceptions"}, "task_id": "x"}`, "TaskRevokedError: expired"},
		{`{"status": "SUCCESS", "result": 42, "traceback": null, "children": [], "task_id": "x"}`, ""},
	} {
		r, err := DecodeResult([]byte(c.raw))
		if err != nil || r.Error() != c.err || !r.Done() {
			t.Errorf("%s: %q, %v; want %q", c.raw, r.Error(), err, c.err)
		}
	}
	if r, err := DecodeResult([]byte(`{"status": "STARTED", "result": {"pid": 1, "hostname": "h"}, "task_id": "x"}`)); err != nil || r.Done() {
		t.Errorf("started: %+v, %v", r, err)
	}
	if _, err := DecodeResult([]byte(`"just a string"`)); !errors.Is(err, ErrMalformed) {
		t.Errorf("not a record: %v", err)
	}
	raw, _ = json.Marshal(StartedBy("id3", 7, "h"))
	if want := `{"status":"STARTED","result":{"hostname":"h","pid":7},"traceback":null,"children":[],"date_done":null,"task_id":"id3"}`; string(raw) != want {
		t.Errorf("started:\n got %s\nwant %s", raw, want)
	}
	rev := Revoked("id4", "expired", done)
	if rev.Error() != "TaskRevokedError: expired" || !rev.Done() {
		t.Errorf("revoked: %+v", rev)
	}
	raw, _ = Succeeded("id5", json.RawMessage("1"), done).RPC()
	if want := `{"task_id":"id5","status":"SUCCESS","result":1,"traceback":null,"children":[]}`; string(raw) != want {
		t.Errorf("rpc:\n got %s\nwant %s", raw, want)
	}
	if r := (Result{Status: StatusFailure, Result: json.RawMessage(`"plain text"`)}); r.Error() != "plain text" {
		t.Errorf("a failure that is only text: %q", r.Error())
	}
	if MetaKey("id1") != "celery-task-meta-id1" {
		t.Error(MetaKey("id1"))
	}
}
