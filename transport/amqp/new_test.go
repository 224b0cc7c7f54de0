package amqp_test

import (
	"context"
	"errors"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/docketq/docket"
	_ "github.com/docketq/docket/store/sqlite"
	"github.com/docketq/docket/transport"
	"github.com/docketq/docket/transport/amqp"
)

// A store that lacks some of what the result-store mode needs is refused
// before any connection is made, naming what is missing.
func TestNewRefusesIncapableStore(t *testing.T) {
	type bare struct{ transport.Transport }
	type partial struct {
		transport.Transport
		transport.IDClaimer
		transport.Lister
	}
	for _, c := range []struct {
		store         transport.Transport
		missing, have []string
	}{
		{bare{}, []string{"IDClaimer", "Lister", "Pruner", "ScheduleStore"}, nil},
		{partial{}, []string{"Pruner", "ScheduleStore"}, []string{"IDClaimer", "Lister"}},
	} {
		// Port 1: nothing listens, so a connection attempt would fail
		// differently.
		_, err := amqp.New(bg, amqp.Config{URL: "amqp://guest:s3cret@127.0.0.1:1/", ResultStore: c.store})
		if !errors.Is(err, transport.ErrUnsupported) || strings.Contains(err.Error(), "s3cret") {
			t.Fatalf("%T: %v; want ErrUnsupported", c.store, err)
		}
		for _, m := range c.missing {
			if !strings.Contains(err.Error(), m) {
				t.Errorf("%T: %v does not name %s", c.store, err, m)
			}
		}
		for _, h := range c.have {
			if strings.Contains(err.Error(), h) {
				t.Errorf("%T: %v names %s, which it has", c.store, err, h)
			}
		}
	}
}

// Bad configurations are refused with ErrInvalid, without the password.
func TestNewRefusesBadConfig(t *testing.T) {
	for name, c := range map[string]amqp.Config{
		"empty URL":        {},
		"unknown param":    {URL: "amqp://guest:s3cret@127.0.0.1:1/?bogus=1"},
		"not a URL":        {URL: "amqp://guest:s3cret@127.0.0.1:1/%zz"},
		"wrong scheme":     {URL: "http://guest:s3cret@127.0.0.1:1/"},
		"client reconnect": {URL: "amqp://guest:s3cret@127.0.0.1:1/", AMQP: amqp091.Config{Recovery: &amqp091.Recovery{}}},
	} {
		_, err := amqp.New(bg, c)
		if !errors.Is(err, transport.ErrInvalid) || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: %v; want ErrInvalid without the password", name, err)
		}
	}
}

// RabbitMQ alone offers none of what needs shared state; with a result
// store the transport offers the store's capabilities, and passes a
// SQLite store's change counter on.
func TestNewCapabilities(t *testing.T) {
	alone, err := amqp.New(bg, amqp.Config{URL: freshURL(t, "")})
	if err != nil {
		t.Fatal(err)
	}
	defer alone.Close()
	if _, ok := alone.(transport.Lister); ok {
		t.Error("RabbitMQ alone implements Lister")
	}
	if _, ok := alone.(transport.Pruner); ok {
		t.Error("RabbitMQ alone implements Pruner")
	}
	if _, ok := alone.(transport.ScheduleStore); ok {
		t.Error("RabbitMQ alone implements ScheduleStore")
	}
	if _, ok := alone.(transport.ChangeCounter); ok {
		t.Error("RabbitMQ alone implements ChangeCounter")
	}
	if _, ok := alone.(transport.ResultStorer); ok {
		t.Errorf("RabbitMQ alone claims a result store")
	}

	store := openSQLite(t)
	defer store.Close()
	st, err := amqp.New(bg, amqp.Config{URL: freshURL(t, ""), ResultStore: store})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for name, ok := range map[string]bool{
		"Lister":        is[transport.Lister](st),
		"Pruner":        is[transport.Pruner](st),
		"ScheduleStore": is[transport.ScheduleStore](st),
		"ChangeCounter": is[transport.ChangeCounter](st),
		"Subscriber":    is[transport.Subscriber](st),
		"ClaimStopper":  is[transport.ClaimStopper](st),
	} {
		if !ok {
			t.Errorf("with a SQLite result store: no %s", name)
		}
	}
	if rs, ok := st.(transport.ResultStorer); !ok || rs.ResultStore() != store {
		t.Error("ResultStore does not return the store given")
	}
}

func is[I any](t transport.Transport) bool {
	_, ok := t.(I)
	return ok
}

func openSQLite(t *testing.T) transport.Transport {
	t.Helper()
	u := &url.URL{Scheme: "sqlite", Opaque: url.PathEscape(filepath.Join(t.TempDir(), "state.db"))}
	st, err := transport.Open(bg, u, transport.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// A transport built by New runs tasks through a result store it was
// given, and leaves that store open when it closes; it does not modify
// the client properties it was given.
func TestNewWithResultStore(t *testing.T) {
	store := openSQLite(t)
	defer store.Close()
	props := amqp091.Table{"application": "docket-test"}
	tr, err := amqp.New(bg, amqp.Config{URL: freshURL(t, ""), ResultStore: store, AMQP: amqp091.Config{Properties: props}})
	if err != nil {
		t.Fatal(err)
	}
	if len(props) != 1 {
		t.Errorf("the properties given were modified: %v", props)
	}
	q, err := docket.New(tr)
	if err != nil {
		t.Fatal(err)
	}
	task := docket.NewTask("new.double", func(ctx context.Context, v int) (int, error) { return 2 * v, nil })
	q.Register(task)
	r, err := task.Enqueue(bg, q, 21)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(bg)
	done := make(chan struct{})
	go func() {
		defer close(done)
		q.Run(ctx)
	}()
	wctx, cancel := context.WithTimeout(bg, 30*time.Second)
	defer cancel()
	if v, err := r.Wait(wctx); err != nil || v != 42 {
		t.Fatalf("Wait = %v, %v", v, err)
	}
	stop()
	<-done
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	// The store outlives the transport, and holds the result.
	in, err := store.Get(bg, transport.GetParams{Now: time.Now(), ID: r.ID()})
	if err != nil || in.State != transport.StateSucceeded {
		t.Fatalf("the store after the transport closed: %v, %v", in.State, err)
	}
}
