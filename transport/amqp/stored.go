package amqp

import (
	"context"
	"fmt"

	"github.com/docketq/docket/transport"
)

// Stored is the RabbitMQ transport with a result store: RabbitMQ carries
// every task, the store keeps their state. It adds what the store can do
// for every process: listing, retention, and schedules that fire each slot
// once however many processes run the scheduler.
type Stored struct {
	*Transport
}

var (
	_ transport.Transport     = (*Stored)(nil)
	_ transport.Lister        = (*Stored)(nil)
	_ transport.Pruner        = (*Stored)(nil)
	_ transport.ScheduleStore = (*Stored)(nil)
	_ transport.ResultStorer  = (*Stored)(nil)
)

// List implements transport.Lister when the store does.
func (s *Stored) List(ctx context.Context, p transport.ListParams) ([]transport.Info, error) {
	if l, ok := s.store.(transport.Lister); ok {
		return l.List(ctx, p)
	}
	return nil, fmt.Errorf("docket: amqp result store: list: %w", transport.ErrUnsupported)
}

// Prune implements transport.Pruner when the store does.
func (s *Stored) Prune(ctx context.Context, p transport.PruneParams) (int, error) {
	if pr, ok := s.store.(transport.Pruner); ok {
		return pr.Prune(ctx, p)
	}
	return 0, nil
}

func (s *Stored) schedules() (transport.ScheduleStore, error) {
	if ss, ok := s.store.(transport.ScheduleStore); ok {
		return ss, nil
	}
	return nil, fmt.Errorf("docket: amqp result store: schedules: %w", transport.ErrUnsupported)
}

// ScheduleInit implements transport.ScheduleStore.
func (s *Stored) ScheduleInit(ctx context.Context, p transport.ScheduleInitParams) (transport.ScheduleState, error) {
	ss, err := s.schedules()
	if err != nil {
		return transport.ScheduleState{}, err
	}
	return ss.ScheduleInit(ctx, p)
}

// ScheduleStates implements transport.ScheduleStore.
func (s *Stored) ScheduleStates(ctx context.Context, p transport.ScheduleStatesParams) ([]transport.ScheduleState, error) {
	ss, err := s.schedules()
	if err != nil {
		return nil, err
	}
	return ss.ScheduleStates(ctx, p)
}

// ScheduleDelete implements transport.ScheduleStore.
func (s *Stored) ScheduleDelete(ctx context.Context, p transport.ScheduleDeleteParams) error {
	ss, err := s.schedules()
	if err != nil {
		return err
	}
	return ss.ScheduleDelete(ctx, p)
}

// ScheduleFire implements transport.ScheduleStore: the slot's task is
// published, then the store records the slot and the task in one step. If
// the store does not fire the slot (another process did, or this one died
// in between), the message finds no task and is dropped when delivered.
func (s *Stored) ScheduleFire(ctx context.Context, p transport.ScheduleFireParams) (transport.ScheduleFireResult, error) {
	ss, err := s.schedules()
	if err != nil {
		return transport.ScheduleFireResult{}, err
	}
	if p.Message != nil && !p.Slot.IsZero() {
		if p.Message.Created.IsZero() {
			p.Message.Created = p.Now
		}
		if err := s.publishNew(ctx, p.Now, []transport.Message{*p.Message}); err != nil {
			return transport.ScheduleFireResult{}, fmt.Errorf("docket: schedule %s: %w", p.Name, unrecorded(err))
		}
	}
	return ss.ScheduleFire(ctx, p)
}
