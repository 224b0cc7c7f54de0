// Package amqptest holds test helpers for docket on RabbitMQ.
package amqptest

import (
	"fmt"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/docketq/docket/transport/amqp"
)

// DeleteTopology removes what docket declared under prefix on the broker at
// base: the queues of the given docket queues, the dead-letter queue, the
// delay levels and the exchanges. Names that do not exist are skipped.
// Reply queues are left to RabbitMQ, which deletes each ten minutes after
// its producer left; control queues go with their connections.
func DeleteTopology(t testing.TB, base, prefix string, queues ...string) {
	conn, err := amqp091.Dial(base)
	if err != nil {
		t.Logf("cleanup: %v", err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return
	}
	names := []string{prefix + ".dead"}
	for _, q := range queues {
		names = append(names, prefix+".q."+q)
	}
	exchanges := []string{prefix + ".dead", prefix + ".deliver", prefix + ".control"}
	for l := 0; l < amqp.Levels; l++ {
		n := fmt.Sprintf("%s.delay.%02d", prefix, l)
		names = append(names, n)
		exchanges = append(exchanges, n)
	}
	for _, q := range names {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			// A failed delete of a missing queue closes the channel.
			if ch, err = conn.Channel(); err != nil {
				return
			}
		}
	}
	for _, x := range exchanges {
		if err := ch.ExchangeDelete(x, false, false); err != nil {
			if ch, err = conn.Channel(); err != nil {
				return
			}
		}
	}
}
