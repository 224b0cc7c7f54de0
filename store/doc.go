// Package store holds docket's persistence backends: transports that keep
// tasks, leases, schedules and results in a database the application owns,
// rather than in a broker. store/sqlite is the default backend, registered
// for the "sqlite" and "memory" URL schemes.
//
// A persistence backend implements the same seam as every other backend,
// transport.Transport, and passes the same conformance suite,
// transport/transporttest. What sets it apart is that other processes may
// write to its database directly: it implements transport.ChangeCounter, so
// that a Queue notices those writes.
package store
