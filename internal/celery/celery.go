// Package celery reads and writes Celery's task messages (protocol 2,
// JSON) and result records, as Celery 5.2 and kombu 5.2 put them on
// RabbitMQ and Redis: the message headers, the body [args, kwargs, embed],
// kombu's Redis envelope, and the records of the Redis and rpc result
// backends.
//
// It touches no broker. Every function that reads a foreign message
// returns an error wrapping ErrMalformed, naming what is wrong: for what
// Celery's own worker rejects or crashes on (a missing or non-JSON content
// type, a body that is not [args, kwargs, embed], a time it cannot parse,
// a Redis envelope without its delivery tag or delivery info), and for
// protocol 1 (no task header), which Celery 5.2 still converts but this
// package does not read.
package celery

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
	"unicode/utf8"
)

// ErrMalformed is wrapped by every error about a message that is not a
// Celery protocol 2 task in JSON.
var ErrMalformed = errors.New("docket: malformed celery message")

// ContentType is the only content type read and written.
const ContentType = "application/json"

// Signature is a task signature in a message's embed: a follow-up of the
// task (link, link_error, a chain's next steps, a chord's body).
type Signature struct {
	Task        string          `json:"task"`
	Args        json.RawMessage `json:"args"`
	Kwargs      json.RawMessage `json:"kwargs"`
	Options     map[string]any  `json:"options"`
	SubtaskType *string         `json:"subtask_type"`
	Immutable   bool            `json:"immutable"`
}

// MarshalJSON writes the signature as Celery's worker needs it: empty
// args, kwargs and options as [], {} and {}, never null (a null makes the
// worker fail the task that carried the signature).
func (s Signature) MarshalJSON() ([]byte, error) {
	type plain Signature
	p := plain(s)
	if len(p.Args) == 0 || string(compact(p.Args)) == "null" {
		p.Args = json.RawMessage("[]")
	} else if !isJSON(p.Args, '[') {
		return nil, fmt.Errorf("%w: signature %s: args are not a JSON array", ErrMalformed, s.Task)
	}
	if len(p.Kwargs) == 0 || string(compact(p.Kwargs)) == "null" {
		p.Kwargs = json.RawMessage("{}")
	} else if !isJSON(p.Kwargs, '{') {
		return nil, fmt.Errorf("%w: signature %s: kwargs are not a JSON object", ErrMalformed, s.Task)
	}
	if p.Options == nil {
		p.Options = map[string]any{}
	}
	return json.Marshal(p)
}

// Embed is the third element of a message's body.
type Embed struct {
	Callbacks []Signature `json:"callbacks"`
	Errbacks  []Signature `json:"errbacks"`
	Chain     []Signature `json:"chain"` // the steps after this one, last first
	Chord     *Signature  `json:"chord"`
}

// Task is one Celery task message.
type Task struct {
	ID     string
	Name   string          // the task header
	Args   json.RawMessage // a JSON array
	Kwargs json.RawMessage // a JSON object
	Embed  Embed

	ETA          time.Time // zero: none
	Expires      time.Time // zero: none
	Retries      int       // attempts used before this message
	HardLimit    time.Duration
	SoftLimit    time.Duration
	IgnoreResult bool
	RootID       string
	ParentID     string
	Group        string
	GroupIndex   *int

	CorrelationID string
	ReplyTo       string
	// Priority is the message's 0 to 9. RabbitMQ serves a higher number
	// first (on a queue with priorities); kombu's Redis transport serves a
	// lower one first (see PriorityList).
	Priority int

	// Other holds the headers this package does not read (custom
	// headers of apply_async(headers=…), stamps), as read.
	Other map[string]any
}

// known are the protocol 2 headers Task holds (or ignores on purpose).
var known = map[string]bool{
	"lang": true, "task": true, "id": true, "shadow": true, "eta": true, "expires": true,
	"group": true, "group_index": true, "retries": true, "timelimit": true, "root_id": true,
	"parent_id": true, "argsrepr": true, "kwargsrepr": true, "origin": true, "ignore_result": true,
}

