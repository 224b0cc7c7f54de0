package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/docketq/docket/internal/wire"
	"github.com/docketq/docket/transport"
)

var _ transport.ScheduleStore = (*Store)(nil)

// runHistory is how long a fired slot is remembered, in milliseconds. The
// cursor already prevents a slot from firing twice; the run rows make it
// certain even for a scheduler whose clock jumped back by up to this much.
const runHistory = 30 * 24 * 60 * 60 * 1000

// ScheduleInit implements transport.ScheduleStore. It stores p.Template
// on every call; the cursor moves only when the spec changed.
func (s *Store) ScheduleInit(ctx context.Context, p transport.ScheduleInitParams) (transport.ScheduleState, error) {
	tmpl, err := encodeTemplate(p.Template)
	if err != nil {
		return transport.ScheduleState{}, fmt.Errorf("docket: init schedule %s: %w", p.Name, err)
	}
	err = s.w.do(ctx, "schedule", func(r runner) error {
		_, err := r.exec(ctx, `INSERT INTO docket_schedules (name, spec, next_at, updated_at, template) VALUES (?1, ?2, ?3, ?4, ?5)
			ON CONFLICT (name) DO UPDATE SET template = ?5,
				next_at = CASE WHEN spec != ?2 THEN ?3 ELSE next_at END,
				updated_at = CASE WHEN spec != ?2 THEN ?4 ELSE updated_at END,
				spec = ?2`,
			p.Name, p.Spec, wire.Millis(p.NextAt), wire.Millis(p.Now), tmpl)
		return err
	})
	if err != nil {
		return transport.ScheduleState{}, fmt.Errorf("docket: init schedule %s: %w", p.Name, err)
	}
	sts, err := s.ScheduleStates(ctx, transport.ScheduleStatesParams{Now: p.Now, Names: []string{p.Name}})
	if err != nil {
		return transport.ScheduleState{}, err
	}
	if len(sts) == 0 {
		return transport.ScheduleState{}, fmt.Errorf("docket: schedule %s vanished: %w", p.Name, transport.ErrNotFound)
	}
	return sts[0], nil
}

// ScheduleStates implements transport.ScheduleStore.
func (s *Store) ScheduleStates(ctx context.Context, p transport.ScheduleStatesParams) ([]transport.ScheduleState, error) {
	q := `SELECT s.name, s.spec, s.next_at, s.last_slot, s.last_fired, s.last_task_id, t.state, s.updated_at, s.paused, s.template
		FROM docket_schedules s LEFT JOIN docket_tasks t ON t.id = s.last_task_id`
	var args []any
	if len(p.Names) > 0 {
		names, _ := json.Marshal(p.Names)
		q += " WHERE s.name IN (SELECT value FROM json_each(?))"
		args = append(args, string(names))
	}
	q += " ORDER BY s.name"
	rows, err := s.rdb.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("docket: read schedules: %w", err)
	}
	defer rows.Close()
	var out []transport.ScheduleState
	for rows.Next() {
		var st transport.ScheduleState
		var next, slot, fired, updated int64
		var task sql.NullString
		var state sql.NullInt64
		var paused int
		var tmpl []byte
		if err := rows.Scan(&st.Name, &st.Spec, &next, &slot, &fired, &task, &state, &updated, &paused, &tmpl); err != nil {
			return nil, fmt.Errorf("docket: read schedules: %w", err)
		}
		st.Paused = paused != 0
		if st.Template, err = decodeTemplate(tmpl); err != nil {
			return nil, fmt.Errorf("docket: read schedule %s: %w", st.Name, err)
		}
		st.NextAt, st.LastSlot, st.LastFiredAt, st.Updated = wire.FromMillis(next), wire.FromMillis(slot), wire.FromMillis(fired), wire.FromMillis(updated)
		st.LastTaskID, st.LastTaskState = task.String, transport.State(state.Int64)
		out = append(out, st)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("docket: read schedules: %w", err)
	}
	return out, nil
}

// errLostRace rolls back a fire whose cursor moved under it.
var errLostRace = errors.New("docket: schedule cursor moved")

