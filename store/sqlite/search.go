package sqlite

import (
	"container/heap"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/docketq/docket/internal/wire"
	"github.com/docketq/docket/transport"
)

// Search walks an index in id order from the cursor and examines at most
// p.Examine tasks:
//
//   - with a state filter (States or Retrying) of scheduled and finished
//     states only, docket_tasks_admin, one range per (queue, state): of
//     p.Queue, or of every queue that has such tasks, found by skipping
//     through the same index from one queue to the next;
//   - otherwise the primary key, with the queue and the states as filters
//     of each task examined. docket_tasks_admin leaves out ready and
//     running tasks, so that enqueues and claims never write it: a search
//     that asks for either (or for every state of a queue) walks all
//     tasks. Ready and running tasks are the live backlog, usually the
//     most recent ones, so newest first finds them at once; an oldest
//     first listing of ready or running tasks under a long history of
//     finished ones may take several pages, each bounded by p.Examine.
//
// The ranges are read at once, in one snapshot, and merged by id. The
// other filters apply to each task examined, in SQL, so a task that does
// not match costs an index step and a row lookup but is never copied out;
// the tasks that match are read in a second query by id. Since and Until
// also bound the walk (see timeSegments): docket's task ids are ULIDs,
// whose first ten characters encode the creation time, so a time range is
// an id range.
func (s *Store) Search(ctx context.Context, p transport.SearchParams) (transport.SearchResult, error) {
	limit, examine := p.Bounds()
	if p.Order != transport.OldestFirst && p.Order != transport.NewestFirst {
		return transport.SearchResult{}, fmt.Errorf("%w: unknown search order %d", transport.ErrInvalid, p.Order)
	}
	for _, st := range p.States {
		if !st.Valid() {
			return transport.SearchResult{}, fmt.Errorf("%w: search for unknown state %d", transport.ErrInvalid, st)
		}
	}
	w, ok := newWalk(p, examine)
	if !ok {
		return transport.SearchResult{}, nil // the id bounds leave nothing
	}
	tx, err := s.readTx(ctx)
	if err != nil {
		return transport.SearchResult{}, fmt.Errorf("docket: search tasks: %w", err)
	}
	defer tx.Rollback()
	res, err := w.run(ctx, tx, p, limit)
	if err != nil {
		return transport.SearchResult{}, fmt.Errorf("docket: search tasks: %w", classify(err))
	}
	return res, nil
}

// bound is one end of an id range.
type bound struct {
	id        string
	set, incl bool
}

// segment is a range of ids, [lo, hi) or with the bounds given.
type segment struct{ lo, hi bound }

// empty reports whether no id lies in the segment.
func (g segment) empty() bool {
	return g.lo.set && g.hi.set && (g.lo.id > g.hi.id || g.lo.id == g.hi.id && !(g.lo.incl && g.hi.incl))
}

// intersect returns the ids in both segments.
func (g segment) intersect(o segment) segment {
	return segment{lo: tighterLo(g.lo, o.lo), hi: tighterHi(g.hi, o.hi)}
}

// walk is a planned search: the id segments to walk, in order, the ranges
// of the index to merge and the filter each examined task must pass.
type walk struct {
	desc     bool
	segments []segment
	examine  int
	// filter is the SQL condition of the residual filters, with its
	// arguments; empty when every task examined matches.
	filter string
	args   []any
	// states lists the ranges of docket_tasks_admin per queue; nil walks
	// the primary key.
	states []rangeState
}

// rangeState is the state of one range of docket_tasks_admin, with the
// condition on attempt that tells scheduled from retrying tasks.
type rangeState struct {
	state   transport.State
	attempt string // "", "attempt = 0" or "attempt > 0"
}

