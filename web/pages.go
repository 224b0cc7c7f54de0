package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/textfmt"
)

// page is what every template gets.
type page struct {
	Title    string // the dashboard's
	Heading  string // the page's
	Nav      string // the active section
	Base     string // the mount prefix
	CSRF     string
	ReadOnly bool
	ShowArgs bool
	// Operable: the backend keeps task state (every backend but RabbitMQ
	// without a result store): tasks, schedules, workers and pauses.
	Operable bool
	Backend  string // the redacted URL
	Notice   string
	Here     string // this page's path and query under the prefix, for forms' back
	Refresh  int    // ms; 0: never
	Asset    string // the static files' version
	Now      time.Time
	Data     any
}

func (s *server) render(w http.ResponseWriter, r *http.Request, status int, name, heading, nav string, data any) {
	p := page{
		Title: s.opts.Title, Heading: heading, Nav: nav, Base: prefix(r), ReadOnly: s.opts.ReadOnly,
		ShowArgs: s.opts.ShowArgs, Backend: s.q.URL(),
		Notice: takeNotice(w, r), Now: time.Now(), Data: data, Asset: s.asset,
	}
	p.Here = r.URL.EscapedPath()
	if r.URL.RawQuery != "" {
		p.Here += "?" + r.URL.RawQuery
	}
	p.Operable = s.operable(r.Context())
	if !s.opts.ReadOnly {
		p.CSRF = s.csrfToken(w, r)
	}
	// A page that answers a POST (a form shown again with its error)
	// keeps what the user typed: it does not refresh.
	if s.opts.Refresh > 0 && r.Method == http.MethodGet && status == http.StatusOK {
		p.Refresh = int(s.opts.Refresh.Milliseconds())
	}
	var buf bytes.Buffer
	if err := s.tmpl.ExecuteTemplate(&buf, name, p); err != nil {
		http.Error(w, "docket: web: render "+name+": "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// fail renders an error page; the error's text is escaped like every
// other value.
func (s *server) fail(w http.ResponseWriter, r *http.Request, status int, err error) {
	if status == 0 {
		status = statusOf(err)
	}
	s.render(w, r, status, "error.html", http.StatusText(status), "", err.Error())
}

// operable reports whether the backend keeps task state, asking it once:
// a backend that cannot list workers (RabbitMQ alone) can do none of the
// operations either. A failed question is asked again next time.
func (s *server) operable(ctx context.Context) bool {
	switch s.caps.Load() {
	case 1:
		return true
	case 2:
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := s.q.Workers(ctx)
	switch {
	case errors.Is(err, docket.ErrUnsupported):
		s.caps.Store(2)
		return false
	case err == nil:
		s.caps.Store(1)
	}
	return true
}

func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, docket.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, docket.ErrInvalid), errors.Is(err, docket.ErrUnknownTask), errors.Is(err, docket.ErrTooLarge):
		return http.StatusBadRequest
	case errors.Is(err, docket.ErrUnsupported):
		return http.StatusNotImplemented
	}
	return http.StatusBadGateway // the backend failed
}

func callCtx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), 10*time.Second)
}

// overviewData is the overview page.
type overviewData struct {
	Stats       *docket.Stats
	Chart       chart
	Workers     []docket.WorkerInfo
	WorkersErr  string // "" or why workers are not shown
	States      []string
	HasHistory  bool
	HasWorkers  bool
	TotalsByRow map[string]int64
}

func (s *server) overview(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := callCtx(r)
	defer cancel()
	st, err := s.q.Stats(ctx)
	if err != nil {
		s.fail(w, r, 0, err)
		return
	}
	d := overviewData{Stats: st, States: docket.StateNames, HasHistory: st.History != nil}
	d.Chart = throughput(st.History, st.At)
	ws, err := s.q.Workers(ctx)
	switch {
	case errors.Is(err, docket.ErrUnsupported):
	case err != nil:
		d.WorkersErr = err.Error()
	default:
		d.Workers, d.HasWorkers = ws, true
	}
	s.render(w, r, http.StatusOK, "overview.html", "Overview", "overview", d)
}

// tasksData is the task list.
type tasksData struct {
	Filter    docket.Filter
	State     string
	Newest    bool
	Page      *docket.TaskPage
	Unsupport bool
	Query     url.Values // the filter, for the next page's link
	States    []string
	Queues    []string
}

