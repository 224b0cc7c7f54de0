package redis

import (
	"context"
	"errors"
	"net"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/docketq/docket/transport"
)

// Subscribe implements transport.Subscriber over Redis pub/sub, so that a
// task enqueued, finished or cancelled on any host wakes workers and
// waiters on every host. Once the subscription is live, at the start and
// after it broke and came back, it sends EventChanged, so listeners
// re-check what they may have missed.
func (t *Transport) Subscribe(fn func(transport.Event)) func() {
	return t.listeners.Add(fn, func() func() {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go t.listen(ctx, done)
		return func() { cancel(); <-done }
	})
}

func (t *Transport) publishLocal(e transport.Event) { t.listeners.Publish(e) }

func (t *Transport) listen(ctx context.Context, done chan struct{}) {
	defer close(done)
	ps := t.rdb.Subscribe(ctx, t.key("ev"))
	// A blocked receive does not watch ctx; closing the subscription does
	// unblock it.
	go func() { <-ctx.Done(); ps.Close() }()
	broken := false
	for ctx.Err() == nil {
		msg, err := ps.ReceiveTimeout(ctx, 30*time.Second)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if ctx.Err() != nil {
				return
			}
			if !broken {
				t.log.Warn("docket: redis subscription broken; reconnecting", "err", err)
			}
			broken = true
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		switch m := msg.(type) {
		case *goredis.Subscription:
			// Whatever was published before the subscription was live,
			// at the start or while it was broken, is missed: listeners
			// re-check.
			broken = false
			t.publishLocal(transport.Event{Kind: transport.EventChanged})
		case *goredis.Message:
			kind, arg, _ := strings.Cut(m.Payload, " ")
			switch kind {
			case "r":
				t.publishLocal(transport.Event{Kind: transport.EventReady, Queue: arg})
			case "d":
				t.publishLocal(transport.Event{Kind: transport.EventFinished, IDs: []string{arg}})
			case "c":
				t.publishLocal(transport.Event{Kind: transport.EventCancel, IDs: []string{arg}})
			}
		}
	}
}