func newWalk(p transport.SearchParams, examine int) (*walk, bool) {
	w := &walk{desc: p.Order == transport.NewestFirst, examine: examine}
	var base segment
	if p.IDPrefix != "" {
		base.lo = bound{id: p.IDPrefix, set: true, incl: true}
		if end, ok := prefixEnd(p.IDPrefix); ok {
			base.hi = bound{id: end, set: true}
		}
	}
	if p.Cursor != "" {
		if w.desc {
			base.hi = tighterHi(base.hi, bound{id: p.Cursor, set: true})
		} else {
			base.lo = tighterLo(base.lo, bound{id: p.Cursor, set: true})
		}
	}
	var conds []string
	if p.Name != "" {
		conds, w.args = append(conds, "name = ?"), append(w.args, p.Name)
	}
	if !p.Since.IsZero() {
		conds, w.args = append(conds, "created_at >= ?"), append(w.args, wire.Millis(p.Since))
	}
	if !p.Until.IsZero() {
		if p.Until.UnixMilli() <= 0 {
			return nil, false // nothing was created before 1970
		}
		conds, w.args = append(conds, "created_at < ?"), append(w.args, wire.Millis(p.Until))
	}
	if p.Text != "" {
		conds = append(conds, "(instr(payload, ?) > 0 OR coalesce(instr(error, ?), 0) > 0 OR coalesce(instr(meta, ?), 0) > 0)")
		w.args = append(w.args, []byte(p.Text), p.Text, p.Text)
	}
	for _, g := range timeSegments(p.Since, p.Until) {
		if g = g.intersect(base); !g.empty() {
			w.segments = append(w.segments, g)
		}
	}
	if len(w.segments) == 0 {
		return nil, false
	}
	// The states asked for, as ranges of docket_tasks_admin.
	var states []rangeState
	hot := false
	if len(p.States) > 0 || p.Retrying {
		var seen [transport.StateWaiting + 1]bool
		scheduled := p.Retrying
		notTried := false
		for _, st := range p.States {
			if st == transport.StateScheduled {
				notTried, scheduled = true, true
				continue
			}
			if !seen[st] {
				seen[st] = true
				states = append(states, rangeState{state: st})
				hot = hot || !indexed(st)
			}
		}
		if scheduled {
			rs := rangeState{state: transport.StateScheduled}
			switch {
			case notTried && !p.Retrying:
				rs.attempt = "attempt = 0"
			case p.Retrying && !notTried:
				rs.attempt = "attempt > 0"
			}
			states = append(states, rs)
		}
	} else if p.Queue != "" {
		hot = true // every state of the queue, ready and running included
	}
	switch {
	case states != nil && !hot:
		w.states = states
	case hot:
		// The primary key, with the queue and the states as filters.
		if p.Queue != "" {
			conds, w.args = append(conds, "queue = ?"), append(w.args, p.Queue)
		}
		if states != nil {
			conds = append(conds, stateCond(states))
		}
	}
	w.filter = strings.Join(conds, " AND ")
	return w, true
}

// indexed reports whether docket_tasks_admin holds the tasks of state st:
// it leaves out the ready and running ones (see the schema).
func indexed(st transport.State) bool {
	return st != transport.StateReady && st != transport.StateRunning
}

// adminIndexCond is the WHERE clause of docket_tasks_admin, which a query
// states so that the planner may use that partial index.
const adminIndexCond = "state NOT IN (2, 3)"

// stateCond is the SQL condition that a task is in one of the states.
func stateCond(states []rangeState) string {
	var in []string
	var or []string
	for _, rs := range states {
		if rs.attempt == "" {
			in = append(in, strconv.Itoa(int(rs.state)))
		} else {
			or = append(or, "state = "+strconv.Itoa(int(rs.state))+" AND "+rs.attempt)
		}
	}
	if len(in) > 0 {
		or = append([]string{"state IN (" + strings.Join(in, ", ") + ")"}, or...)
	}
	return "(" + strings.Join(or, " OR ") + ")"
}

// tighterLo returns the higher of two lower bounds.
func tighterLo(a, b bound) bound {
	switch {
	case !a.set:
		return b
	case !b.set:
		return a
	case a.id != b.id:
		if a.id > b.id {
			return a
		}
		return b
	case !a.incl:
		return a
	}
	return b
}

// tighterHi returns the lower of two upper bounds.
func tighterHi(a, b bound) bound {
	switch {
	case !a.set:
		return b
	case !b.set:
		return a
	case a.id != b.id:
		if a.id < b.id {
			return a
		}
		return b
	case !a.incl:
		return a
	}
	return b
}

// prefixEnd is the least string greater than every string starting with
// prefix (false when there is none: the prefix is all 0xff bytes).
func prefixEnd(prefix string) (string, bool) {
	b := []byte(prefix)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1]), true
		}
	}
	return "", false
}

// ULIDs made from 1970 to 2109 start with "00" to "03" (the first two
// characters hold the top 8 of the 48 bits of milliseconds): that span of
// ids holds docket's own task ids, the ULIDs of other times, and any
// other id the producer chose that happens to sort there.
const (
	ulidSpanLo = "00"
	ulidSpanHi = "04"
)

