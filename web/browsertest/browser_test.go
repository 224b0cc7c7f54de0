package browsertest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/docketq/docket"
	"github.com/docketq/docket/web"
)

var screenshots = flag.Bool("screenshots", false, "write the dashboard's screenshots to docs/screenshots")

// app is a docket application with the dashboard mounted three times
// under its own mux: read-write at /admin/docket/ (no refresh, so that a
// click never meets a node the refresh just replaced), the same refreshing
// every half second at /live/, and read-only at /view/.
type app struct {
	q      *docket.Queue
	srv    *httptest.Server
	broken atomic.Bool // reports.build fails while set
	// gate, when set, holds reports.build until it is closed
	gate   atomic.Pointer[chan struct{}]
	build  *docket.Task[Report, string]
	mail   *docket.Task[string, string]
	digest *docket.Task[[]string, int]
}

// Report is the arguments of the reports.build task.
type Report struct {
	Customer string `json:"customer"`
	Month    string `json:"month"`
}

func newApp(t *testing.T) *app {
	t.Helper()
	ctx := context.Background()
	q, err := docket.Open(ctx, "sqlite:"+filepath.Join(t.TempDir(), "app.db"), docket.Concurrency(4))
	if err != nil {
		t.Fatal(err)
	}
	a := &app{q: q}
	a.broken.Store(true)
	a.build = docket.NewTask("reports.build", func(ctx context.Context, r Report) (string, error) {
		if g := a.gate.Load(); g != nil {
			select {
			case <-*g:
			case <-ctx.Done():
				return "", ctx.Err()
			}
		}
		if a.broken.Load() && r.Customer == "initech" {
			return "", errors.New("upstream returned 503 Service Unavailable\n\tat billing.Fetch (billing.go:88)")
		}
		return fmt.Sprintf("s3://reports/%s-%s.pdf", r.Customer, r.Month), nil
	}, docket.MaxRetries(1), docket.RetryBackoff(docket.Exponential{Base: 10 * time.Millisecond, Max: 10 * time.Millisecond}))
	a.mail = docket.NewTask("email.send", func(ctx context.Context, to string) (string, error) { return "queued for " + to, nil }, docket.OnQueue("emails"))
	a.digest = docket.NewTask("email.digest", func(ctx context.Context, sent []string) (int, error) { return len(sent), nil })
	if err := q.Register(a.build, a.mail, a.digest); err != nil {
		t.Fatal(err)
	}
	if err := a.build.Schedule(q, "monthly-reports", docket.Cron("0 6 1 * *"), Report{Customer: "all", Month: "current"}); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- q.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		<-ran
		q.Close()
	})
	mux := http.NewServeMux()
	mux.Handle("/admin/docket/", http.StripPrefix("/admin/docket", web.Handler(q, web.Options{ShowArgs: true, Title: "Acme jobs", Refresh: -1})))
	mux.Handle("/live/", http.StripPrefix("/live", web.Handler(q, web.Options{ShowArgs: true, Title: "Acme jobs", Refresh: 500 * time.Millisecond})))
	mux.Handle("/view/", http.StripPrefix("/view", web.Handler(q, web.Options{ReadOnly: true})))
	a.srv = httptest.NewServer(mux)
	t.Cleanup(a.srv.Close)
	return a
}

