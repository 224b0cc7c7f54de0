package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/docketq/docket/dockettest"
)

func TestSignupEnqueuesOneWelcome(t *testing.T) {
	q, _ := dockettest.Open(t)
	if err := q.Register(SendWelcome); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(NewMux(q, ""))
	defer srv.Close()

	var ids []string
	for range 2 { // a double click
		resp, err := http.PostForm(srv.URL+"/signup", url.Values{"email": {"Ann <ann@example.com>"}})
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]string
		json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("status %d", resp.StatusCode)
		}
		ids = append(ids, body["id"])
	}
	if ids[0] != ids[1] {
		t.Fatalf("two signups enqueued two e-mails: %v", ids)
	}
	dockettest.RequireEnqueued(t, q, SendWelcome, Welcome{Email: "ann@example.com"})
	dockettest.Drain(t, q)

	resp, err := http.Get(srv.URL + "/tasks/" + ids[0])
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var info struct {
		State  string `json:"state"`
		Result string `json:"result"`
	}
	json.NewDecoder(resp.Body).Decode(&info)
	if info.State != "succeeded" {
		t.Fatalf("task state %q", info.State)
	}
	if resp, _ := http.PostForm(srv.URL+"/signup", url.Values{"email": {"nope"}}); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("invalid email: %d", resp.StatusCode)
	}
}

func TestDashboardBehindLogin(t *testing.T) {
	q, _ := dockettest.Open(t)
	if err := q.Register(SendWelcome); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(NewMux(q, "s3cret"))
	defer srv.Close()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	resp, err := c.Get(srv.URL + "/admin/docket/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Request.URL.Path != "/login" {
		t.Fatalf("without a login, the dashboard answered at %s", resp.Request.URL)
	}
	resp, _ = c.PostForm(srv.URL+"/login", url.Values{"password": {"wrong"}})
	resp.Body.Close()
	if resp.Request.URL.RawQuery != "failed" {
		t.Fatalf("a wrong password led to %s", resp.Request.URL)
	}
	resp, err = c.PostForm(srv.URL+"/login", url.Values{"password": {"s3cret"}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Request.URL.Path != "/admin/docket/" || !strings.Contains(string(body), "webapp jobs") || !strings.Contains(string(body), `href="/admin/docket/tasks"`) {
		t.Fatalf("after the login, %s:\n%s", resp.Request.URL, body)
	}
}
