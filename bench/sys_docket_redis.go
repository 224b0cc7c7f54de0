package main

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/docketq/docket"
	_ "github.com/docketq/docket/transport/redis"
)

// docketRedisSystem runs docket on Redis (the same program as docket, with
// a redis:// URL) on the same server as asynq, in its own database,
// flushed for a fresh store.
type docketRedisSystem struct {
	addr string
	db   int
}

func (docketRedisSystem) Name() string { return "docket-redis" }

func (s docketRedisSystem) redisClient() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: s.addr, DB: s.db})
}

func (s docketRedisSystem) Available(ctx context.Context) error {
	c := s.redisClient()
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		return &NA{Reason: fmt.Sprintf("Redis at %s not reachable: %v", s.addr, err)}
	}
	return nil
}

func (s docketRedisSystem) url() string { return fmt.Sprintf("redis://%s/%d", s.addr, s.db) }

// Storage is the memory of every key in docket-redis's database (RAM, like
// asynq's row).
func (s docketRedisSystem) Storage(ctx context.Context, dir string) (int64, error) {
	return redisMemory(ctx, s.redisClient())
}

func (s docketRedisSystem) Open(ctx context.Context, o Options) (Instance, error) {
	if o.Fresh {
		c := s.redisClient()
		err := c.FlushDB(ctx).Err()
		c.Close()
		if err != nil {
			return nil, err
		}
	}
	inst, err := openDocket(ctx, s.url(), o)
	if err != nil {
		return nil, err
	}
	return &docketRedisInstance{docketInstance: inst, sys: s}, nil
}

// docketRedisInstance answers Unfinished from the sorted sets directly:
// List on Redis scans the keyspace, too slow to poll during a drain.
type docketRedisInstance struct {
	*docketInstance
	sys docketRedisSystem
}

func (d *docketRedisInstance) Unfinished(ctx context.Context) (bool, error) {
	c := d.sys.redisClient()
	defer c.Close()
	var n int64
	for _, k := range []string{"{docket}:r:" + docket.DefaultQueue, "{docket}:sched", "{docket}:lease"} {
		v, err := c.ZCard(ctx, k).Result()
		if err != nil {
			return false, err
		}
		n += v
	}
	return n > 0, nil
}

func (d *docketRedisInstance) Cleanup(ctx context.Context) (string, *PollErrors, error) {
	_, poll, err := d.docketInstance.Cleanup(ctx)
	return "pruner: ResultTTL(1ms), PruneInterval(10ms); deletes finished task hashes in batches of 1000", poll, err
}
