package sqlite

import (
	"database/sql"
	"net/url"
	"testing"

	"github.com/docketq/docket/transport"
)

// FuzzDecodeMeta: the metadata column is read back from a file another
// process (or version) wrote; no bytes may panic the decoder.
func FuzzDecodeMeta(f *testing.F) {
	for _, s := range []string{"", "{}", `{"h":{"a":"b"},"b":true,"bb":1000,"bm":2000,"bj":0.5,"ir":true}`, `{"h":null}`, `{"bb":"x"}`, "[", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		var m transport.Message
		decodeMeta(sql.NullString{String: raw, Valid: true}, &m)
	})
}

// FuzzParseURL: URLs come from configuration and the environment.
func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"sqlite:a.db", "sqlite:///abs/a.db", "memory:", "sqlite::memory:", "sqlite:a.db?synchronous=full&busy_timeout=2s", "sqlite://h/x", "sqlite:%zz", "sqlite:a.db?_pragma=x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := url.Parse(raw)
		if err != nil {
			return
		}
		o, err := ParseURL(u)
		if err == nil && !o.Memory && o.Path == "" && u.Scheme != "memory" {
			// An empty path means the default file; that is fine.
			_ = o
		}
	})
}