// seed enqueues a realistic mix and waits until the worker ran what was
// due: two failed reports among succeeded ones and e-mails.
func (a *app) seed(t *testing.T) []*docket.Result[string] {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var failed []*docket.Result[string]
	for i, c := range []string{"acme", "globex", "initech", "umbrella", "hooli", "initech"} {
		r, err := a.build.Enqueue(ctx, a.q, Report{Customer: c, Month: fmt.Sprintf("2026-%02d", i+1)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Wait(ctx); err != nil {
			failed = append(failed, r)
		}
	}
	for i := range 20 {
		r, err := a.mail.Enqueue(ctx, a.q, fmt.Sprintf("user%d@example.com", i))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.build.Enqueue(ctx, a.q, Report{Customer: "later", Month: "2027-01"}, docket.Countdown(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if len(failed) != 2 {
		t.Fatalf("%d reports failed, want 2", len(failed))
	}
	return failed
}

// browser starts headless Chromium; tests skip without it, except in CI.
func browser(t *testing.T) context.Context {
	t.Helper()
	path := ""
	for _, p := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p2, err := exec.LookPath(p); err == nil {
			path = p2
			break
		}
	}
	if path == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("no Chromium on PATH (apt-get install chromium)")
		}
		t.Skip("no Chromium on PATH (apt-get install chromium); skipping the browser tests")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1280, 900))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	bctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	if err := chromedp.Do(bctx); err != nil { // starts the browser, with no timeout
		t.Fatalf("start Chromium: %v", err)
	}
	ctx, cancel3 := context.WithTimeout(bctx, 3*time.Minute)
	t.Cleanup(cancel3)
	// A dialog anywhere but the dashboard's own confirmation fails the
	// test: nothing a task carries may run.
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	go func() {
		for ev, err := range dialogs {
			if err != nil {
				return
			}
			if ev.Type != page.DialogTypeConfirm {
				t.Errorf("a page opened a dialog: %q", ev.Message)
			}
			_, _ = chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true})
		}
	}()
	return ctx
}

