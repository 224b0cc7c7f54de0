package main

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/docketq/docket"
	"github.com/docketq/docket/web"
)

func (a *app) serveCmd() *cobra.Command {
	var addr string
	var readOnly, showArgs bool
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the web dashboard, behind basic auth from the environment",
		Long: `Serve the web dashboard on --addr until interrupted. It asks for the user
and password in $DOCKET_WEB_USER and $DOCKET_WEB_PASSWORD (HTTP basic auth);
without them it refuses to start unless --addr is a loopback address.
Serve it over TLS, or behind a proxy that terminates TLS, anywhere else:
basic auth sends the password with every request.`,
		Example: `  DOCKET_WEB_USER=ops DOCKET_WEB_PASSWORD=... docket serve --addr :8080
  docket serve --addr 127.0.0.1:8080 --read-only`,
		Args: noArgs,
		RunE: a.action(func(ctx context.Context, _ *cobra.Command, _ []string) error {
			user, pass := a.getenv("DOCKET_WEB_USER"), a.getenv("DOCKET_WEB_PASSWORD")
			if (user == "") != (pass == "") {
				return inputf(docket.ErrInvalid, "docket: set both DOCKET_WEB_USER and DOCKET_WEB_PASSWORD, or neither")
			}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return inputf(docket.ErrInvalid, "docket: serve: %v", err)
			}
			defer ln.Close()
			if user == "" && !loopback(ln.Addr()) {
				return inputf(docket.ErrInvalid, "docket: serve: %s is reachable from other hosts; set DOCKET_WEB_USER and DOCKET_WEB_PASSWORD, or use --addr 127.0.0.1:PORT", ln.Addr())
			}
			q, err := a.open(ctx, false)
			if err != nil {
				return err
			}
			defer q.Close()
			var h http.Handler = web.Handler(q, web.Options{ReadOnly: readOnly, ShowArgs: showArgs})
			if user != "" {
				h = basicAuth(h, user, pass)
			} else {
				h = loopbackHosts(h)
			}
			srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute}
			fmt.Fprintf(a.stderr, "docket: dashboard for %s on http://%s/\n", q.URL(), ln.Addr())
			done := make(chan error, 1)
			go func() { done <- srv.Serve(ln) }()
			select {
			case err := <-done:
				return err
			case <-ctx.Done():
			}
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil {
				return err
			}
			if err := <-done; !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		}),
	}
	fs := cmd.Flags()
	fs.StringVar(&addr, "addr", "127.0.0.1:8080", "listen address")
	fs.BoolVar(&readOnly, "read-only", false, "refuse every change")
	fs.BoolVar(&showArgs, "show-args", false, "show task arguments and results (hidden by default)")
	return cmd
}

func loopback(a net.Addr) bool {
	t, ok := a.(*net.TCPAddr)
	return ok && t.IP.IsLoopback()
}

// loopbackHosts refuses requests whose Host is not a loopback name: on a
// loopback address without a password, a web page whose domain an
// attacker re-points at 127.0.0.1 (DNS rebinding) would otherwise be
// same-origin with the dashboard.
func loopbackHosts(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.Trim(host, "[]")
		if ip := net.ParseIP(host); !(host == "localhost" || (ip != nil && ip.IsLoopback())) {
			http.Error(w, "docket: this dashboard answers only to localhost, 127.0.0.1 or [::1]", http.StatusMisdirectedRequest)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// basicAuth asks every request for user and pass, compared in constant
// time.
func basicAuth(next http.Handler, user, pass string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(user)) != 1 || subtle.ConstantTimeCompare([]byte(p), []byte(pass)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="docket", charset="UTF-8"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}
