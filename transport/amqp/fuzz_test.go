package amqp

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/docketq/docket/internal/wire"
	"github.com/docketq/docket/transport"
)

// TestTaskRoundTrip: every field a worker needs survives encode and
// decode, including the free-form ones that travel in headers of their own.
func TestTaskRoundTrip(t *testing.T) {
	at := time.UnixMilli(1_764_000_000_123).UTC()
	m := transport.Message{
		ID: "01M86BNTZZT36VSKGS0W2D3SC4", Name: "mail.send", Queue: "q.with-dots_and:colons", Payload: []byte(`{"to":"a"}`),
		Priority: -3, MaxAttempts: 7, Created: at, ETA: at.Add(time.Hour), Expires: at.Add(48 * time.Hour),
		Timeout: 90 * time.Second, ResultTTL: 36 * time.Hour, Headers: map[string]string{"k": "v w"}, IgnoreResult: true,
	}
	pub, err := encode(&m, 4, "boom: it failed", "p.reply.x")
	if err != nil {
		t.Fatal(err)
	}
	if len(pub.Headers) != 1 {
		t.Errorf("headers %v: want the last error alone", pub.Headers)
	}
	d := amqp.Delivery{Headers: pub.Headers, MessageId: pub.MessageId, Body: pub.Body}
	dec, err := decode(&d)
	if err != nil {
		t.Fatal(err)
	}
	got := dec.msg
	if dec.used != 4 || dec.lastErr != "boom: it failed" || dec.replyTo != "p.reply.x" {
		t.Errorf("attempts %d, last error %q, reply to %q", dec.used, dec.lastErr, dec.replyTo)
	}
	if got.ID != m.ID || got.Name != m.Name || got.Queue != m.Queue || string(got.Payload) != string(m.Payload) ||
		got.Priority != m.Priority || got.MaxAttempts != m.MaxAttempts || !got.Created.Equal(m.Created) ||
		!got.ETA.Equal(m.ETA) || !got.Expires.Equal(m.Expires) || got.Timeout != m.Timeout || got.ResultTTL != m.ResultTTL ||
		got.Headers["k"] != "v w" || !got.IgnoreResult {
		t.Errorf("decoded %+v\nwant %+v", got, m)
	}
	// The zero times and durations stay zero.
	plain := transport.Message{ID: "x", Name: "n", Queue: "default", MaxAttempts: 1}
	pub, err = encode(&plain, 0, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if pub.Headers != nil {
		t.Errorf("headers %v: want none", pub.Headers)
	}
	d = amqp.Delivery{Headers: pub.Headers, MessageId: "x", Body: pub.Body}
	dec, err = decode(&d)
	if err != nil {
		t.Fatal(err)
	}
	got = dec.msg
	if got.Name != "n" || dec.replyTo != "" {
		t.Errorf("name %q, reply to %q", got.Name, dec.replyTo)
	}
	if !got.Created.IsZero() || !got.ETA.IsZero() || !got.Expires.IsZero() || got.Timeout != 0 || got.ResultTTL != 0 || len(got.Payload) != 0 {
		t.Errorf("decoded %+v: want zero times and durations", got)
	}
}

// FuzzEnvelope: a task message's body arrives from the broker, written by
// any client; no bytes may panic the parser, and a body it accepts encodes
// back to one that parses to the same fields and the same payload.
func FuzzEnvelope(f *testing.F) {
	for _, s := range []string{
		"docket/1 mail.send p.reply.01M8 0 20 0 1764000000000 0 0 0 0 default\n{}",
		"docket/1 n - -5 3 2 1764000000000 1764000360000 1764086400000 30000 86400000 q with spaces\n\x00\xff\n",
		"", "docket/1", "docket/1 n - 0 20 0 0 0 0 0\n", "docket/2 n - 0 20 0 0 0 0 0 0 default\n", "docket/1 n - x 20 0 0 0 0 0 0 q\n",
		"docket/1 n - 0 20 -1 0 0 0 0 0 q\n", "docket/1 n - 0 20 0 0 0 0 -9223372036854775808 9223372036854775807 q\n",
		"docket/1  n - 0 20 0 0 0 0 0 0 q\n", "docket/1 n - 0 20 0 0 0 0 0 0 q {\"h\":{\"a b\":\"c\\nd\"},\"b\":true,\"bb\":1000}\n{}",
		"docket/1 n - 0 20 0 0 0 0 0 0 q {\"bb\":\"x\"}\n", "docket/1 n - 0 20 0 0 0 0 0 0 q {\n", "docket/1 n r 0 20 0 0 0 0 0 0 \x00\xff\n", `{"args":[1]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var m transport.Message
		attempts, reply, err := openEnvelope(body, &m)
		if err != nil {
			return
		}
		enc := func(m *transport.Message, attempts int, reply string) []byte {
			meta, err := wire.EncodeMeta(m)
			if err != nil {
				t.Fatalf("%q: metadata decoded but does not encode: %v", body, err)
			}
			return envelope(m, attempts, reply, meta)
		}
		again := enc(&m, attempts, reply)
		var m2 transport.Message
		attempts2, reply2, err := openEnvelope(again, &m2)
		if err != nil {
			t.Fatalf("%q opened, but its encoding %q does not: %v", body, again, err)
		}
		if attempts2 != attempts || reply2 != reply || m2.Name != m.Name || !bytes.Equal(m2.Payload, m.Payload) || !bytes.Equal(enc(&m2, attempts2, reply2), again) {
			t.Fatalf("%q: encoding not stable: %q then %q", body, again, enc(&m2, attempts2, reply2))
		}
	})
}

// TestReportsRoundTrip: a batch of state reports survives encoding, with
// every field, empty and nil values, and the JSON of older workers still
// reads.
func TestReportsRoundTrip(t *testing.T) {
	list := []report{
		{ID: "01M86BNTZZT36VSKGS0W2D3SC4", State: transport.StateSucceeded, Attempt: 1, At: 1_764_000_000_123, Result: []byte(`{"ok":true}`)},
		{ID: "b", State: transport.StateScheduled, Attempt: 3, RunAt: 1_764_000_009_000, Error: "boom: it failed\nline two"},
		{ID: "c", State: transport.StateFailed, Attempt: 1 << 20, At: -5},
		{ID: "d", State: transport.StateReady},
	}
	got, err := reportsOf(reportsType, encodeReports(list))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, list) {
		t.Fatalf("decoded %+v\nwant %+v", got, list)
	}
	old, _ := json.Marshal(list)
	if got, err := reportsOf(reportsJSONType, old); err != nil || !reflect.DeepEqual(got, list) {
		t.Fatalf("JSON reports decoded as %+v, %v", got, err)
	}
	if got, err := decodeReports(nil); err != nil || len(got) != 0 {
		t.Fatalf("empty body: %v, %v", got, err)
	}
	body := encodeReports(list)
	for n := range len(body) - 1 {
		if got, err := decodeReports(body[:n]); err == nil && len(got) == len(list) {
			t.Fatalf("a body cut at %d bytes decoded whole", n)
		}
	}
}

// FuzzDecodeReports: any body decodes or is refused, without a panic, and
// what decodes encodes back to the same bytes.
func FuzzDecodeReports(f *testing.F) {
	f.Add(encodeReports([]report{{ID: "a", State: transport.StateSucceeded, Attempt: 1, At: 7, Result: []byte("1")}}))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, body []byte) {
		list, err := decodeReports(body)
		if err != nil {
			return
		}
		if again := encodeReports(list); !bytes.Equal(again, body) && len(list) > 0 {
			if back, err := decodeReports(again); err != nil || !reflect.DeepEqual(back, list) {
				t.Fatalf("re-encoding %+v: %v", list, err)
			}
		}
	})
}
