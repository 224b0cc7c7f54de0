package amqp

import (
	"context"
	"time"

	"github.com/docketq/docket/transport"
)

// GivenUpHeader is givenUpHeader, for the external tests.
const GivenUpHeader = givenUpHeader

// RememberTasks is rememberTasks, for the external tests.
const RememberTasks = rememberTasks

// Kept returns how many tasks t, RabbitMQ alone, keeps in memory.
func Kept(t transport.Transport) int {
	a := t.(*alone)
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.known)
}

// ResendOverdue is stored.resendOverdue, for the external tests.
func ResendOverdue(ctx context.Context, t transport.Transport, lost time.Duration) (int, error) {
	if c, ok := t.(*storedCounted); ok {
		return c.resendOverdue(ctx, lost)
	}
	return t.(*stored).resendOverdue(ctx, lost)
}
