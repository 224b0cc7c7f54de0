// Package web is docket's dashboard: an http.Handler to mount in the
// application's own server, behind its own authentication.
//
//	mux.Handle("/admin/docket/", http.StripPrefix("/admin/docket", web.Handler(q, web.Options{})))
//
// It shows queues with their counts by state, lag, throughput over the
// last hour and workers; tasks by state with filters, search over
// arguments and errors, and cursor paging; each task's arguments, result,
// attempts with their errors, headers, timeline and progress; schedules
// with their next and last fire; and it retries, cancels, deletes and runs
// tasks (one, a selection, or every task a filter matches), pauses and
// resumes queues and schedules, triggers a schedule and enqueues a task by
// name. Pages refresh their content every few seconds while open.
//
// Everything is rendered on the server with html/template; the style
// sheet and one small script are embedded, nothing is fetched from
// elsewhere, and every page reads without JavaScript. It asks the backend
// what it supports and leaves out what it cannot do (RabbitMQ without a
// result store knows only its queues' depths).
//
// # Security
//
// Every value is escaped by html/template: task arguments, errors and
// headers come from whoever enqueued the task. State changes are POST
// only, with a CSRF token bound to a cookie and a check of the browser's
// Sec-Fetch-Site and Origin headers (net/http's CrossOriginProtection).
// Responses carry a Content-Security-Policy that forbids inline script and
// framing. ReadOnly refuses every change on the server, and Authorize
// decides each one. Arguments and results are hidden unless ShowArgs is
// set. The backend's URL is shown redacted (no password).
package web

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/docketq/docket"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Action names a state change the dashboard makes, for Authorize.
type Action string

// The actions.
const (
	ActRetry          Action = "retry"
	ActCancel         Action = "cancel"
	ActDelete         Action = "delete"
	ActRunNow         Action = "run"
	ActPauseQueue     Action = "pause-queue"
	ActResumeQueue    Action = "resume-queue"
	ActPauseSchedule  Action = "pause-schedule"
	ActResumeSchedule Action = "resume-schedule"
	ActTrigger        Action = "trigger-schedule"
	ActEnqueue        Action = "enqueue"
)

// Options configure Handler. The zero value is a dashboard that may change
// state, hides task arguments and results, and is titled "docket".
type Options struct {
	// Title is shown in the header and the page titles.
	Title string
	// ReadOnly refuses every state change (403), whatever Authorize says;
	// the pages show no buttons.
	ReadOnly bool
	// Authorize, if set, is asked before each state change with the
	// request (whose ctx carries what the application's authentication
	// middleware put there) and the action; an error refuses it (403, the
	// error's text shown).
	Authorize func(r *http.Request, a Action) error
	// ShowArgs shows task arguments and results. They are hidden by
	// default: payloads often hold personal data or secrets.
	ShowArgs bool
	// Refresh is how often open pages refresh their content (default 3s;
	// negative: never).
	Refresh time.Duration
}

// ErrForbidden is what a refused state change wraps.
var ErrForbidden = errors.New("docket: forbidden")

// Handler returns the dashboard for q. It serves paths relative to where
// it is mounted (use http.StripPrefix); links carry the prefix, taken from
// the request.
func Handler(q *docket.Queue, opts Options) http.Handler {
	if opts.Title == "" {
		opts.Title = "docket"
	}
	if opts.Refresh == 0 {
		opts.Refresh = 3 * time.Second
	}
	s := &server{q: q, opts: opts}
	s.tmpl = template.Must(template.New("").Funcs(s.funcs()).ParseFS(templateFS, "templates/*.html"))
	static, _ := fs.Sub(staticFS, "static")
	s.asset = assetVersion(static)
	mux := http.NewServeMux()
	mux.Handle("GET /static/", http.StripPrefix("/static/", cacheStatic(http.FileServerFS(static))))
	mux.HandleFunc("GET /{$}", s.overview)
	mux.HandleFunc("GET /tasks", s.tasks)
	mux.HandleFunc("GET /tasks/{id}", s.task)
	mux.HandleFunc("POST /tasks/act", s.change(s.actTasks))
	mux.HandleFunc("POST /queues/{name}/{op}", s.change(s.queueOp))
	mux.HandleFunc("GET /schedules", listPage(s, "schedules", "Schedules", q.Schedules))
	mux.HandleFunc("POST /schedules/{name}/{op}", s.change(s.scheduleOp))
	mux.HandleFunc("GET /workers", listPage(s, "workers", "Workers", q.Workers))
	mux.HandleFunc("GET /enqueue", s.enqueueForm)
	mux.HandleFunc("POST /enqueue", s.change(s.enqueue))
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, r, http.StatusForbidden, fmt.Errorf("%w: a cross-origin request may not change state", ErrForbidden))
	}))
	return secure(cop.Handler(mux))
}

// server is one dashboard.
type server struct {
	q     *docket.Queue
	opts  Options
	tmpl  *template.Template
	asset string       // the static files' version, for their URLs
	caps  atomic.Int32 // 0 unknown, 1 operable, 2 not (see operable)

	mu       sync.Mutex // guards the queue names below
	queues   []string   // the filter's suggestions, from Stats
	queuesAt time.Time
}

