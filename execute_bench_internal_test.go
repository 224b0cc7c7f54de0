package docket

import (
	"context"
	"testing"

	"github.com/docketq/docket/transport"
)

// benchExecute measures one attempt's path in the worker without the
// backend: ctx, decoding, the handler, encoding, the decision, and the
// attempt's event; opts add middleware or hooks.
func benchExecute(b *testing.B, opts ...Option) {
	q, err := Open(context.Background(), "memory:", opts...)
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	type args struct{ N int }
	if err := q.Register(NewTask("bench.exec", func(ctx context.Context, a args) (int, error) { return a.N, nil })); err != nil {
		b.Fatal(err)
	}
	d := transport.Delivery{
		Message: transport.Message{ID: "01J0000000000000000000000", Name: "bench.exec", Queue: DefaultQueue, Payload: []byte(`{"N":7}`), MaxAttempts: 4},
		Attempt: 1, Owner: "bench",
	}
	ctx := context.Background()
	for b.Loop() {
		out, skip, run := q.execute(ctx, &d)
		if skip || out.State != StateSucceeded {
			b.Fatalf("outcome %+v", out)
		}
		q.attemptEnded(&d, &out, false, run)
	}
}

// BenchmarkExecute is the path with nothing registered; compare with the
// same path before the middleware seam existed (see the README's design
// notes) and with BenchmarkExecuteMiddleware.
func BenchmarkExecute(b *testing.B) { benchExecute(b) }

func BenchmarkExecuteMiddleware(b *testing.B) {
	pass := func(next Handler) Handler { return next }
	benchExecute(b, Use(pass), OnEvent(func(Event) {}))
}