func filterFrom(v url.Values) (docket.Filter, error) {
	f := docket.Filter{Queue: v.Get("queue"), Name: v.Get("name"), IDPrefix: v.Get("id"), Search: v.Get("search")}
	if st := v.Get("state"); st != "" {
		f.States = []string{st}
	}
	for _, b := range []struct {
		key string
		to  *time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		if raw := v.Get(b.key); raw != "" {
			t, err := time.Parse("2006-01-02T15:04", raw)
			if err != nil {
				if t, err = time.Parse(time.RFC3339, raw); err != nil {
					return f, fmt.Errorf("docket: web: %w: %s %q is not a time (2006-01-02T15:04, UTC)", docket.ErrInvalid, b.key, raw)
				}
			}
			*b.to = t.UTC()
		}
	}
	return f, nil
}

func (s *server) tasks(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	f, err := filterFrom(v)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err)
		return
	}
	ctx, cancel := callCtx(r)
	defer cancel()
	d := tasksData{Filter: f, State: v.Get("state"), Newest: v.Get("order") != "oldest", States: docket.StateNames, Queues: s.queueNames(ctx)}
	limit := 50
	page, err := s.q.Search(ctx, docket.SearchOptions{Filter: f, Newest: d.Newest, Cursor: v.Get("cursor"), Limit: limit})
	switch {
	case errors.Is(err, docket.ErrUnsupported):
		d.Unsupport = true
	case err != nil:
		s.fail(w, r, 0, err)
		return
	default:
		d.Page = page
	}
	q := url.Values{}
	for _, k := range []string{"state", "queue", "name", "id", "search", "since", "until", "order"} {
		if x := v.Get(k); x != "" {
			q.Set(k, x)
		}
	}
	d.Query = q
	s.render(w, r, http.StatusOK, "tasks.html", "Tasks", "tasks", d)
}

// queueNames lists the queues for the filter's suggestions, read with
// Stats at most every 30 seconds (a refreshing page asks every few).
func (s *server) queueNames(ctx context.Context) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Since(s.queuesAt) < 30*time.Second {
		return s.queues
	}
	st, err := s.q.Stats(ctx)
	if err != nil {
		return s.queues
	}
	s.queues = s.queues[:0:0]
	for _, qs := range st.Queues {
		s.queues = append(s.queues, qs.Name)
	}
	s.queuesAt = time.Now()
	return s.queues
}

// taskData is the task page.
type taskData struct {
	T        *docket.TaskInfo
	Args     string // pretty JSON
	Result   string
	Progress string
	Headers  []kv
	Timeline []kv
	Flow     *flowData // the task is a workflow step
}

// flowData is a workflow step's place in its workflow, on the task page.
type flowData struct {
	Steps    int               // in the workflow
	Counts   []kv              // steps by state
	Prev     []docket.StepInfo // the steps whose results it takes, in slot order
	PrevMore int               // more of them than are listed
}

// maxPrevListed bounds the previous steps a task page lists (a chord's
// body may take thousands).
const maxPrevListed = 50

type kv struct{ K, V string }

func pretty(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return string(raw)
	}
	return buf.String()
}

func (s *server) task(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := callCtx(r)
	defer cancel()
	t, err := s.q.Info(ctx, r.PathValue("id"))
	if err != nil {
		s.fail(w, r, 0, err)
		return
	}
	d := taskData{T: t, Progress: pretty(t.Progress)}
	if s.opts.ShowArgs {
		d.Args, d.Result = pretty(t.Args), pretty(t.Result)
	}
	for k, v := range t.Headers {
		d.Headers = append(d.Headers, kv{k, v})
	}
	slices.SortFunc(d.Headers, func(a, b kv) int { return strings.Compare(a.K, b.K) })
	add := func(k string, at time.Time) {
		if !at.IsZero() {
			d.Timeline = append(d.Timeline, kv{k, at.UTC().Format("2006-01-02 15:04:05.000 UTC")})
		}
	}
	add("enqueued", t.Created)
	add("due (ETA)", t.ETA)
	add("latest attempt started", t.Started)
	add("finished", t.Finished)
	add("expires", t.Expires)
	if t.Workflow != "" {
		d.Flow = flowOf(ctx, s.q, t)
	}
	s.render(w, r, http.StatusOK, "task.html", "Task "+t.ID, "tasks", d)
}

