package redis_test

import (
	"context"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/docketq/docket"
	"github.com/docketq/docket/dockettest"
	"github.com/docketq/docket/internal/chaos"
	"github.com/docketq/docket/internal/faulttraffic"
	"github.com/docketq/docket/internal/probetest"
	"github.com/docketq/docket/internal/redistest"
)

// traffic runs faulttraffic's producer and worker on url while fault()
// runs. Redis keeps the task state itself, so the run is strict: a task's
// handler may run again after a lost lease, never after its completion.
func traffic(t *testing.T, url string, fault func()) {
	t.Helper()
	faulttraffic.Run(t, faulttraffic.Config{
		URL:     url,
		Options: []docket.Option{docket.LeaseDuration(2 * time.Second)},
		Settle:  500 * time.Millisecond,
		Wait:    60 * time.Second,
		Strict:  true,
	}, fault)
}

// Redis killed with SIGKILL and restarted mid-stream: producers get
// definite errors or success, the worker resumes without a restart, and
// every acknowledged task completes.
func TestFaultRedisRestart(t *testing.T) {
	t.Parallel()
	s := redistest.StartServer(t)
	traffic(t, "redis://"+s.Addr()+"/0", func() {
		s.Kill()
		time.Sleep(time.Second)
		s.Start()
	})
}

// The connection cut (reset) repeatedly, then stalled for three seconds,
// through the proxy.
func TestFaultRedisConnectionCutAndStalled(t *testing.T) {
	t.Parallel()
	s := redistest.StartServer(t)
	p, err := chaos.Start(s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	traffic(t, "redis://"+p.Addr()+"/0", func() {
		for range 5 {
			p.ResetAll()
			time.Sleep(200 * time.Millisecond)
		}
		p.SetMode(chaos.Blackhole)
		time.Sleep(3 * time.Second)
		p.SetMode(chaos.Pass)
		p.ResetAll()
	})
}

// DEBUG SLEEP, CLIENT PAUSE and SCRIPT FLUSH on the server.
func TestFaultRedisServerPauses(t *testing.T) {
	t.Parallel()
	s := redistest.StartServer(t)
	admin := goredis.NewClient(&goredis.Options{Addr: s.Addr(), ReadTimeout: 10 * time.Second})
	defer admin.Close()
	traffic(t, "redis://"+s.Addr()+"/0", func() {
		ctx := context.Background()
		if err := admin.Do(ctx, "DEBUG", "SLEEP", "1.5").Err(); err != nil {
			t.Fatalf("DEBUG SLEEP: %v", err)
		}
		if err := admin.Do(ctx, "CLIENT", "PAUSE", "1500", "WRITE").Err(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1600 * time.Millisecond)
		for range 3 {
			if err := admin.ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
}

// A task with a two-hour ETA and a one-second lease: not run early, not
// run twice (the ETA is not a visibility timeout).
func TestRedisLongETAShortLease(t *testing.T) {
	t.Parallel()
	clock := dockettest.NewClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	q, err := docket.Open(context.Background(), freshURL(t), docket.WithClock(clock), docket.LeaseDuration(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	runs := 0
	task := docket.NewTask("eta.2h", func(ctx context.Context, _ int) (int, error) { runs++; return 0, nil })
	q.Register(task)
	r, _ := task.Enqueue(context.Background(), q, 1, docket.Countdown(2*time.Hour))
	for m := 0; m < 119; m++ {
		clock.Advance(time.Minute)
		dockettest.Drain(t, q)
	}
	if runs != 0 {
		t.Fatalf("ran %d times before its ETA", runs)
	}
	clock.Advance(time.Minute)
	dockettest.Drain(t, q)
	for range 10 {
		clock.Advance(time.Minute)
		dockettest.Drain(t, q)
	}
	if _, err := r.Wait(context.Background()); err != nil || runs != 1 {
		t.Fatalf("after the ETA: ran %d times, %v", runs, err)
	}
}

// strict=true refuses a server that would lose tasks; the default warns.
func TestStrictRefusesUndurableServer(t *testing.T) {
	u := serverURL(t)
	c, _ := goredis.ParseURL(u)
	admin := goredis.NewClient(c)
	defer admin.Close()
	v, err := admin.ConfigGet(context.Background(), "appendonly").Result()
	if err != nil || v["appendonly"] != "no" {
		t.Skip("the test server persists (or hides its config); nothing to refuse")
	}
	sep := "?"
	if u2, _ := urlHasQuery(u); u2 {
		sep = "&"
	}
	_, err = docket.Open(context.Background(), u+sep+"strict=true")
	if err == nil || !contains(err.Error(), "appendonly") {
		t.Fatalf("strict Open: %v", err)
	}
	q, err := docket.Open(context.Background(), u)
	if err != nil {
		t.Fatalf("default Open: %v", err)
	}
	q.Close()
}

func urlHasQuery(u string) (bool, error) {
	for _, c := range u {
		if c == '?' {
			return true, nil
		}
	}
	return false, nil
}

// Readiness follows a private server that is killed and restarted;
// liveness stays true.
func TestReadinessFollowsTheServer(t *testing.T) {
	t.Parallel()
	s := redistest.StartServer(t)
	probetest.FollowServer(t, "redis://"+s.Addr()+"/0", nil, s.Kill, s.Start)
}
