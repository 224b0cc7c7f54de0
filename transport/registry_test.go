package transport

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestUnknownSchemeNamesTheImport(t *testing.T) {
	u, _ := url.Parse("nats://localhost")
	_, err := Open(context.Background(), u, Config{})
	var use *UnknownSchemeError
	if !errors.As(err, &use) || use.Scheme != "nats" {
		t.Fatalf("Open(nats) = %v", err)
	}
	e := &UnknownSchemeError{Scheme: "redis", Package: knownPackages["redis"]}
	if !strings.Contains(e.Error(), `import _ "github.com/docketq/docket/transport/redis"`) {
		t.Fatalf("error does not name the import: %s", e)
	}
}

func TestRedact(t *testing.T) {
	for raw, want := range map[string]string{
		"redis://:S3CR3T@h:6379/0":     "redis://:xxxxx@h:6379/0",
		"amqp://user:S3CR3T@h:5672/vh": "amqp://user:xxxxx@h:5672/vh",
		"sqlite:a.db":                  "sqlite:a.db",
	} {
		u, _ := url.Parse(raw)
		if got := Redact(u); got != want {
			t.Errorf("Redact(%q) = %q, want %q", raw, got, want)
		}
	}
}
