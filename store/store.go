// Package store is docket's persistence seam: the small interface a database
// implements to hold tasks, leases and results, and the optional capabilities
// it may add.
//
// A Store keeps every task's state in one place and hands out leases with a
// fence on (id, attempt, owner). It has the same operations as a
// transport.Transport, minus push notifications: package
// transport/storetransport turns any Store into a Transport by adding
// in-process wake-ups and cross-process change detection (ChangeCounter).
//
// Every method takes a params struct carrying Now; a Store never reads the
// clock itself. Package store/storetest is the conformance suite every Store
// must pass; store/sqlite is the default implementation.
package store

import (
	"context"

	"github.com/docketq/docket/transport"
)

// Store holds tasks durably. Implementations must be safe for concurrent use
// and must make each method's writes atomic.
type Store interface {
	// Enqueue inserts all messages or none; see transport.Transport.
	Enqueue(ctx context.Context, p transport.EnqueueParams) ([]transport.EnqueueResult, error)
	// Claim promotes due scheduled tasks, rescues lapsed leases and leases
	// up to p.Limit ready tasks, in one atomic step.
	Claim(ctx context.Context, p transport.ClaimParams) (transport.ClaimResult, error)
	// Extend is the heartbeat: it moves lease deadlines, fenced.
	Extend(ctx context.Context, p transport.ExtendParams) ([]transport.ExtendResult, error)
	// Finish records attempt outcomes, each fenced on its lease.
	Finish(ctx context.Context, p transport.FinishParams) ([]transport.FinishResult, error)
	// Get reads one task.
	Get(ctx context.Context, p transport.GetParams) (transport.Info, error)
	// Lookup reads the status of many tasks.
	Lookup(ctx context.Context, p transport.LookupParams) ([]transport.Status, error)
	// Cancel cancels a waiting task or flags a running one.
	Cancel(ctx context.Context, p transport.CancelParams) (transport.CancelResult, error)
	// Close releases the store's resources.
	Close() error
}

// ChangeCounter is implemented by stores that other processes can write to.
// Changes returns a number that differs from its previous value whenever
// another connection or process committed a change since the last call
// (for SQLite, PRAGMA data_version on the writer connection). It must be
// cheap: it is polled every few milliseconds while anyone is waiting.
type ChangeCounter interface {
	Changes(ctx context.Context) (uint64, error)
}
