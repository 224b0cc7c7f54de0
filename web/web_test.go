package web_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/dockettest"
	"github.com/docketq/docket/internal/amqptest"
	_ "github.com/docketq/docket/transport/amqp"
	"github.com/docketq/docket/web"
)

var bg = context.Background()

type fixture struct {
	t    *testing.T
	q    *docket.Queue
	srv  *httptest.Server
	c    *http.Client
	task *docket.Task[map[string]string, string]
}

// newFixture mounts the dashboard under /admin/docket/ of a mux, as an
// application would.
func newFixture(t *testing.T, opts web.Options) *fixture {
	t.Helper()
	q, _ := dockettest.Open(t)
	task := docket.NewTask("mail.send", func(ctx context.Context, m map[string]string) (string, error) {
		if m["fail"] != "" {
			return "", docket.Permanent(errors.New(m["fail"]))
		}
		return "sent to " + m["to"], nil
	})
	if err := q.Register(task); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/admin/docket/", http.StripPrefix("/admin/docket", web.Handler(q, opts)))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return &fixture{t: t, q: q, srv: srv, c: c, task: task}
}

func (f *fixture) get(path string) (int, string, http.Header) {
	f.t.Helper()
	resp, err := f.c.Get(f.srv.URL + "/admin/docket" + path)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Header
}

var tokenRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// post submits a form the way the page's own form would: same origin,
// with the token the page carries.
func (f *fixture) post(path string, form url.Values, token string) (int, string, string) {
	f.t.Helper()
	if token != "" {
		form.Set("csrf", token)
	}
	req, _ := http.NewRequest("POST", f.srv.URL+"/admin/docket"+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	resp, err := f.c.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Header.Get("Location")
}

func (f *fixture) token(path string) string {
	f.t.Helper()
	_, body, _ := f.get(path)
	m := tokenRE.FindStringSubmatch(body)
	if m == nil {
		f.t.Fatalf("no CSRF token on %s", path)
	}
	return m[1]
}

func TestPagesRenderAndEscape(t *testing.T) {
	f := newFixture(t, web.Options{ShowArgs: true, Title: "Acme jobs"})
	evil := `<script>alert(1)</script>`
	res, err := f.task.Enqueue(bg, f.q, map[string]string{"to": evil, "fail": "boom " + evil}, docket.Header("x-evil", evil))
	if err != nil {
		t.Fatal(err)
	}
	dockettest.Drain(t, f.q)
	for _, path := range []string{"/", "/tasks", "/tasks?state=failed", "/tasks/" + res.ID(), "/schedules", "/workers", "/enqueue"} {
		code, body, h := f.get(path)
		if code != 200 {
			t.Fatalf("GET %s: %d\n%s", path, code, body)
		}
		if strings.Contains(body, evil) {
			t.Errorf("GET %s renders the task's script unescaped", path)
		}
		csp := h.Get("Content-Security-Policy")
		if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("GET %s: CSP %q", path, csp)
		}
		if !strings.Contains(body, `href="/admin/docket/static/style.css?v=`) || !strings.Contains(body, "Acme jobs") {
			t.Errorf("GET %s: links do not carry the mount prefix, or the title is missing", path)
		}
	}
	_, body, _ := f.get("/tasks/" + res.ID())
	if !strings.Contains(body, "&lt;script&gt;alert(1)&lt;/script&gt;") || !strings.Contains(body, "x-evil") {
		t.Errorf("task page lacks the escaped arguments, error or header")
	}
	_, body, _ = f.get("/tasks?state=failed")
	if !strings.Contains(body, res.ID()) {
		t.Errorf("failed filter does not list the failed task")
	}
	_, body, _ = f.get("/tasks?state=succeeded")
	if strings.Contains(body, res.ID()) {
		t.Errorf("succeeded filter lists the failed task")
	}
	if code, _, _ := f.get("/tasks/nope"); code != 404 {
		t.Errorf("unknown task: %d", code)
	}
	if code, _, _ := f.get("/static/style.css"); code != 200 {
		t.Errorf("style sheet: %d", code)
	}
}

func TestArgumentsHiddenByDefault(t *testing.T) {
	f := newFixture(t, web.Options{})
	res, _ := f.task.Enqueue(bg, f.q, map[string]string{"to": "secret@example.com"})
	dockettest.Drain(t, f.q)
	_, body, _ := f.get("/tasks/" + res.ID())
	if strings.Contains(body, "secret@example.com") || !strings.Contains(body, "Hidden") {
		t.Error("arguments or result shown without ShowArgs")
	}
}

