package celery

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Task states a result record holds.
const (
	StatusPending = "PENDING"
	StatusStarted = "STARTED"
	StatusSuccess = "SUCCESS"
	StatusFailure = "FAILURE"
	StatusRetry   = "RETRY"
	StatusRevoked = "REVOKED"
)

// MetaKey is the Redis result backend's key of a task's record; the
// backend also publishes each record on a channel of the same name, the
// only thing a waiting Celery client listens to.
func MetaKey(id string) string { return "celery-task-meta-" + id }

// Result is a result record, as the Redis backend stores it (JSON of the
// struct; see RPC for the rpc backend's form).
type Result struct {
	Status    string          `json:"status"`
	Result    json.RawMessage `json:"result"`
	Traceback *string         `json:"traceback"`
	Children  []any           `json:"children"`
	DateDone  *string         `json:"date_done"` // null while not done
	GroupID   string          `json:"group_id,omitempty"`
	ParentID  string          `json:"parent_id,omitempty"`
	TaskID    string          `json:"task_id"`
}

// Exception is a failure's result: what a Celery client raises. A module
// it does not know ("go") makes it build a class of that name.
type Exception struct {
	Type    string   `json:"exc_type"`
	Message []string `json:"exc_message"`
	Module  string   `json:"exc_module"`
}

// dateDone is how Celery writes date_done: naive UTC with microseconds.
const dateDone = "2006-01-02T15:04:05.000000"

// Succeeded returns the record of a task that returned result at done.
func Succeeded(id string, result json.RawMessage, done time.Time) Result {
	if len(result) == 0 {
		result = json.RawMessage("null")
	}
	return Result{Status: StatusSuccess, Result: result, Children: []any{}, DateDone: date(done), TaskID: id}
}

// Failed returns the record of a task that failed at done with exc and
// the traceback text trace ("" for none).
func Failed(id string, exc Exception, trace string, done time.Time) Result {
	if exc.Message == nil {
		exc.Message = []string{}
	}
	raw, _ := json.Marshal(exc)
	r := Result{Status: StatusFailure, Result: raw, Children: []any{}, DateDone: date(done), TaskID: id}
	if trace != "" {
		r.Traceback = &trace
	}
	return r
}

// Revoked returns the record of a task Celery's worker would not run:
// expired, or revoked, as reason says ("expired").
func Revoked(id, reason string, done time.Time) Result {
	raw, _ := json.Marshal(Exception{Type: "TaskRevokedError", Message: []string{reason}, Module: "celery.exceptions"})
	return Result{Status: StatusRevoked, Result: raw, Children: []any{}, DateDone: date(done), TaskID: id}
}

// RPC returns r as the rpc backend sends it to a reply queue: the same
// fields but date_done, group_id and parent_id.
func (r Result) RPC() ([]byte, error) {
	return json.Marshal(struct {
		TaskID    string          `json:"task_id"`
		Status    string          `json:"status"`
		Result    json.RawMessage `json:"result"`
		Traceback *string         `json:"traceback"`
		Children  []any           `json:"children"`
	}{r.TaskID, r.Status, r.Result, r.Traceback, r.Children})
}

// StartedBy returns the record of a task a worker started (Celery writes
// it only with task_track_started).
func StartedBy(id string, pid int, hostname string) Result {
	raw, _ := json.Marshal(map[string]any{"pid": pid, "hostname": hostname})
	return Result{Status: StatusStarted, Result: raw, Children: []any{}, TaskID: id}
}

func date(t time.Time) *string {
	s := t.UTC().Format(dateDone)
	return &s
}

// DecodeResult reads a result record.
func DecodeResult(raw []byte) (Result, error) {
	var r Result
	if err := json.Unmarshal(raw, &r); err != nil {
		return r, fmt.Errorf("%w: not a result record: %v", ErrMalformed, err)
	}
	if r.Status == "" {
		return r, fmt.Errorf("%w: a result record without a status", ErrMalformed)
	}
	return r, nil
}

// Done reports whether r is a final state.
func (r Result) Done() bool {
	switch r.Status {
	case StatusSuccess, StatusFailure, StatusRevoked:
		return true
	}
	return false
}

// Error returns the failure of a FAILURE or REVOKED record as text,
// "Type: message", the way a Celery client shows it; "" for other states.
// The message may be a list of arguments or a plain string.
func (r Result) Error() string {
	if r.Status != StatusFailure && r.Status != StatusRevoked {
		return ""
	}
	var e struct {
		Type    string          `json:"exc_type"`
		Message json.RawMessage `json:"exc_message"`
	}
	if json.Unmarshal(r.Result, &e) != nil || e.Type == "" {
		var text string
		if json.Unmarshal(r.Result, &text) == nil {
			return text
		}
		return strings.TrimSpace(string(r.Result))
	}
	var parts []any
	var one string
	msg := ""
	switch {
	case json.Unmarshal(e.Message, &parts) == nil:
		texts := make([]string, len(parts))
		for i, p := range parts {
			texts[i] = fmt.Sprint(p)
		}
		msg = strings.Join(texts, ", ")
	case json.Unmarshal(e.Message, &one) == nil:
		msg = one
	}
	if msg == "" {
		return e.Type
	}
	return e.Type + ": " + msg
}
