package redis

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/oklog/ulid/v2"

	"github.com/docketq/docket/internal/wire"
	"github.com/docketq/docket/transport"
)

// ScheduleInit implements transport.ScheduleStore.
func (t *Transport) ScheduleInit(ctx context.Context, p transport.ScheduleInitParams) (transport.ScheduleState, error) {
	tmpl, has := "", "0"
	if p.Template != nil {
		raw, err := json.Marshal(p.Template)
		if err != nil {
			return transport.ScheduleState{}, fmt.Errorf("docket: schedule %s: template: %w: %w", p.Name, transport.ErrInvalid, err)
		}
		tmpl, has = string(raw), "1"
	}
	if _, err := t.run(ctx, scheduleInitScript, wire.Millis(p.Now), p.Name, p.Spec, wire.Millis(p.NextAt), tmpl, has); err != nil {
		return transport.ScheduleState{}, fmt.Errorf("docket: redis init schedule %s: %w", p.Name, err)
	}
	sts, err := t.ScheduleStates(ctx, transport.ScheduleStatesParams{Now: p.Now, Names: []string{p.Name}})
	if err != nil {
		return transport.ScheduleState{}, err
	}
	if len(sts) == 0 {
		return transport.ScheduleState{}, fmt.Errorf("docket: schedule %s vanished: %w", p.Name, transport.ErrNotFound)
	}
	return sts[0], nil
}

// ScheduleStates implements transport.ScheduleStore.
func (t *Transport) ScheduleStates(ctx context.Context, p transport.ScheduleStatesParams) ([]transport.ScheduleState, error) {
	names := p.Names
	if len(names) == 0 {
		var err error
		if names, err = t.rdb.SMembers(ctx, t.key("schedules")).Result(); err != nil {
			return nil, fmt.Errorf("docket: redis read schedules: %w", t.wrap(err))
		}
	}
	var out []transport.ScheduleState
	for _, name := range names {
		h, err := t.rdb.HGetAll(ctx, t.key("s", name)).Result()
		if err != nil {
			return nil, fmt.Errorf("docket: redis read schedule %s: %w", name, t.wrap(err))
		}
		if len(h) == 0 {
			continue
		}
		n := func(k string) int64 { v, _ := strconv.ParseInt(h[k], 10, 64); return v }
		st := transport.ScheduleState{Name: name, Spec: h["spec"], NextAt: wire.FromMillis(n("next_at")), LastSlot: wire.FromMillis(n("last_slot")),
			LastFiredAt: wire.FromMillis(n("last_fired")), LastTaskID: h["last_task"], Updated: wire.FromMillis(n("updated")),
			Paused: h["paused"] != ""}
		if raw := h["tmpl"]; raw != "" {
			var m transport.Message
			if err := json.Unmarshal([]byte(raw), &m); err != nil {
				t.log.Warn("docket: redis schedule template unreadable", "schedule", name, "err", err)
			} else {
				st.Template = &m
			}
		}
		if st.LastTaskID != "" {
			if s, err := t.rdb.HGet(ctx, t.key("t", st.LastTaskID), "state").Int(); err == nil {
				st.LastTaskState = transport.State(s)
			}
		}
		out = append(out, st)
	}
	return out, nil
}

// ScheduleFire implements transport.ScheduleStore.
func (t *Transport) ScheduleFire(ctx context.Context, p transport.ScheduleFireParams) (transport.ScheduleFireResult, error) {
	skip := "0"
	if p.SkipIfRunning {
		skip = "1"
	}
	slot := ""
	if !p.Slot.IsZero() && p.Message != nil {
		slot = strconv.FormatInt(wire.Millis(p.Slot), 10)
	}
	args := []any{wire.Millis(p.Now), p.Name, strconv.FormatInt(wire.Millis(p.Cursor), 10), strconv.FormatInt(wire.Millis(p.NextAt), 10), slot, skip, ulid.Make().String()}
	if slot != "" {
		m := *p.Message
		if m.Created.IsZero() {
			m.Created = p.Now
		}
		var err error
		if args, err = messageArgs(args, &m); err != nil {
			return transport.ScheduleFireResult{}, err
		}
	}
	v, err := t.run(ctx, scheduleFireScript, args...)
	if err != nil {
		return transport.ScheduleFireResult{}, fmt.Errorf("docket: redis fire schedule %s: %w", p.Name, err)
	}
	r := row(v)
	return transport.ScheduleFireResult{Advanced: num(r, 0) == 1, Fired: num(r, 1) == 1, TaskID: str(r, 2), Skipped: str(r, 3)}, nil
}

// ScheduleDelete implements transport.ScheduleStore.
func (t *Transport) ScheduleDelete(ctx context.Context, p transport.ScheduleDeleteParams) error {
	pipe := t.rdb.TxPipeline()
	pipe.Del(ctx, t.key("s", p.Name))
	pipe.SRem(ctx, t.key("schedules"), p.Name)
	_, err := pipe.Exec(ctx)
	return t.wrap(err)
}