// ScheduleFire implements transport.ScheduleStore.
func (s *Store) ScheduleFire(ctx context.Context, p transport.ScheduleFireParams) (transport.ScheduleFireResult, error) {
	var res transport.ScheduleFireResult
	now := wire.Millis(p.Now)
	err := s.w.doSavepoint(ctx, "schedule", func(r runner) error {
		res = transport.ScheduleFireResult{}
		var lastTask sql.NullString
		var paused int
		err := queryOne(ctx, r, []any{&lastTask, &paused}, `UPDATE docket_schedules SET next_at = ?, updated_at = ?
			WHERE name = ? AND next_at = ? RETURNING last_task_id, paused`, wire.Millis(p.NextAt), now, p.Name, wire.Millis(p.Cursor))
		if errors.Is(err, sql.ErrNoRows) {
			return errLostRace
		}
		if err != nil {
			return err
		}
		res.Advanced = true
		if p.Slot.IsZero() || p.Message == nil {
			return nil
		}
		if paused != 0 {
			res.Skipped = "paused"
			return nil
		}
		if p.SkipIfRunning && lastTask.Valid {
			var state int
			err := queryOne(ctx, r, []any{&state}, "SELECT state FROM docket_tasks WHERE id = ?", lastTask.String)
			if err == nil && !transport.State(state).Terminal() {
				res.Skipped = "running"
				return nil
			}
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return err
			}
		}
		ins, err := r.exec(ctx, `INSERT INTO docket_schedule_runs (schedule, slot, task_id, fired_at) VALUES (?, ?, ?, ?)
			ON CONFLICT DO NOTHING`, p.Name, wire.Millis(p.Slot), p.Message.ID, now)
		if err != nil {
			return err
		}
		if n, _ := ins.RowsAffected(); n == 0 {
			res.Skipped = "duplicate"
			return nil
		}
		out, err := insert(ctx, r, transport.EnqueueParams{Now: p.Now, Messages: []transport.Message{*p.Message}})
		if err != nil {
			return err
		}
		res.Fired, res.TaskID = true, out[0].ID
		if _, err := r.exec(ctx, `UPDATE docket_schedules SET last_slot = ?, last_fired = ?, last_task_id = ? WHERE name = ?`,
			wire.Millis(p.Slot), now, res.TaskID, p.Name); err != nil {
			return err
		}
		// Forget old slots, a few at a time.
		_, err = r.exec(ctx, `DELETE FROM docket_schedule_runs WHERE (schedule, slot) IN
			(SELECT schedule, slot FROM docket_schedule_runs WHERE fired_at < ? LIMIT 10)`, now-runHistory)
		return err
	})
	if errors.Is(err, errLostRace) {
		return transport.ScheduleFireResult{}, nil
	}
	if err != nil {
		return transport.ScheduleFireResult{}, fmt.Errorf("docket: fire schedule %s: %w", p.Name, err)
	}
	return res, nil
}

// ScheduleDelete implements transport.ScheduleStore.
func (s *Store) ScheduleDelete(ctx context.Context, p transport.ScheduleDeleteParams) error {
	return s.w.do(ctx, "schedule", func(r runner) error {
		_, err := r.exec(ctx, "DELETE FROM docket_schedules WHERE name = ?", p.Name)
		return err
	})
}

// SchedulePause implements transport.ScheduleAdmin.
func (s *Store) SchedulePause(ctx context.Context, p transport.SchedulePauseParams) error {
	paused := 0
	if p.Paused {
		paused = 1
	}
	return s.w.do(ctx, "schedule", func(r runner) error {
		err := execOne(ctx, r, "UPDATE docket_schedules SET paused = ?, updated_at = ? WHERE name = ?", paused, wire.Millis(p.Now), p.Name)
		if errors.Is(err, sql.ErrNoRows) {
			return refuse(fmt.Errorf("docket: pause schedule %s: no such schedule: %w", p.Name, transport.ErrNotFound))
		}
		if err != nil {
			return fmt.Errorf("docket: pause schedule %s: %w", p.Name, err)
		}
		return nil
	})
}

