// Package wire holds encodings shared by docket's stores, so that every
// backend writes the same bytes for the same task.
package wire

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/docketq/docket/transport"
)

// meta holds a message's rarely-set fields as one JSON value.
type meta struct {
	Headers      map[string]string `json:"h,omitempty"`
	BackoffBase  int64             `json:"bb,omitempty"`
	BackoffMax   int64             `json:"bm,omitempty"`
	BackoffJit   float64           `json:"bj,omitempty"`
	HasBackoff   bool              `json:"b,omitempty"`
	IgnoreResult bool              `json:"ir,omitempty"`
}

// EncodeMeta returns the JSON of m's headers, backoff and IgnoreResult, or
// "" when all are unset (the common case, stored as nothing).
func EncodeMeta(m *transport.Message) (string, error) {
	if len(m.Headers) == 0 && m.Backoff == nil && !m.IgnoreResult {
		return "", nil
	}
	v := meta{Headers: m.Headers, IgnoreResult: m.IgnoreResult}
	if b := m.Backoff; b != nil {
		v.HasBackoff, v.BackoffBase, v.BackoffMax, v.BackoffJit = true, int64(b.Base), int64(b.Max), b.Jitter
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("docket: encode task metadata: %w", err)
	}
	return string(raw), nil
}

// DecodeMeta sets m's headers, backoff and IgnoreResult from raw (which may
// be empty). raw was stored, possibly by another version or process: it is
// decoded as data only, and an error never panics.
func DecodeMeta(raw string, m *transport.Message) error {
	if raw == "" {
		return nil
	}
	var v meta
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		return fmt.Errorf("docket: decode task metadata: %w", err)
	}
	m.Headers, m.IgnoreResult = v.Headers, v.IgnoreResult
	if v.HasBackoff {
		m.Backoff = &transport.Backoff{Base: time.Duration(v.BackoffBase), Max: time.Duration(v.BackoffMax), Jitter: v.BackoffJit}
	}
	return nil
}