// timeSegments returns the id segments, in order, that a search bounded
// by created time [since, until) walks. Within the ULID span, only the
// ULIDs of that time range: [ulid(since), ulid(until)). Outside it, every
// id, since an id the producer chose need not be a ULID (the created time
// filter still applies to every task examined). So a time range costs the
// ULIDs of that range plus the ids that are no ULIDs; the ids skipped are
// those of the span outside the range: ULIDs of other times, and chosen
// ids that start with "00" to "03" and do not fall in the range.
func timeSegments(since, until time.Time) []segment {
	if since.IsZero() && until.IsZero() {
		return []segment{{}}
	}
	spanLo, spanHi := bound{id: ulidSpanLo, set: true, incl: true}, bound{id: ulidSpanHi, set: true}
	mid := segment{lo: spanLo, hi: spanHi}
	if !since.IsZero() {
		mid.lo = tighterLo(mid.lo, bound{id: ulidFloor(since), set: true, incl: true})
	}
	if !until.IsZero() {
		mid.hi = tighterHi(mid.hi, bound{id: ulidFloor(until), set: true})
	}
	out := []segment{{hi: spanLo}}
	if !mid.empty() {
		out = append(out, mid)
	}
	return append(out, segment{lo: bound{id: ulidSpanHi, set: true, incl: true}})
}

// ulidFloor is the least ULID of t's millisecond (of 1970 before it, of
// the last ULID millisecond after that).
func ulidFloor(t time.Time) string {
	ms := uint64(max(t.UnixMilli(), 0))
	var id ulid.ULID
	id.SetTime(min(ms, ulid.MaxTime())) // in range: cannot fail
	return id.String()
}

// idConds returns the SQL conditions and arguments of segment g.
func idConds(g segment) (string, []any) {
	var sb strings.Builder
	var args []any
	if g.lo.set {
		if g.lo.incl {
			sb.WriteString(" AND id >= ?")
		} else {
			sb.WriteString(" AND id > ?")
		}
		args = append(args, g.lo.id)
	}
	if g.hi.set {
		if g.hi.incl {
			sb.WriteString(" AND id <= ?")
		} else {
			sb.WriteString(" AND id < ?")
		}
		args = append(args, g.hi.id)
	}
	return sb.String(), args
}

// rangeSQL is the query of one range (of queue and rs, or of the primary
// key when rs is nil) within segment g: each task's id and whether it
// passes the filter (a constant 1 without one, so the walk reads the index
// alone), in id order.
func (w *walk) rangeSQL(rs *rangeState, queue string, g segment) (string, []any) {
	filter := w.filter
	if rs != nil && rs.attempt != "" {
		if filter != "" {
			filter += " AND "
		}
		filter += rs.attempt
	}
	m := "1"
	if filter != "" {
		m = "coalesce(" + filter + ", 0)"
	}
	ids, idArgs := idConds(g)
	// The filter's placeholders come first, in the result column.
	args := append([]any(nil), w.args...)
	var q string
	if rs != nil {
		q = "SELECT id, " + m + " FROM docket_tasks WHERE queue = ? AND " + adminIndexCond + " AND state = ?" + ids
		args = append(args, queue, int(rs.state))
	} else {
		q = "SELECT id, " + m + " FROM docket_tasks WHERE true" + ids
	}
	args = append(args, idArgs...)
	if w.desc {
		q += " ORDER BY id DESC"
	} else {
		q += " ORDER BY id"
	}
	q += " LIMIT ?"
	args = append(args, w.examine+1)
	return q, args
}

// queuesSQL lists the queues that have scheduled or finished tasks (those
// docket_tasks_admin holds), skipping through that index from one queue to
// the next: a seek per queue, where SELECT DISTINCT would read every
// entry.
const queuesSQL = `WITH RECURSIVE q(name) AS (
		SELECT (SELECT min(queue) FROM docket_tasks WHERE ` + adminIndexCond + `)
		UNION ALL
		SELECT (SELECT min(queue) FROM docket_tasks WHERE ` + adminIndexCond + ` AND queue > q.name) FROM q WHERE q.name IS NOT NULL
	)
	SELECT name FROM q WHERE name IS NOT NULL`

// cursor is one open range of a walk, at its current row.
type cursor struct {
	rows  *sql.Rows
	id    string
	match bool
}

