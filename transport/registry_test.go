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
		"redis://s1:26379/0?master_name=m&password=S3CR3T&sentinel_password=S3CR3T2": "redis://s1:26379/0?master_name=m&password=xxxxx&sentinel_password=xxxxx",
	} {
		u, _ := url.Parse(raw)
		if got := Redact(u); got != want {
			t.Errorf("Redact(%q) = %q, want %q", raw, got, want)
		}
	}
	u, _ := url.Parse("redis://:a@h/0?password=b&sentinel_password=c&prefix=d")
	if got := strings.Join(Passwords(u), " "); got != "a b c" && got != "a c b" {
		t.Errorf("Passwords = %q, want a, b and c", got)
	}
}