// flowOf reads the workflow of the step t; nil when it cannot.
func flowOf(ctx context.Context, q *docket.Queue, t *docket.TaskInfo) *flowData {
	steps, err := q.FlowInfo(ctx, t.Workflow)
	if err != nil {
		return nil
	}
	f := &flowData{Steps: len(steps)}
	counts := map[string]int{}
	for _, st := range steps {
		counts[st.State.String()]++
		if st.Next == t.ID {
			f.Prev = append(f.Prev, st)
		}
	}
	for _, name := range docket.StateNames {
		if n := counts[name]; n > 0 {
			f.Counts = append(f.Counts, kv{name, textfmt.Thousands(int64(n))})
		}
	}
	slices.SortFunc(f.Prev, func(a, b docket.StepInfo) int { return a.Slot - b.Slot })
	if len(f.Prev) > maxPrevListed {
		f.PrevMore = len(f.Prev) - maxPrevListed
		f.Prev = f.Prev[:maxPrevListed]
	}
	return f
}

func (s *server) actTasks(w http.ResponseWriter, r *http.Request, allow func(Action) error) {
	name := r.PostFormValue("action")
	action, err := docket.ParseAction(name)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err)
		return
	}
	if err := allow(Action(name)); err != nil {
		s.fail(w, r, http.StatusForbidden, err)
		return
	}
	var target docket.Target
	if r.PostFormValue("all") == "1" {
		f, err := filterFrom(r.PostForm)
		if err != nil {
			s.fail(w, r, http.StatusBadRequest, err)
			return
		}
		target.Filter = &f
	} else {
		target.IDs = r.PostForm["id"]
		if len(target.IDs) == 0 {
			s.fail(w, r, http.StatusBadRequest, fmt.Errorf("docket: web: %w: no task selected", docket.ErrInvalid))
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Minute)
	defer cancel()
	res, err := s.q.Act(ctx, action, target)
	if err != nil {
		s.fail(w, r, 0, err)
		return
	}
	back(w, r, "/tasks", fmt.Sprintf("%s: %d changed, %d skipped, %d missing", name, res.Changed, res.Skipped, res.Missing))
}

func (s *server) queueOp(w http.ResponseWriter, r *http.Request, allow func(Action) error) {
	name, op := r.PathValue("name"), r.PathValue("op")
	var err error
	switch op {
	case "pause":
		if err = allow(ActPauseQueue); err == nil {
			err = s.q.PauseQueue(r.Context(), name)
		}
	case "resume":
		if err = allow(ActResumeQueue); err == nil {
			err = s.q.ResumeQueue(r.Context(), name)
		}
	default:
		err = fmt.Errorf("docket: web: %w: no queue operation %q", docket.ErrInvalid, op)
	}
	if err != nil {
		s.fail(w, r, 0, err)
		return
	}
	back(w, r, "/", fmt.Sprintf("queue %s: %sd", name, op))
}

func (s *server) scheduleOp(w http.ResponseWriter, r *http.Request, allow func(Action) error) {
	name, op := r.PathValue("name"), r.PathValue("op")
	var err error
	notice := "schedule " + name + ": " + op
	switch op {
	case "pause":
		if err = allow(ActPauseSchedule); err == nil {
			err = s.q.PauseSchedule(r.Context(), name)
		}
	case "resume":
		if err = allow(ActResumeSchedule); err == nil {
			err = s.q.ResumeSchedule(r.Context(), name)
		}
	case "trigger":
		if err = allow(ActTrigger); err == nil {
			var id string
			if id, err = s.q.TriggerSchedule(r.Context(), name); err == nil {
				notice = "schedule " + name + ": triggered task " + id
			}
		}
	default:
		err = fmt.Errorf("docket: web: %w: no schedule operation %q", docket.ErrInvalid, op)
	}
	if err != nil {
		s.fail(w, r, 0, err)
		return
	}
	back(w, r, "/schedules", notice)
}

// listData is a page that lists what the backend keeps, or says it keeps
// none.
type listData[T any] struct {
	List        []T
	Unsupported bool
}

