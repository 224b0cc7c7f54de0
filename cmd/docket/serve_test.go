package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
)

func TestServeRefusesAnOpenDashboard(t *testing.T) {
	u := "sqlite:" + filepath.Join(t.TempDir(), "docket.db")
	if err := fixtureSeed(context.Background(), []string{"--url", u, "--n", "1"}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		env  map[string]string
		addr string
		want string
	}{
		{nil, "0.0.0.0:0", "reachable from other hosts"},
		{map[string]string{"DOCKET_WEB_USER": "ops"}, "127.0.0.1:0", "both DOCKET_WEB_USER and DOCKET_WEB_PASSWORD"},
		{map[string]string{"DOCKET_WEB_PASSWORD": "x"}, "127.0.0.1:0", "both DOCKET_WEB_USER and DOCKET_WEB_PASSWORD"},
		{nil, "not an address", "serve"},
	} {
		var out, errb bytes.Buffer
		a := newApp(strings.NewReader(""), &out, &errb, func(k string) string { return c.env[k] })
		code := a.main([]string{"--url", u, "serve", "--addr", c.addr})
		if code != exitInput || !strings.Contains(errb.String(), c.want) {
			t.Errorf("serve --addr %s with %v: exit %d, stderr %q; want exit 2 naming %q", c.addr, c.env, code, errb.String(), c.want)
		}
	}
}

func TestBasicAuth(t *testing.T) {
	h := basicAuth(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "in") }), "ops", "s3cret")
	for _, c := range []struct {
		user, pass string
		set        bool
		code       int
	}{
		{"", "", false, 401}, {"ops", "wrong", true, 401}, {"nope", "s3cret", true, 401}, {"ops", "s3cret", true, 200},
	} {
		req := httptest.NewRequest("GET", "/", nil)
		if c.set {
			req.SetBasicAuth(c.user, c.pass)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != c.code || (c.code == 401 && !strings.Contains(rec.Header().Get("WWW-Authenticate"), "Basic")) {
			t.Errorf("%q/%q: %d, want %d", c.user, c.pass, rec.Code, c.code)
		}
	}
}

// Without a password, the dashboard answers only requests addressed to a
// loopback name (no DNS rebinding).
func TestLoopbackHosts(t *testing.T) {
	h := loopbackHosts(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "in") }))
	for host, want := range map[string]int{
		"127.0.0.1:8080": 200, "localhost:8080": 200, "[::1]:8080": 200, "localhost": 200,
		"evil.example:8080": 421, "evil.example": 421, "192.168.1.5:8080": 421, "": 421,
	} {
		req := httptest.NewRequest("GET", "/", nil)
		req.Host = host
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != want {
			t.Errorf("Host %q: %d, want %d", host, rec.Code, want)
		}
	}
}
