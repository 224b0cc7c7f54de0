package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// asynqSystem runs asynq on the Redis server at addr (the harness's private
// server unless -redis names another), in database db: the harness flushes
// that database when a measurement asks for a fresh store, and never
// touches another one of a server it did not start.
type asynqSystem struct {
	addr string
	db   int
}

func (a asynqSystem) Name() string { return "asynq" }

func (a asynqSystem) redisClient() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: a.addr, DB: a.db})
}

func (a asynqSystem) opt() asynq.RedisClientOpt {
	return asynq.RedisClientOpt{Addr: a.addr, DB: a.db}
}

func (a asynqSystem) Available(ctx context.Context) error {
	c := a.redisClient()
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		return &NA{Reason: fmt.Sprintf("Redis at %s not reachable: %v", a.addr, err)}
	}
	return nil
}

// Storage sums MEMORY USAGE over every key in the harness's Redis database:
// asynq keeps tasks in memory, so this is RAM, not disk (the Redis server
// here runs without persistence).
func (a asynqSystem) Storage(ctx context.Context, dir string) (int64, error) {
	return redisMemory(ctx, a.redisClient())
}

// redisMemory sums MEMORY USAGE over every key of c's database and closes c.
func redisMemory(ctx context.Context, c *redis.Client) (int64, error) {
	defer c.Close()
	var total int64
	iter := c.Scan(ctx, 0, "*", 1000).Iterator()
	var keys []string
	flush := func() error {
		if len(keys) == 0 {
			return nil
		}
		p := c.Pipeline()
		cmds := make([]*redis.IntCmd, len(keys))
		for i, k := range keys {
			cmds[i] = p.MemoryUsage(ctx, k)
		}
		if _, err := p.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		for _, cmd := range cmds {
			n, err := cmd.Result()
			if err != nil && !errors.Is(err, redis.Nil) {
				return err
			}
			total += n
		}
		keys = keys[:0]
		return nil
	}
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
		if len(keys) == 1000 {
			if err := flush(); err != nil {
				return 0, err
			}
		}
	}
	if err := iter.Err(); err != nil {
		return 0, err
	}
	return total, flush()
}

type asynqInstance struct {
	sys     asynqSystem
	o       Options
	client  *asynq.Client
	insp    *asynq.Inspector
	srv     *asynq.Server
	started bool
}

const asynqType = "bench:noop"

// Open flushes the harness's Redis database when o asks for a fresh store.
func (a asynqSystem) Open(ctx context.Context, o Options) (Instance, error) {
	if o.Fresh {
		c := a.redisClient()
		err := c.FlushDB(ctx).Err()
		c.Close()
		if err != nil {
			return nil, err
		}
	}
	return &asynqInstance{sys: a, o: o, client: asynq.NewClient(a.opt()), insp: asynq.NewInspector(a.opt())}, nil
}

func (i *asynqInstance) Enqueue(ctx context.Context, stamp int64) error {
	var payload []byte
	if stamp != 0 {
		payload = binary.LittleEndian.AppendUint64(nil, uint64(stamp))
	}
	_, err := i.client.EnqueueContext(ctx, asynq.NewTask(asynqType, payload))
	return err
}

func (i *asynqInstance) EnqueueBatch(ctx context.Context, n int) error {
	return &NA{Reason: "asynq has no batch enqueue"}
}

// Start runs an asynq server with Concurrency workers; TaskCheckInterval
// is -poll (asynq's default, 1 s, when Poll is 0): when the queues are empty, its fetch
// loop sleeps between half and one and a half of it.
func (i *asynqInstance) Start(ctx context.Context) error {
	if i.started {
		return errors.New("asynq: already started")
	}
	h := i.o.Handler
	if h == nil {
		h = func(int64) {}
	}
	i.srv = asynq.NewServer(i.sys.opt(), asynq.Config{
		Concurrency:       max(1, i.o.Concurrency),
		TaskCheckInterval: i.o.Poll,
		LogLevel:          asynq.ErrorLevel,
		ShutdownTimeout:   10 * time.Second,
	})
	err := i.srv.Start(asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
		var stamp int64
		if p := t.Payload(); len(p) == 8 {
			stamp = int64(binary.LittleEndian.Uint64(p))
		}
		h(stamp)
		return nil
	}))
	if err != nil {
		return err
	}
	i.started = true
	return nil
}

func (i *asynqInstance) Stop(ctx context.Context) error {
	if !i.started {
		return nil
	}
	i.started = false
	i.srv.Shutdown()
	return nil
}

func (i *asynqInstance) Unfinished(ctx context.Context) (bool, error) {
	qi, err := i.insp.GetQueueInfo("default")
	if err != nil {
		if strings.Contains(err.Error(), "does not exist") { // no task was ever enqueued
			return false, nil
		}
		return false, err
	}
	return qi.Pending+qi.Active+qi.Scheduled+qi.Retry+qi.Aggregating > 0, nil
}

func (i *asynqInstance) Cleanup(ctx context.Context) (string, *PollErrors, error) {
	return "none needed: without the Retention option a task is deleted when it succeeds (daily processed/failed counters remain); Redis RAM, no persistence configured", nil, nil
}

func (i *asynqInstance) Close() error {
	err := i.Stop(context.Background())
	return errors.Join(err, i.insp.Close(), i.client.Close())
}