func TestRetryFromTheTaskPage(t *testing.T) {
	f := newFixture(t, web.Options{})
	res, _ := f.task.Enqueue(bg, f.q, map[string]string{"to": "ann", "fail": "smtp down"})
	dockettest.Drain(t, f.q)
	page := "/tasks/" + res.ID()
	code, _, loc := f.post("/tasks/act", url.Values{"id": {res.ID()}, "action": {"retry"}, "back": {page}}, f.token(page))
	if code != http.StatusSeeOther || loc != "/admin/docket"+page {
		t.Fatalf("retry: %d, Location %q", code, loc)
	}
	in, _ := res.Info(bg)
	if in.State != docket.StateReady {
		t.Fatalf("after retry: %v", in.State)
	}
	// The page the redirect leads to says what happened, once.
	if _, body, _ := f.get(page); !strings.Contains(body, "retry: 1 changed") {
		t.Error("the page after the retry has no notice")
	}
	if _, body, _ := f.get(page); strings.Contains(body, "retry: 1 changed") {
		t.Error("the notice shows again")
	}
	// A link cannot put words on the dashboard.
	if _, body, _ := f.get(page + "?notice=Session+expired"); strings.Contains(body, "Session expired") {
		t.Error("a notice from the query string is shown")
	}
}

func TestStateChangesAreGuarded(t *testing.T) {
	f := newFixture(t, web.Options{})
	res, _ := f.task.Enqueue(bg, f.q, map[string]string{"to": "ann"}, docket.Countdown(time.Hour))
	form := func() url.Values { return url.Values{"id": {res.ID()}, "action": {"cancel"}} }
	// No token, a forged token, a cross-site request with the right token.
	if code, body, _ := f.post("/tasks/act", form(), ""); code != 403 || !strings.Contains(body, "token") {
		t.Errorf("POST without a token: %d", code)
	}
	if code, _, _ := f.post("/tasks/act", form(), "forged"); code != 403 {
		t.Errorf("POST with a forged token: %d", code)
	}
	tok := f.token("/tasks")
	v := form()
	v.Set("csrf", tok)
	req, _ := http.NewRequest("POST", f.srv.URL+"/admin/docket/tasks/act", strings.NewReader(v.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	resp, err := f.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Errorf("cross-site POST: %d", resp.StatusCode)
	}
	// GET never changes state.
	for _, path := range []string{"/queues/default/pause", "/schedules/x/trigger", "/enqueue?name=mail.send&args=1"} {
		if code, _, _ := f.get(path); code == 303 {
			t.Errorf("GET %s acted: %d", path, code)
		}
	}
	if st, _ := f.q.Stats(bg); st.Queues[0].Paused {
		t.Error("a GET paused the queue")
	}
	if in, _ := res.Info(bg); in.State != docket.StateScheduled {
		t.Fatalf("a refused request changed the task: %v", in.State)
	}
	// An open redirect through back is refused: it stays on the dashboard.
	for _, b := range []string{"//evil.example/x", "/\t/evil.example", "/\\evil.example", "https://evil.example/", "/../../logout", "/tasks/../../x", "javascript:alert(1)"} {
		if code, _, loc := f.post("/tasks/act", url.Values{"id": {res.ID()}, "action": {"cancel"}, "back": {b}}, tok); code != 303 || loc != "/admin/docket/tasks" {
			t.Errorf("back %q: %d, Location %q; want the task list", b, code, loc)
		}
	}
	if in, _ := res.Info(bg); in.State != docket.StateCancelled {
		t.Fatalf("the same-origin request with its token did not cancel: %v", in.State)
	}
}

func TestReadOnlyAndAuthorize(t *testing.T) {
	ro := newFixture(t, web.Options{ReadOnly: true})
	res, _ := ro.task.Enqueue(bg, ro.q, map[string]string{"to": "ann"})
	_, body, _ := ro.get("/tasks")
	if strings.Contains(body, `name="csrf"`) || strings.Contains(body, `value="retry"`) {
		t.Error("a read-only dashboard shows forms")
	}
	// A forged POST, token and all: refused on the server.
	if code, body, _ := ro.post("/queues/default/pause", url.Values{}, "anything"); code != 403 || !strings.Contains(body, "this dashboard is read-only") {
		t.Errorf("read-only POST: %d", code)
	}
	if paused, _ := ro.q.Stats(bg); paused.Queues[0].Paused {
		t.Error("a read-only dashboard paused a queue")
	}
	_ = res

	var asked []web.Action
	authz := newFixture(t, web.Options{Authorize: func(r *http.Request, a web.Action) error {
		asked = append(asked, a)
		if a == web.ActPauseQueue {
			return errors.New("operators only")
		}
		return nil
	}})
	tok := authz.token("/enqueue")
	if code, body, _ := authz.post("/queues/default/pause", url.Values{}, tok); code != 403 || !strings.Contains(body, "operators only") {
		t.Errorf("refused pause: %d", code)
	}
	if code, _, _ := authz.post("/enqueue", url.Values{"name": {"mail.send"}, "args": {`{"to":"bo"}`}}, tok); code != 303 {
		t.Errorf("allowed enqueue: %d", code)
	}
	if len(asked) != 2 || asked[0] != web.ActPauseQueue || asked[1] != web.ActEnqueue {
		t.Errorf("Authorize asked %v", asked)
	}
}

func TestQueuePauseAndSchedules(t *testing.T) {
	f := newFixture(t, web.Options{})
	if err := f.task.Schedule(f.q, "nightly", docket.Cron("0 3 * * *"), map[string]string{"to": "ops"}); err != nil {
		t.Fatal(err)
	}
	dockettest.Drain(t, f.q) // stores the schedule's state
	tok := f.token("/enqueue")
	if code, _, _ := f.post("/queues/default/pause", url.Values{}, tok); code != 303 {
		t.Fatalf("pause: %d", code)
	}
	_, body, _ := f.get("/")
	if !strings.Contains(body, "paused") || !strings.Contains(body, ">Resume<") {
		t.Error("the overview does not show the pause")
	}
	if code, _, _ := f.post("/queues/default/resume", url.Values{}, tok); code != 303 {
		t.Fatalf("resume: %d", code)
	}
	_, body, _ = f.get("/schedules")
	if !strings.Contains(body, "nightly") || !strings.Contains(body, "/schedules/nightly/trigger") {
		t.Fatalf("schedules page:\n%s", body)
	}
	code, _, loc := f.post("/schedules/nightly/trigger", url.Values{}, tok)
	if code != 303 || loc != "/admin/docket/schedules" {
		t.Fatalf("trigger: %d %q", code, loc)
	}
	if _, body, _ := f.get("/schedules"); !strings.Contains(body, "triggered task") {
		t.Fatal("no notice of the triggered task")
	}
	if n := dockettest.Drain(t, f.q); n != 1 {
		t.Fatalf("the triggered task did not run: %d", n)
	}
}

// RabbitMQ without a result store knows only its queues' depths: the
// dashboard shows those and hides what the backend cannot do.
func TestRabbitMQAloneShowsWhatItCan(t *testing.T) {
	raw := os.Getenv("DOCKET_TEST_AMQP_URL")
	if raw == "" {
		t.Skip("DOCKET_TEST_AMQP_URL is not set; skipping the RabbitMQ dashboard test")
	}
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	prefix := fmt.Sprintf("webtest%d", time.Now().UnixNano())
	v := u.Query()
	v.Set("prefix", prefix)
	u.RawQuery = v.Encode()
	t.Cleanup(func() { amqptest.DeleteTopology(t, raw, prefix, "default") })
	q, err := docket.Open(bg, u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	task := docket.NewTask("mail.send", func(ctx context.Context, to string) (string, error) { return to, nil })
	if err := q.Register(task); err != nil {
		t.Fatal(err)
	}
	if _, err := task.Enqueue(bg, q, "ann"); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(web.Handler(q, web.Options{}))
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get("/")
	if code != 200 || !strings.Contains(body, `<td class="num">1</td>`) {
		t.Fatalf("overview: %d\n%s", code, body)
	}
	if strings.Contains(body, ">Pause<") || strings.Contains(body, `href="/tasks"`) || !strings.Contains(body, "needs a result store") {
		t.Errorf("the overview offers what RabbitMQ alone cannot do:\n%s", body)
	}
	if code, body := get("/tasks"); code != 200 || !strings.Contains(body, "cannot list tasks") {
		t.Errorf("tasks page: %d", code)
	}
	if strings.Contains(u.String(), "guest:guest") && strings.Contains(body, "guest:guest") {
		t.Error("the page shows the URL's password")
	}
}

// "Every task this filter matches" acts on exactly the filter's tasks,
// whatever page the list was on.
func TestActOnEveryMatchingTask(t *testing.T) {
	f := newFixture(t, web.Options{})
	var failed, ok []string
	for i := range 6 {
		m := map[string]string{"to": fmt.Sprint(i)}
		if i%2 == 0 {
			m["fail"] = "bounced"
		}
		r, err := f.task.Enqueue(bg, f.q, m)
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			failed = append(failed, r.ID())
		} else {
			ok = append(ok, r.ID())
		}
	}
	dockettest.Drain(t, f.q)
	tok := f.token("/tasks?state=failed")
	form := url.Values{"all": {"1"}, "state": {"failed"}, "action": {"delete"}, "cursor": {failed[1]}}
	if code, _, _ := f.post("/tasks/act", form, tok); code != 303 {
		t.Fatalf("delete all failed: %d", code)
	}
	for _, id := range failed {
		if _, err := f.q.Info(bg, id); !errors.Is(err, docket.ErrNotFound) {
			t.Errorf("failed task %s not deleted: %v", id, err)
		}
	}
	for _, id := range ok {
		if _, err := f.q.Info(bg, id); err != nil {
			t.Errorf("succeeded task %s: %v", id, err)
		}
	}
}

func TestEnqueueForm(t *testing.T) {
	f := newFixture(t, web.Options{})
	tok := f.token("/enqueue")
	code, body, _ := f.post("/enqueue", url.Values{"name": {"mail.send"}, "args": {`{"to": "ann"`}}, tok)
	if code != 400 || !strings.Contains(body, "valid JSON") || !strings.Contains(body, `{&#34;to&#34;: &#34;ann&#34;`) || strings.Contains(body, "data-refresh") {
		t.Fatalf("bad JSON: %d; want the error, the arguments kept, and no refresh\n%s", code, body)
	}
	code, _, loc := f.post("/enqueue", url.Values{"name": {"mail.send"}, "args": {`{"to": "ann"}`}, "countdown": {"5m"}}, tok)
	if code != 303 || !strings.HasPrefix(loc, "/admin/docket/tasks/") {
		t.Fatalf("enqueue: %d %q", code, loc)
	}
	in, err := f.q.Info(bg, strings.TrimPrefix(loc, "/admin/docket/tasks/"))
	if err != nil || in.State != docket.StateScheduled || string(in.Args) != `{"to": "ann"}` {
		t.Fatalf("enqueued task: %+v, %v", in, err)
	}
}

// A workflow step's page links its workflow, the step that takes its
// result and the steps whose results it takes, in order.
func TestWorkflowLinks(t *testing.T) {
	f := newFixture(t, web.Options{})
	count := docket.NewTask("mail.count", func(ctx context.Context, rs []string) (int, error) { return len(rs), nil })
	if err := f.q.Register(count); err != nil {
		t.Fatal(err)
	}
	send := func(to string) docket.Flow[string] { return docket.Step(f.task, map[string]string{"to": to}) }
	wf, err := docket.EnqueueFlow(bg, f.q, docket.Then(docket.Group(send("ann"), send("bob"), send("cy")), count))
	if err != nil {
		t.Fatal(err)
	}
	steps, err := wf.Info(bg)
	if err != nil {
		t.Fatal(err)
	}
	_, body, _ := f.get("/tasks/" + wf.ID())
	for _, want := range []string{"Workflow", "(this is its last step)", "3 ready", "1 waiting", "Takes the results of"} {
		if !strings.Contains(body, want) {
			t.Errorf("the body's page lacks %q", want)
		}
	}
	// Members in slot order, each linked.
	at := map[int]int{}
	for _, s := range steps {
		if s.ID == wf.ID() {
			continue
		}
		i := strings.Index(body, `href="/admin/docket/tasks/`+s.ID+`"`)
		if i < 0 {
			t.Fatalf("member %s (slot %d) is not linked from the body's page", s.ID, s.Slot)
		}
		at[s.Slot] = i
	}
	if len(at) != 3 || at[0] > at[1] || at[1] > at[2] {
		t.Errorf("members are not listed in slot order: %v", at)
	}
	member := steps[len(steps)-1].ID
	if member == wf.ID() {
		member = steps[0].ID
	}
	_, body, _ = f.get("/tasks/" + member)
	if !strings.Contains(body, "Next step") || !strings.Contains(body, `href="/admin/docket/tasks/`+wf.ID()+`"`) {
		t.Error("a member's page does not link the step that takes its result")
	}
	dockettest.Drain(t, f.q)
	if _, body, _ = f.get("/tasks/" + wf.ID()); !strings.Contains(body, "4 succeeded") {
		t.Error("the body's page does not count the finished steps")
	}
}
