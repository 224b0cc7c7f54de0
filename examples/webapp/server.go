package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/mail"
	"time"

	"github.com/docketq/docket"
)

// Welcome is the argument of the welcome e-mail task.
type Welcome struct {
	Email string `json:"email"`
}

// SendWelcome pretends to send an e-mail. Unique keys make a double-clicked
// signup enqueue one e-mail, not two.
var SendWelcome = docket.NewTask("email.welcome", func(ctx context.Context, w Welcome) (string, error) {
	select {
	case <-time.After(50 * time.Millisecond): // the "SMTP call"
	case <-ctx.Done():
		return "", ctx.Err()
	}
	return "sent to " + w.Email, nil
}, docket.MaxRetries(5), docket.Timeout(30*time.Second))

// NewMux returns the service's routes. With an operator password, docket's
// dashboard is served under /admin/docket/ behind a login page.
func NewMux(q *docket.Queue, adminPassword string) *http.ServeMux {
	mux := http.NewServeMux()
	if adminPassword != "" {
		mountAdmin(mux, q, adminPassword)
	}
	mux.HandleFunc("POST /signup", func(w http.ResponseWriter, r *http.Request) {
		addr, err := mail.ParseAddress(r.FormValue("email"))
		if err != nil {
			http.Error(w, "invalid email", http.StatusBadRequest)
			return
		}
		res, err := SendWelcome.Enqueue(r.Context(), q, Welcome{Email: addr.Address},
			docket.Unique("welcome:"+addr.Address, docket.ReturnExisting))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, http.StatusAccepted, map[string]string{"id": res.ID()})
	})
	mux.HandleFunc("GET /tasks/{id}", func(w http.ResponseWriter, r *http.Request) {
		res := SendWelcome.ResultOf(q, r.PathValue("id"))
		if d, err := time.ParseDuration(r.URL.Query().Get("wait")); err == nil && d > 0 {
			ctx, cancel := context.WithTimeout(r.Context(), min(d, 30*time.Second))
			defer cancel()
			res.Wait(ctx) // the state below tells how it went
		}
		info, err := res.Info(r.Context())
		switch {
		case errors.Is(err, docket.ErrNotFound):
			http.Error(w, "no such task", http.StatusNotFound)
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
		default:
			writeJSON(w, http.StatusOK, map[string]any{
				"id": info.ID, "state": info.State.String(), "attempts": info.Attempt,
				"result": info.Result, "error": info.Error,
			})
		}
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
