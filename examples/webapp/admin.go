package main

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/web"
)

// mountAdmin serves docket's dashboard under /admin/docket/ behind a
// login page: the application's own authentication, which the dashboard
// leaves to it. A real service would use its user store and sessions;
// here one operator password signs a cookie.
func mountAdmin(mux *http.ServeMux, q *docket.Queue, password string) {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	sign := func(v string) string {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(v))
		return v + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
	}
	loggedIn := func(r *http.Request) bool {
		c, err := r.Cookie("webapp_admin")
		if err != nil {
			return false
		}
		v, _, ok := strings.Cut(c.Value, ".")
		if !ok || !hmac.Equal([]byte(c.Value), []byte(sign(v))) {
			return false
		}
		exp, err := time.Parse(time.RFC3339, v)
		return err == nil && time.Now().Before(exp)
	}
	dashboard := web.Handler(q, web.Options{Title: "webapp jobs"})
	mux.Handle("/admin/docket/", http.StripPrefix("/admin/docket", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !loggedIn(r) {
			http.Redirect(w, r, "/login", http.StatusSeeOther)
			return
		}
		dashboard.ServeHTTP(w, r)
	})))
	mux.HandleFunc("GET /login", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'none'; form-action 'self'; frame-ancestors 'none'")
		_ = loginPage.Execute(w, r.URL.Query().Has("failed"))
	})
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		if password == "" || subtle.ConstantTimeCompare([]byte(r.PostFormValue("password")), []byte(password)) != 1 {
			http.Redirect(w, r, "/login?failed", http.StatusSeeOther)
			return
		}
		exp := time.Now().Add(8 * time.Hour).UTC().Format(time.RFC3339)
		http.SetCookie(w, &http.Cookie{Name: "webapp_admin", Value: sign(exp), Path: "/admin/", HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: r.TLS != nil})
		http.Redirect(w, r, "/admin/docket/", http.StatusSeeOther)
	})
}

var loginPage = template.Must(template.New("login").Parse(`<!doctype html><meta charset="utf-8"><title>Log in</title>
<h1>Operators</h1>{{if .}}<p>Wrong password.</p>{{end}}
<form method="post" action="/login"><label>Password <input type="password" name="password" autofocus></label> <button>Log in</button></form>`))
