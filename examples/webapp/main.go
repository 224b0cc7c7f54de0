// Command webapp is a net/http service with docket inside: handlers enqueue
// background tasks, workers run in the same process, an endpoint reports
// results, and SIGINT/SIGTERM stop the server and then the workers
// gracefully.
//
//	go run ./examples/webapp -addr :8080
//	curl -X POST 'localhost:8080/signup?email=ann@example.com'
//	curl localhost:8080/tasks/<id>
//	curl 'localhost:8080/tasks/<id>?wait=5s'
//
// With WEBAPP_ADMIN_PASSWORD set, docket's dashboard is at
// http://localhost:8080/admin/docket/, behind the app's login page.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/docketq/docket"
	_ "github.com/docketq/docket/transport/all" // DOCKET_URL may name Redis
)

func main() {
	addr := flag.String("addr", "localhost:8080", "listen address")
	flag.Parse()
	if err := run(*addr); err != nil {
		fmt.Fprintln(os.Stderr, "webapp:", err)
		os.Exit(1)
	}
}

func run(addr string) error {
	// The library installs no signal handlers; the program decides.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	q, err := docket.Open(ctx, os.Getenv("DOCKET_URL"), docket.Logger(logger), docket.ShutdownGrace(10*time.Second),
		docket.ResultStore(os.Getenv("DOCKET_RESULT_URL")))
	if err != nil {
		return err
	}
	defer q.Close()
	if err := q.Register(SendWelcome); err != nil {
		return err
	}

	workersDone := make(chan error, 1)
	go func() { workersDone <- q.Run(ctx) }() // stops gracefully when ctx ends

	// WEBAPP_ADMIN_PASSWORD turns on the dashboard at /admin/docket/.
	srv := &http.Server{Addr: addr, Handler: NewMux(q, os.Getenv("WEBAPP_ADMIN_PASSWORD")), ReadHeaderTimeout: 5 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.ListenAndServe() }()
	logger.Info("listening", "addr", addr, "queue", q.String())

	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return <-workersDone
}
