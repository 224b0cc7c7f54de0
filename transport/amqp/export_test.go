package amqp

import "github.com/docketq/docket/transport"

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