// listPage serves the page name (its template name.html), listing what
// fetch returns; a backend that cannot answer gets the page's note.
func listPage[T any](s *server, name, heading string, fetch func(context.Context) ([]T, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := callCtx(r)
		defer cancel()
		list, err := fetch(ctx)
		unsupported := errors.Is(err, docket.ErrUnsupported)
		if err != nil && !unsupported {
			s.fail(w, r, 0, err)
			return
		}
		s.render(w, r, http.StatusOK, name+".html", heading, name, listData[T]{list, unsupported})
	}
}

type enqueueData struct {
	Name, Args, Queue, Countdown string
	Error                        string
}

func (s *server) enqueueForm(w http.ResponseWriter, r *http.Request) {
	s.render(w, r, http.StatusOK, "enqueue.html", "Enqueue a task", "enqueue", enqueueData{Args: "{}"})
}

func (s *server) enqueue(w http.ResponseWriter, r *http.Request, allow func(Action) error) {
	d := enqueueData{Name: r.PostFormValue("name"), Args: r.PostFormValue("args"), Queue: r.PostFormValue("queue"), Countdown: r.PostFormValue("countdown")}
	if err := allow(ActEnqueue); err != nil {
		s.fail(w, r, http.StatusForbidden, err)
		return
	}
	var opts []docket.TaskOption
	if d.Queue != "" {
		opts = append(opts, docket.OnQueue(d.Queue))
	}
	if d.Countdown != "" {
		cd, err := time.ParseDuration(d.Countdown)
		if err != nil {
			d.Error = "countdown: " + err.Error()
			s.render(w, r, http.StatusBadRequest, "enqueue.html", "Enqueue a task", "enqueue", d)
			return
		}
		opts = append(opts, docket.Countdown(cd))
	}
	id, err := s.q.EnqueueJSON(r.Context(), d.Name, json.RawMessage(d.Args), opts...)
	if err != nil {
		d.Error = err.Error()
		s.render(w, r, statusOf(err), "enqueue.html", "Enqueue a task", "enqueue", d)
		return
	}
	redirect(w, r, "/tasks/"+url.PathEscape(id), "enqueued "+id)
}

// funcs are the templates' helpers.
func (s *server) funcs() template.FuncMap {
	return template.FuncMap{
		"ago": func(t time.Time) string {
			if t.IsZero() {
				return "—"
			}
			d := time.Since(t)
			switch {
			case d < 0:
				return "in " + (-d).Round(time.Second).String()
			case d < time.Minute:
				return d.Round(time.Second).String() + " ago"
			case d < 48*time.Hour:
				return strings.TrimSuffix(d.Round(time.Minute).String(), "0s") + " ago" // 1h38m ago
			}
			return t.UTC().Format("2006-01-02 15:04")
		},
		"utc": func(t time.Time) string {
			if t.IsZero() {
				return "—"
			}
			return t.UTC().Format("2006-01-02 15:04:05 UTC")
		},
		"dur": func(d time.Duration) string {
			if d <= 0 {
				return "0s"
			}
			if d < time.Second {
				return d.Round(time.Millisecond).String()
			}
			return d.Round(time.Second).String()
		},
		"count": func(m map[string]int64, k string) string {
			n, ok := m[k]
			if !ok {
				return "—"
			}
			return textfmt.Thousands(n)
		},
		"firstLine": func(s string) string {
			if i := strings.IndexByte(s, '\n'); i >= 0 {
				s = s[:i] + " …"
			}
			if r := []rune(s); len(r) > 160 {
				s = string(r[:160]) + "…"
			}
			return s
		},
		"stateName": func(st docket.State) string { return st.String() },
		"query": func(v url.Values, kvs ...string) string {
			out := url.Values{}
			for k, vs := range v {
				out[k] = vs
			}
			for i := 0; i+1 < len(kvs); i += 2 {
				if kvs[i+1] == "" {
					out.Del(kvs[i])
				} else {
					out.Set(kvs[i], kvs[i+1])
				}
			}
			return out.Encode()
		},
		"pathEscape": url.PathEscape,
		"inc":        func(n int) int { return n + 1 },
		// spec is a schedule's timing, without the task and arguments its
		// description carries (the arguments may be sensitive).
		"spec": func(s string) string {
			if i := strings.Index(s, " task:"); i >= 0 {
				return s[:i]
			}
			return s
		},
		"canAct": func(st docket.State, action string) bool {
			a, err := docket.ParseAction(action)
			return err == nil && a.Applies(st)
		},
	}
}
