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
	// ETA is the ETA the task was enqueued with (Unix ms), for the
	// deliveries' Message.ETA: the stores' timer column holds it only
	// until the task is due.
	ETA int64 `json:"e,omitempty"`
}

// EncodeMeta returns the JSON of m's headers, backoff, IgnoreResult and
// ETA, or "" when all are unset (the common case, stored as nothing).
func EncodeMeta(m *transport.Message) (string, error) {
	if len(m.Headers) == 0 && m.Backoff == nil && !m.IgnoreResult && m.ETA.IsZero() {
		return "", nil
	}
	v := meta{Headers: m.Headers, IgnoreResult: m.IgnoreResult}
	if !m.ETA.IsZero() {
		v.ETA = Millis(m.ETA)
	}
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
// decoded as data only, and an error never panics. The ETA is left alone:
// a task's Info reports one only while it waits for it.
func DecodeMeta(raw string, m *transport.Message) error {
	_, err := decodeMeta(raw, m)
	return err
}

// DecodeDeliveryMeta is DecodeMeta for a delivery: it also sets m.ETA to
// the ETA the task was enqueued with, if any.
func DecodeDeliveryMeta(raw string, m *transport.Message) error {
	eta, err := decodeMeta(raw, m)
	if eta > 0 {
		m.ETA = FromMillis(eta)
	}
	return err
}

func decodeMeta(raw string, m *transport.Message) (eta int64, err error) {
	if raw == "" {
		return 0, nil
	}
	var v meta
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		return 0, fmt.Errorf("docket: decode task metadata: %w", err)
	}
	m.Headers, m.IgnoreResult = v.Headers, v.IgnoreResult
	if v.HasBackoff {
		m.Backoff = &transport.Backoff{Base: time.Duration(v.BackoffBase), Max: time.Duration(v.BackoffMax), Jitter: v.BackoffJit}
	}
	return v.ETA, nil
}