// Decode reads a task from a message's content type and encoding, its
// headers (as amqp091-go or encoding/json decoded them) and its body.
func Decode(contentType, contentEncoding string, headers map[string]any, body []byte) (Task, error) {
	var t Task
	switch {
	case contentType == "":
		return t, fmt.Errorf("%w: no content type", ErrMalformed)
	case contentType != ContentType:
		return t, fmt.Errorf("%w: content type %q: only %s is read", ErrMalformed, contentType, ContentType)
	case contentEncoding != "" && !strings.EqualFold(contentEncoding, "utf-8") && !strings.EqualFold(contentEncoding, "utf8"):
		return t, fmt.Errorf("%w: content encoding %q: only utf-8 is read", ErrMalformed, contentEncoding)
	}
	name, _ := headers["task"].(string)
	if name == "" {
		return t, fmt.Errorf("%w: no task header (protocol 1 is not read)", ErrMalformed)
	}
	t.Name = name
	if t.ID, _ = headers["id"].(string); t.ID == "" {
		return t, fmt.Errorf("%w: task %s has no id header", ErrMalformed, name)
	}
	var err error
	if t.ETA, err = parseTime(headers["eta"]); err != nil {
		return t, fmt.Errorf("%w: task %s: eta: %v", ErrMalformed, t.ID, err)
	}
	if t.Expires, err = parseTime(headers["expires"]); err != nil {
		return t, fmt.Errorf("%w: task %s: expires: %v", ErrMalformed, t.ID, err)
	}
	switch v := headers["retries"].(type) {
	case nil:
	case float64: // JSON: any number Celery's worker would take
		t.Retries = int(min(max(v, 0), math.MaxInt32))
	default:
		n, ok := number(v)
		if !ok {
			return t, fmt.Errorf("%w: task %s: retries %v", ErrMalformed, t.ID, v)
		}
		t.Retries = int(min(max(n, 0), math.MaxInt32))
	}
	if lim, ok := headers["timelimit"].([]any); ok && len(lim) == 2 {
		t.HardLimit, t.SoftLimit = seconds(lim[0]), seconds(lim[1])
	}
	t.IgnoreResult, _ = headers["ignore_result"].(bool)
	t.RootID, _ = headers["root_id"].(string)
	t.ParentID, _ = headers["parent_id"].(string)
	t.Group, _ = headers["group"].(string)
	if v, ok := number(headers["group_index"]); ok {
		i := int(v)
		t.GroupIndex = &i
	}
	for k, v := range headers {
		if !known[k] {
			if t.Other == nil {
				t.Other = map[string]any{}
			}
			t.Other[k] = v
		}
	}
	if err := t.decodeBody(body); err != nil {
		return t, err
	}
	return t, nil
}

// decodeBody reads [args, kwargs, embed]; the embed may be null or partial.
func (t *Task) decodeBody(body []byte) error {
	var parts []json.RawMessage
	if err := json.Unmarshal(body, &parts); err != nil {
		return fmt.Errorf("%w: task %s: body is not a JSON array: %v", ErrMalformed, t.ID, err)
	}
	if len(parts) != 3 {
		return fmt.Errorf("%w: task %s: body has %d elements, want [args, kwargs, embed]", ErrMalformed, t.ID, len(parts))
	}
	if !isJSON(parts[0], '[') {
		return fmt.Errorf("%w: task %s: args are not a JSON array", ErrMalformed, t.ID)
	}
	if !isJSON(parts[1], '{') {
		return fmt.Errorf("%w: task %s: kwargs are not a JSON object", ErrMalformed, t.ID)
	}
	t.Args, t.Kwargs = parts[0], parts[1]
	if string(bytes.TrimSpace(parts[2])) == "null" {
		return nil
	}
	if err := json.Unmarshal(parts[2], &t.Embed); err != nil {
		return fmt.Errorf("%w: task %s: embed: %v", ErrMalformed, t.ID, err)
	}
	return nil
}

// isJSON reports whether raw is a JSON value starting with open.
func isJSON(raw json.RawMessage, open byte) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) > 0 && raw[0] == open
}

// Headers returns the message headers of t, typed as Celery's own
// producer sends them over AMQP: integers as int32 (py-amqp reads int64
// as unsigned), times as ISO 8601 with the offset.
func (t Task) Headers() map[string]any {
	h := map[string]any{}
	for k, v := range t.Other {
		if k == "redelivered" { // kombu's mark of a restored message
			continue
		}
		if f, ok := v.(float64); ok && f == math.Trunc(f) && math.Abs(f) <= math.MaxInt32 {
			v = int32(f) // a whole number read from JSON: an integer, as Celery sends it
		}
		h[k] = v
	}
	root := t.RootID
	if root == "" {
		root = t.ID
	}
	args, kwargs := t.args(), t.kwargs()
	h["lang"] = "go"
	h["task"] = t.Name
	h["id"] = t.ID
	h["shadow"] = nil
	h["eta"] = formatTime(t.ETA)
	h["expires"] = formatTime(t.Expires)
	h["group"] = optional(t.Group)
	h["group_index"] = nil
	if t.GroupIndex != nil {
		h["group_index"] = int32(*t.GroupIndex)
	}
	h["retries"] = int32(min(max(t.Retries, 0), math.MaxInt32))
	h["timelimit"] = []any{limit(t.HardLimit), limit(t.SoftLimit)}
	h["root_id"] = root
	h["parent_id"] = optional(t.ParentID)
	h["argsrepr"] = clip(string(args), 1024)
	h["kwargsrepr"] = clip(string(kwargs), 1024)
	h["origin"] = "docket"
	h["ignore_result"] = t.IgnoreResult
	return h
}