// assetVersion is a digest of the static files: their URLs carry it, so
// that a browser never keeps an older style sheet or script past an
// upgrade.
func assetVersion(static fs.FS) string {
	h := sha256.New()
	_ = fs.WalkDir(static, ".", func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := fs.ReadFile(static, path)
			h.Write([]byte(path))
			h.Write(b)
		}
		return nil
	})
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// secure sets the headers every response carries.
func secure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("X-Frame-Options", "DENY")
		next.ServeHTTP(w, r)
	})
}

func cacheStatic(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=86400") // URLs carry the version
		next.ServeHTTP(w, r)
	})
}

// prefix is the path the dashboard is mounted under: the part of the
// request's original path that StripPrefix removed.
func prefix(r *http.Request) string {
	orig := r.RequestURI
	if u, err := url.ParseRequestURI(orig); err == nil {
		orig = u.EscapedPath() // an absolute-form target keeps only its path
	} else if i := strings.IndexAny(orig, "?#"); i >= 0 {
		orig = orig[:i]
	}
	if p, ok := strings.CutSuffix(orig, r.URL.EscapedPath()); ok {
		return p
	}
	return ""
}

// cookiePath is where the dashboard's cookies apply: its mount.
func cookiePath(r *http.Request) string {
	if p := prefix(r); p != "" {
		return p
	}
	return "/"
}

// secureCookie: the request reached the application over TLS, here or at
// a proxy in front of it.
func secureCookie(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

const (
	csrfCookie   = "docket_csrf"
	noticeCookie = "docket_notice"
)

// csrfToken returns the token forms on this response carry: the value of
// a random cookie, set when the browser has none (double submit). A
// request from another site can neither read the cookie nor, in a current
// browser, get past the cross-origin check; and every replica of the
// application accepts the token, with no key to share.
func (s *server) csrfToken(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(csrfCookie); err == nil && len(c.Value) == 43 {
		return c.Value
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	v := base64.RawURLEncoding.EncodeToString(b)
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: v, Path: cookiePath(r), HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: secureCookie(r)})
	return v
}

// checkCSRF reports whether r's form carries the token of its cookie.
func (s *server) checkCSRF(r *http.Request) bool {
	c, err := r.Cookie(csrfCookie)
	if err != nil || len(c.Value) != 43 {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(r.PostFormValue("csrf")), []byte(c.Value)) == 1
}

// change wraps a state-changing handler: read-only mode, the CSRF token
// and the form are checked first; the handler names its action for
// Authorize.
func (s *server) change(h func(w http.ResponseWriter, r *http.Request, allow func(Action) error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 2<<20)
		if err := r.ParseForm(); err != nil {
			s.fail(w, r, http.StatusBadRequest, fmt.Errorf("docket: web: %w: %v", docket.ErrInvalid, err))
			return
		}
		if s.opts.ReadOnly {
			s.fail(w, r, http.StatusForbidden, fmt.Errorf("%w: this dashboard is read-only", ErrForbidden))
			return
		}
		if !s.checkCSRF(r) {
			s.fail(w, r, http.StatusForbidden, fmt.Errorf("%w: the form's token is missing or stale; reload the page and try again", ErrForbidden))
			return
		}
		h(w, r, func(a Action) error {
			if s.opts.Authorize == nil {
				return nil
			}
			if err := s.opts.Authorize(r, a); err != nil {
				return fmt.Errorf("%w: %s: %w", ErrForbidden, a, err)
			}
			return nil
		})
	}
}

// safeBack returns the form's back path if it is a path on this
// dashboard, and fallback otherwise: never another site, a scheme, a
// parent directory, or bytes a browser would drop or reinterpret.
func safeBack(back, fallback string) string {
	if back == "" || strings.ContainsAny(back, "\\") || strings.IndexFunc(back, func(c rune) bool { return c < 0x20 || c == 0x7f }) >= 0 {
		return fallback
	}
	u, err := url.Parse(back)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || u.Opaque != "" ||
		!strings.HasPrefix(back, "/") || strings.HasPrefix(back, "//") {
		return fallback
	}
	for _, seg := range strings.Split(u.Path, "/") {
		if seg == ".." || seg == "." {
			return fallback
		}
	}
	return back
}

// redirect answers a change with a redirect to the page a form came from
// (or to fallback), and leaves the notice in a cookie that the next page
// shows once: a link cannot put words on the dashboard.
func redirect(w http.ResponseWriter, r *http.Request, to, notice string) {
	http.SetCookie(w, &http.Cookie{Name: noticeCookie, Value: url.QueryEscape(notice), Path: cookiePath(r), MaxAge: 60, HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: secureCookie(r)})
	http.Redirect(w, r, prefix(r)+to, http.StatusSeeOther)
}

// back redirects to the page a form came from, with a notice.
func back(w http.ResponseWriter, r *http.Request, fallback, notice string) {
	redirect(w, r, safeBack(r.PostFormValue("back"), fallback), notice)
}

// takeNotice returns the notice a redirect left, and clears it.
func takeNotice(w http.ResponseWriter, r *http.Request) string {
	c, err := r.Cookie(noticeCookie)
	if err != nil {
		return ""
	}
	http.SetCookie(w, &http.Cookie{Name: noticeCookie, Path: cookiePath(r), MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: secureCookie(r)})
	n, err := url.QueryUnescape(c.Value)
	if err != nil || len(n) > 500 {
		return ""
	}
	return n
}
