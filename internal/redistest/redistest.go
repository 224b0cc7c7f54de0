// Package redistest holds test helpers for docket on Redis.
package redistest

import (
	"context"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// DeletePrefix removes every key docket wrote under prefix on the server
// at base (a redis:// URL): all of them share the hash tag {prefix}.
// Errors are ignored: it cleans up after a test.
func DeletePrefix(base, prefix string) {
	opts, err := goredis.ParseURL(base)
	if err != nil {
		return
	}
	c := goredis.NewClient(opts)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	iter := c.Scan(ctx, 0, "{"+prefix+"}:*", 1000).Iterator()
	var batch []string
	for iter.Next(ctx) {
		if batch = append(batch, iter.Val()); len(batch) == 1000 {
			c.Unlink(ctx, batch...)
			batch = batch[:0]
		}
	}
	if len(batch) > 0 {
		c.Unlink(ctx, batch...)
	}
}