// Body returns the message body of t: [args, kwargs, embed]. Args must be
// a JSON array and Kwargs an object (or empty).
func (t Task) Body() ([]byte, error) {
	if !isJSON(t.args(), '[') || !isJSON(t.kwargs(), '{') {
		return nil, fmt.Errorf("%w: task %s: args must be a JSON array and kwargs an object", ErrMalformed, t.ID)
	}
	return json.Marshal([]any{t.args(), t.kwargs(), t.Embed})
}

func (t Task) args() json.RawMessage {
	if len(t.Args) == 0 {
		return json.RawMessage("[]")
	}
	return t.Args
}

func (t Task) kwargs() json.RawMessage {
	if len(t.Kwargs) == 0 {
		return json.RawMessage("{}")
	}
	return t.Kwargs
}

// Payload maps a Celery call's args and kwargs onto one JSON value, the
// argument of a docket task: the args array when there are no kwargs
// (a tuple, a slice, or docket.Args), the kwargs object when there are no
// args (a struct), null when there are neither. A call with both has no
// single argument and is refused. The args stay an array however many
// they are: f.delay("hi") arrives as ["hi"], and f.delay([1, 2]) as
// [[1, 2]].
func Payload(args, kwargs json.RawMessage) (json.RawMessage, error) {
	hasArgs := len(args) > 0 && string(compact(args)) != "[]"
	hasKwargs := len(kwargs) > 0 && string(compact(kwargs)) != "{}"
	switch {
	case hasArgs && hasKwargs:
		return nil, fmt.Errorf("%w: a docket task takes args or kwargs, not both", ErrMalformed)
	case hasArgs:
		return args, nil
	case hasKwargs:
		return kwargs, nil
	}
	return json.RawMessage("null"), nil
}

// Split maps a docket task's argument onto a Celery call, for a docket
// producer: a JSON array becomes the args, an object the kwargs, null
// neither, and any other value the only positional argument. Payload
// gives the argument back, but for such a single value, which it gives as
// a one-element array.
func Split(payload json.RawMessage) (args, kwargs json.RawMessage) {
	p := compact(payload)
	switch {
	case len(p) == 0 || string(p) == "null":
		return json.RawMessage("[]"), json.RawMessage("{}")
	case p[0] == '[':
		return payload, json.RawMessage("{}")
	case p[0] == '{':
		return json.RawMessage("[]"), payload
	}
	return json.RawMessage("[" + string(p) + "]"), json.RawMessage("{}")
}

func compact(raw json.RawMessage) []byte {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return bytes.TrimSpace(raw)
	}
	return b.Bytes()
}

// celeryTime is how Celery writes an aware time: microseconds and the
// offset, "+00:00" for UTC.
const celeryTime = "2006-01-02T15:04:05.000000-07:00"

func formatTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Format(celeryTime)
}

// parseTime reads an ISO 8601 time as Celery's worker does: 'T' or a
// space between date and time, with or without seconds and a fraction,
// or a date alone; with an offset or naive (UTC, as Celery takes it); nil
// is no time. A fraction is a fraction of a second (Celery 5.2 reads its
// digits as a number of microseconds, so ".5" is 5 µs there; Celery
// itself always writes six digits, where both agree).
func parseTime(v any) (time.Time, error) {
	if v == nil {
		return time.Time{}, nil
	}
	s, ok := v.(string)
	if !ok {
		return time.Time{}, fmt.Errorf("%v is not a string", v)
	}
	for _, layout := range []string{
		time.RFC3339Nano, "2006-01-02T15:04:05.999999999",
		"2006-01-02 15:04:05.999999999Z07:00", "2006-01-02 15:04:05.999999999",
		"2006-01-02T15:04Z07:00", "2006-01-02T15:04", "2006-01-02",
	} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not an ISO 8601 time", s)
}

// number reads an integer header as amqp091-go (int8 to int64) or
// encoding/json (float64) decoded it.
func number(v any) (int64, bool) {
	switch n := v.(type) {
	case int8:
		return int64(n), true
	case int16:
		return int64(n), true
	case int32:
		return int64(n), true
	case int64:
		return n, true
	case int:
		return int64(n), true
	case uint8:
		return int64(n), true
	case uint16:
		return int64(n), true
	case uint32:
		return int64(n), true
	case float64:
		if n == math.Trunc(n) && math.Abs(n) < 1<<53 {
			return int64(n), true
		}
	}
	return 0, false
}

// seconds reads a time limit (seconds, integer or not; nil is none).
func seconds(v any) time.Duration {
	if f, ok := v.(float64); ok && f > 0 {
		return time.Duration(f * float64(time.Second))
	}
	if n, ok := number(v); ok && n > 0 {
		return time.Duration(n) * time.Second
	}
	return 0
}

// limit writes a time limit: whole seconds as int32, others as a float.
func limit(d time.Duration) any {
	switch {
	case d <= 0:
		return nil
	case d%time.Second == 0 && d/time.Second <= math.MaxInt32:
		return int32(d / time.Second)
	}
	return d.Seconds()
}

func optional(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// clip cuts s to at most n bytes, on a character boundary, marking the cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	n -= 3
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}
