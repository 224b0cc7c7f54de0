package docket_test

import (
	"context"

	goredis "github.com/redis/go-redis/v9"
)

// go-redis logs failed dials to stderr from inside its pool; tests that dial
// closed ports on purpose (TestOpenURLs) would print them on every passing
// run.
func init() { goredis.SetLogger(quietRedis{}) }

type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}