func (c *cursor) next() (bool, error) {
	if !c.rows.Next() {
		return false, closeRows(c.rows)
	}
	if err := c.rows.Scan(&c.id, &c.match); err != nil {
		return false, err
	}
	return true, nil
}

// cursorHeap orders open ranges by their current id.
type cursorHeap struct {
	cs   []*cursor
	desc bool
}

func (h *cursorHeap) Len() int { return len(h.cs) }
func (h *cursorHeap) Less(i, j int) bool {
	if h.desc {
		return h.cs[i].id > h.cs[j].id
	}
	return h.cs[i].id < h.cs[j].id
}
func (h *cursorHeap) Swap(i, j int) { h.cs[i], h.cs[j] = h.cs[j], h.cs[i] }
func (h *cursorHeap) Push(x any)    { h.cs = append(h.cs, x.(*cursor)) }
func (h *cursorHeap) Pop() any {
	c := h.cs[len(h.cs)-1]
	h.cs = h.cs[:len(h.cs)-1]
	return c
}

func (w *walk) run(ctx context.Context, tx *sql.Tx, p transport.SearchParams, limit int) (transport.SearchResult, error) {
	var res transport.SearchResult
	h := &cursorHeap{desc: w.desc}
	var open []*cursor
	defer func() {
		for _, c := range open {
			c.rows.Close()
		}
	}()
	start := func(q string, args []any) error {
		rows, err := tx.QueryContext(ctx, q, args...)
		if err != nil {
			return err
		}
		c := &cursor{rows: rows}
		open = append(open, c)
		ok, err := c.next()
		if ok {
			heap.Push(h, c)
		}
		return err
	}
	if w.states == nil {
		for _, g := range w.segments {
			q, args := w.rangeSQL(nil, "", g)
			if err := start(q, args); err != nil {
				return res, err
			}
		}
	} else {
		queues := []string{p.Queue}
		if p.Queue == "" {
			var err error
			if queues, err = listQueues(ctx, tx); err != nil {
				return res, err
			}
		}
		for _, queue := range queues {
			for i := range w.states {
				for _, g := range w.segments {
					q, args := w.rangeSQL(&w.states[i], queue, g)
					if err := start(q, args); err != nil {
						return res, err
					}
				}
			}
		}
	}
	var matched []string
	var last string
	for examined := 0; h.Len() > 0 && examined < w.examine && len(matched) < limit; examined++ {
		c := h.cs[0]
		last = c.id
		if c.match {
			matched = append(matched, c.id)
		}
		ok, err := c.next()
		if err != nil {
			return res, err
		}
		if ok {
			heap.Fix(h, 0)
		} else {
			heap.Pop(h)
		}
	}
	if h.Len() > 0 {
		res.Next = last
	}
	for _, c := range open {
		if err := c.rows.Close(); err != nil {
			return res, err
		}
	}
	open = nil
	if len(matched) == 0 {
		return res, nil
	}
	tasks, err := readTasks(ctx, tx, matched)
	if err != nil {
		return res, err
	}
	res.Tasks = tasks
	return res, nil
}

// listQueues returns the queues that have scheduled or finished tasks, by
// name.
func listQueues(ctx context.Context, tx *sql.Tx) ([]string, error) {
	rows, err := tx.QueryContext(ctx, queuesSQL)
	if err != nil {
		return nil, err
	}
	var out []string
	for rows.Next() {
		var q string
		if err := rows.Scan(&q); err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, q)
	}
	return out, closeRows(rows)
}

// readTasks reads the tasks ids, in that order.
func readTasks(ctx context.Context, tx *sql.Tx, ids []string) ([]transport.Info, error) {
	raw, _ := json.Marshal(ids)
	rows, err := tx.QueryContext(ctx, "SELECT "+infoCols+" FROM docket_tasks WHERE id IN (SELECT value FROM json_each(?))", string(raw))
	if err != nil {
		return nil, err
	}
	byID := make(map[string]transport.Info, len(ids))
	for rows.Next() {
		in, err := scanInfo(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		byID[in.ID] = in
	}
	if err := closeRows(rows); err != nil {
		return nil, err
	}
	out := make([]transport.Info, 0, len(ids))
	for _, id := range ids {
		if in, ok := byID[id]; ok {
			out = append(out, in)
		}
	}
	return out, nil
}
