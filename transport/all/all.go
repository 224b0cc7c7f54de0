// Package all registers every docket transport (Redis and RabbitMQ) — import it
// once, for its side effect, in a program whose backend is chosen by URL at
// run time; transports added later come with it.
//
//	import _ "github.com/docketq/docket/transport/all"
//
// A program that only ever uses SQLite does not need it, and then links no
// broker client.
package all

import (
	_ "github.com/docketq/docket/transport/amqp"   // amqp://, amqps://
	_ "github.com/docketq/docket/transport/celery" // celery+redis://, celery+amqp:// (and TLS)
	_ "github.com/docketq/docket/transport/redis"  // redis://, rediss://
)
