package docket

import (
	"encoding/json"
	"testing"
)

// FuzzDecodeArgs: arguments are read from storage, possibly written by
// another language's producer; decoding must fail cleanly, never panic, and
// valid JSON must decode into untyped values.
func FuzzDecodeArgs(f *testing.F) {
	for _, s := range []string{`{"to":"a@b.c"}`, `[2,3]`, `"x"`, `null`, `{"to":1}`, `[[[[]]]]`, "\x00", `{"a":"\u0000"}`, `1e999`, `{"a":1}{"b":2}`} {
		f.Add([]byte(s))
	}
	type email struct {
		To   string   `json:"to"`
		Tags []string `json:"tags"`
		N    int      `json:"n"`
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var e email
		decodeJSON(raw, &e)
		var v any
		if err := decodeJSON(raw, &v); err == nil && !json.Valid(raw) {
			t.Fatalf("decoded invalid JSON %q", raw)
		}
	})
}

// FuzzParseURL: Open's URL handling must never panic and never echo a
// password in its error.
func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"", "app.db", "sqlite:app.db", "memory:", "sqlite::memory:", "redis://:S3CR3T@h:1/0", "amqp://u:S3CR3T@h/v", "%", "a:b:c", "http://[::1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		parseURL(raw)
	})
}