func run(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// value runs one action that returns a value.
func value[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// eval evaluates a JavaScript expression, awaiting a promise it returns.
func eval[T any](expr string) chromedp.Action[T] {
	return chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise)
}

// text is the text of the first element sel matches.
func text(sel string) chromedp.Action[string] {
	return eval[string](fmt.Sprintf(`(document.querySelector(%q) || {}).textContent || ""`, sel))
}

// waitText waits until the element sel's text contains want.
func waitText(sel, want string) chromedp.Action[chromedp.Void] {
	js := fmt.Sprintf(`(() => { const e = document.querySelector(%q); return !!e && e.textContent.includes(%q); })()`, sel, want)
	return chromedp.Poll[chromedp.Void](js, chromedp.WithPollingTimeout(60*time.Second), chromedp.WithPollingInterval(50*time.Millisecond))
}

// visible waits for the first element sel matches to be visible.
func visible(sel string) chromedp.Action[chromedp.Void] {
	return chromedp.WaitVisible(chromedp.CSS(sel))
}

func click(sel string) chromedp.Action[chromedp.Void] { return chromedp.Click(chromedp.CSS(sel)) }

// follow clicks sel and waits for the page it leads to (a link, or a
// form whose answer redirects) to load.
func follow(t *testing.T, ctx context.Context, sel string) {
	t.Helper()
	if _, err := chromedp.RunResponse(ctx, click(sel)); err != nil {
		t.Fatalf("click %s: %v", sel, err)
	}
}

func TestOperateFromTheBrowser(t *testing.T) {
	a := newApp(t)
	failed := a.seed(t)
	ctx := browser(t)
	base := a.srv.URL + "/admin/docket"

	// The overview: queues with counts, the hour's chart, the worker.
	run(t, ctx, "overview", chromedp.Navigate(base+"/"), visible("table.queues"))
	main := value(t, ctx, "overview text", text("main"))
	for _, want := range []string{"default", "emails", "Throughput, last hour", "succeeded", "Workers"} {
		if !strings.Contains(main, want) {
			t.Errorf("overview lacks %q:\n%s", want, main)
		}
	}

	// Filter the failed tasks with the form.
	run(t, ctx, "tasks", chromedp.Navigate(base+"/tasks"), chromedp.SetValue(chromedp.CSS(`select[name="state"]`), "failed"))
	follow(t, ctx, `form.filters button[type="submit"]`)
	if loc := value(t, ctx, "location", eval[string](`location.search`)); !strings.Contains(loc, "state=failed") {
		t.Fatalf("after filtering, at %s", loc)
	}
	rows := value(t, ctx, "count rows", eval[int](`document.querySelectorAll("table.tasks tbody tr .state-failed").length`))
	if all := value(t, ctx, "count all rows", eval[int](`document.querySelectorAll("table.tasks tbody tr").length`)); all != rows {
		t.Errorf("the failed filter lists %d rows, %d of them failed", all, rows)
	}
	if rows != 2 {
		t.Fatalf("%d failed rows, want 2", rows)
	}

	// Open one, fix the cause, retry it, and watch it on a refreshing page:
	// the page shows the success by itself, without a reload (a marker set
	// on the page survives).
	id := failed[0].ID()
	follow(t, ctx, fmt.Sprintf(`a[href$="/tasks/%s"]`, id))
	run(t, ctx, "open a failed task", waitText("main", "upstream returned 503"))
	a.broken.Store(false)
	gate := make(chan struct{})
	a.gate.Store(&gate) // the retry waits until the page is watching
	follow(t, ctx, `button[value="retry"]`)
	run(t, ctx, "retry",
		waitText(".notice", "retry: 1 changed"),
		chromedp.Navigate(a.srv.URL+"/live/tasks/"+id),
		visible("dl.facts .state"),
		eval[chromedp.Void](`window.docketMarker = true`))
	if st := value(t, ctx, "state", text("dl.facts .state")); st == "succeeded" || st == "failed" {
		t.Fatalf("right after the retry the page shows %q, want ready or running", st)
	}
	close(gate)
	run(t, ctx, "watch", waitText("dl.facts .state", "succeeded"))
	if marker := value(t, ctx, "marker", eval[bool](`window.docketMarker === true`)); !marker {
		t.Error("the page reloaded instead of updating in place")
	}
	if in, err := a.q.Info(context.Background(), id); err != nil || in.State != docket.StateSucceeded {
		t.Fatalf("the retried task: %v, %v", in, err)
	}

	// Pause and resume a queue.
	run(t, ctx, "overview again", chromedp.Navigate(base+"/"))
	follow(t, ctx, `form[action$="/queues/emails/pause"] button`)
	run(t, ctx, "pause",
		waitText(".notice", "queue emails: paused"),
		visible(`form[action$="/queues/emails/resume"]`))
	if st, _ := a.q.Stats(context.Background()); !paused(st, "emails") {
		t.Fatal("emails is not paused")
	}
	follow(t, ctx, `form[action$="/queues/emails/resume"] button`)
	run(t, ctx, "resume", waitText(".notice", "queue emails: resumed"))
	if st, _ := a.q.Stats(context.Background()); paused(st, "emails") {
		t.Fatal("emails is still paused")
	}

	// Trigger a schedule.
	run(t, ctx, "schedules", chromedp.Navigate(base+"/schedules"), waitText("main", "monthly-reports"))
	follow(t, ctx, `form[action$="/schedules/monthly-reports/trigger"] button`)
	run(t, ctx, "trigger", waitText(".notice", "triggered task"))
	notice := strings.TrimSpace(value(t, ctx, "notice", text(".notice")))
	tid := notice[strings.LastIndex(notice, " ")+1:]
	if in, err := a.q.Info(context.Background(), tid); err != nil || in.Name != "reports.build" {
		t.Fatalf("the triggered task %q: %v, %v", tid, in, err)
	}
}

func paused(st *docket.Stats, queue string) bool {
	for _, qs := range st.Queues {
		if qs.Name == queue {
			return qs.Paused
		}
	}
	return false
}

func TestHostileInputAndForgedRequests(t *testing.T) {
	a := newApp(t)
	evil := `<script>alert(1)</script><img src=x onerror=alert(2)>`
	ctx0, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := a.mail.Enqueue(ctx0, a.q, evil, docket.Header("x-note", evil))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Wait(ctx0); err != nil {
		t.Fatal(err)
	}
	ctx := browser(t)
	base := a.srv.URL + "/admin/docket"

	// Arguments, result and headers render as text; no script of theirs
	// runs (the dialog listener fails the test if one does).
	run(t, ctx, "hostile task page",
		chromedp.Navigate(base+"/tasks/"+r.ID()),
		waitText("main", "x-note"))
	argText := value(t, ctx, "arguments", text("pre.json"))
	scripts := value(t, ctx, "scripts", eval[int](`document.querySelectorAll("script").length`))
	imgs := value(t, ctx, "images", eval[int](`document.querySelectorAll("main img").length`))
	if !strings.Contains(argText, "<script>alert(1)</script>") || scripts != 1 || imgs != 0 {
		t.Fatalf("arguments %q, %d scripts (want the dashboard's one), %d images", argText, scripts, imgs)
	}

	// Read-only: a forged POST from the page itself, token field and all,
	// is refused by the server.
	run(t, ctx, "read-only", chromedp.Navigate(a.srv.URL+"/view/"), waitText("header", "read-only"))
	answer := value(t, ctx, "forged POST", eval[string](`fetch("/view/queues/default/pause", {method: "POST", body: new URLSearchParams({csrf: "x"})}).then(async r => r.status + " " + await r.text())`))
	if !strings.HasPrefix(answer, "403 ") || !strings.Contains(answer, "this dashboard is read-only") {
		t.Errorf("read-only dashboard answered a POST with %.200q", answer)
	}

	// A page on another site (localhost, while the dashboard is on
	// 127.0.0.1) posts a form to the dashboard: the browser sends no
	// cookie with it (SameSite=Lax), so no token either, and marks it
	// cross-site; it is refused.
	evilSite := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!doctype html><form id="f" method="post" action="%s/queues/default/pause"><input name="back" value="/"></form><script>document.getElementById("f").submit()</script>`, base)
	}))
	defer evilSite.Close()
	run(t, ctx, "cross-site form",
		chromedp.Navigate(base+"/"), // the browser holds the dashboard's cookie
		chromedp.Navigate(strings.Replace(evilSite.URL, "127.0.0.1", "localhost", 1)),
		waitText("body", "Forbidden"))
	body := value(t, ctx, "refusal", text("body"))
	if st, _ := a.q.Stats(context.Background()); paused(st, "default") {
		t.Fatalf("a cross-site form paused the queue: %s", body)
	}
}

// TestScreenshots writes the main pages, light and dark, to
// docs/screenshots (with -screenshots), and otherwise checks that they
// render at a phone's width without the page itself scrolling sideways.
func TestScreenshots(t *testing.T) {
	a := newApp(t)
	failed := a.seed(t)
	ctx := browser(t)
	base := a.srv.URL + "/admin/docket"
	// A chord of three e-mails and a digest: the digest's page shows its
	// workflow.
	var sends []docket.Flow[string]
	for _, to := range []string{"ann@example.com", "bob@example.com", "cy@example.com"} {
		sends = append(sends, docket.Step(a.mail, to))
	}
	wf, err := docket.EnqueueFlow(context.Background(), a.q, docket.Then(docket.Group(sends...), a.digest))
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if n, err := wf.Wait(wctx); err != nil || n != 3 {
		t.Fatalf("the digest workflow: %d, %v", n, err)
	}
	pages := []struct{ name, path string }{
		{"overview", "/"},
		{"tasks-failed", "/tasks?state=failed"},
		{"task", "/tasks/" + failed[0].ID()},
		{"workflow-step", "/tasks/" + wf.ID()},
		{"schedules", "/schedules"},
	}
	out := filepath.Join("..", "..", "docs", "screenshots")
	for _, scheme := range []string{"light", "dark"} {
		for _, p := range pages {
			media := func(ctx context.Context, t2 *chromedp.Target) (chromedp.Void, error) {
				_, err := chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
					Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}},
				})
				return chromedp.Void{}, err
			}
			run(t, ctx, p.name+" "+scheme,
				media,
				chromedp.EmulateViewport(1280, 800),
				chromedp.Navigate(base+p.path),
				visible("main h1"))
			png := value(t, ctx, "screenshot", chromedp.CaptureScreenshot())
			run(t, ctx, p.name+" at a phone's width",
				chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile),
				chromedp.Reload(),
				visible("main h1"))
			if value(t, ctx, "overflow", eval[bool](`document.documentElement.scrollWidth > window.innerWidth + 1`)) {
				t.Errorf("%s (%s) scrolls sideways at a phone's width", p.name, scheme)
			}
			if *screenshots {
				if err := os.MkdirAll(out, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(out, p.name+"-"+scheme+".png"), png, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if *screenshots {
		t.Logf("wrote %d screenshots to %s", 2*len(pages), out)
	}
}