// ScheduleTrigger implements transport.ScheduleAdmin: it enqueues the
// stored template as task p.ID, due now, and records it as the schedule's
// last task without moving the cursor or recording a slot.
func (s *Store) ScheduleTrigger(ctx context.Context, p transport.ScheduleTriggerParams) (string, error) {
	if p.ID == "" {
		return "", fmt.Errorf("%w: trigger schedule %s: empty task id", transport.ErrInvalid, p.Name)
	}
	var id string
	err := s.w.do(ctx, "schedule", func(r runner) error {
		var tmpl []byte
		err := queryOne(ctx, r, []any{&tmpl}, "SELECT template FROM docket_schedules WHERE name = ?", p.Name)
		if errors.Is(err, sql.ErrNoRows) {
			return refuse(fmt.Errorf("docket: trigger schedule %s: no such schedule: %w", p.Name, transport.ErrNotFound))
		}
		if err != nil {
			return fmt.Errorf("docket: trigger schedule %s: %w", p.Name, err)
		}
		m, err := decodeTemplate(tmpl)
		if err != nil {
			return refuse(fmt.Errorf("docket: trigger schedule %s: %w", p.Name, err))
		}
		if m == nil {
			return refuse(fmt.Errorf("%w: trigger schedule %s: no task template is stored for it; "+
				"the scheduler of this schedule must run a docket version that stores templates", transport.ErrInvalid, p.Name))
		}
		m.ID, m.Created, m.ETA = p.ID, p.Now, time.Time{}
		out, err := insert(ctx, r, transport.EnqueueParams{Now: p.Now, Messages: []transport.Message{*m}})
		if dup := (*transport.DuplicateError)(nil); errors.As(err, &dup) || isConstraint(err) {
			return refuse(fmt.Errorf("docket: trigger schedule %s: %w", p.Name, err))
		}
		if err != nil {
			return fmt.Errorf("docket: trigger schedule %s: %w", p.Name, err)
		}
		id = out[0].ID
		if _, err := r.exec(ctx, "UPDATE docket_schedules SET last_task_id = ?, last_fired = ? WHERE name = ?", id, wire.Millis(p.Now), p.Name); err != nil {
			return fmt.Errorf("docket: trigger schedule %s: %w", p.Name, err)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return id, nil
}

// templateRecord is the template column of docket_schedules: the message a
// schedule's slots enqueue, without id, ETA or creation time.
type templateRecord struct {
	Name        string          `json:"name"`
	Queue       string          `json:"queue"`
	Payload     []byte          `json:"payload,omitempty"`
	Meta        json.RawMessage `json:"meta,omitempty"` // headers, backoff, IgnoreResult (wire.EncodeMeta)
	Priority    int             `json:"priority,omitempty"`
	Expires     int64           `json:"expires,omitempty"` // Unix ms
	MaxAttempts int             `json:"max_attempts,omitempty"`
	Timeout     time.Duration   `json:"timeout,omitempty"`
	ResultTTL   time.Duration   `json:"result_ttl,omitempty"`
	UniqueKey   string          `json:"unique_key,omitempty"`
}

// encodeTemplate returns the template column's value (nil for none).
func encodeTemplate(m *transport.Message) (any, error) {
	if m == nil {
		return nil, nil
	}
	meta, err := wire.EncodeMeta(m)
	if err != nil {
		return nil, err
	}
	rec := templateRecord{Name: m.Name, Queue: m.Queue, Payload: m.Payload, Priority: m.Priority, Expires: wire.Millis(m.Expires),
		MaxAttempts: m.MaxAttempts, Timeout: m.Timeout, ResultTTL: m.ResultTTL, UniqueKey: m.UniqueKey}
	if meta != "" {
		rec.Meta = json.RawMessage(meta)
	}
	raw, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("docket: encode schedule template: %w", err)
	}
	return raw, nil
}

// decodeTemplate reads the template column (nil when none is stored).
func decodeTemplate(raw []byte) (*transport.Message, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	var rec templateRecord
	if err := json.Unmarshal(raw, &rec); err != nil {
		return nil, fmt.Errorf("docket: decode schedule template: %w: %w", transport.ErrIncompatible, err)
	}
	m := &transport.Message{Name: rec.Name, Queue: rec.Queue, Payload: rec.Payload, Priority: rec.Priority, Expires: wire.FromMillis(rec.Expires),
		MaxAttempts: rec.MaxAttempts, Timeout: rec.Timeout, ResultTTL: rec.ResultTTL, UniqueKey: rec.UniqueKey}
	if err := wire.DecodeMeta(string(rec.Meta), m); err != nil {
		return nil, fmt.Errorf("docket: decode schedule template: %w: %w", transport.ErrIncompatible, err)
	}
	return m, nil
}
