package redis_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/docketq/docket/transport"
	_ "github.com/docketq/docket/transport/redis"
)

// Concurrent calls share script calls, and each keeps its own outcome:
// callers race to store the same ids, batches of several tasks stay all or
// nothing, and a call whose ctx ended while it waited is refused, not
// stored.
func TestConcurrentEnqueuesKeepTheirOwnOutcomes(t *testing.T) {
	ctx := context.Background()
	u, err := url.Parse(freshURL(t))
	if err != nil {
		t.Fatal(err)
	}
	rt, err := transport.Open(ctx, u, transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	now := time.Now()
	msg := func(id string) transport.Message {
		return transport.Message{ID: id, Name: "n", Queue: "default", Payload: []byte("{}"), MaxAttempts: 1, ResultTTL: time.Hour}
	}
	const goroutines, ids = 32, 50
	var stored [ids]int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ids {
				// Every goroutine tries every single id, and a pair that
				// repeats one of them, which must fail whole.
				res, err := rt.Enqueue(ctx, transport.EnqueueParams{Now: now, Messages: []transport.Message{msg(fmt.Sprint("id-", i))}})
				var dup *transport.DuplicateError
				switch {
				case err == nil:
					mu.Lock()
					stored[i]++
					mu.Unlock()
					if res[0].ID != fmt.Sprint("id-", i) {
						t.Errorf("stored %s as %s", fmt.Sprint("id-", i), res[0].ID)
					}
				case errors.As(err, &dup):
					if dup.ExistingID != fmt.Sprint("id-", i) {
						t.Errorf("duplicate of id-%d names %q", i, dup.ExistingID)
					}
				default:
					t.Error(err)
				}
				pair := []transport.Message{msg(fmt.Sprintf("pair-%d-%d", g, i)), msg(fmt.Sprint("id-", i))}
				if _, err := rt.Enqueue(ctx, transport.EnqueueParams{Now: now, Messages: pair}); !errors.As(err, &dup) {
					t.Errorf("a pair repeating id-%d: %v, want a duplicate error", i, err)
				}
			}
		}()
	}
	wg.Wait()
	for i, n := range stored {
		if n != 1 {
			t.Errorf("id-%d stored by %d calls, want 1", i, n)
		}
	}
	for g := range goroutines {
		id := fmt.Sprintf("pair-%d-0", g)
		if _, err := rt.Get(ctx, transport.GetParams{ID: id}); !errors.Is(err, transport.ErrNotFound) {
			t.Fatalf("%s of a refused pair: %v, want not found", id, err)
		}
	}

	// A call whose ctx has ended is refused before anything is sent.
	gone, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := rt.Enqueue(gone, transport.EnqueueParams{Now: now, Messages: []transport.Message{msg("late")}}); !errors.Is(err, context.Canceled) {
		t.Fatalf("enqueue with an ended ctx: %v", err)
	}
	if _, err := rt.Get(ctx, transport.GetParams{ID: "late"}); !errors.Is(err, transport.ErrNotFound) {
		t.Fatalf("late: %v, want not found", err)
	}
}
