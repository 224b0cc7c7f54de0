package amqp_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docketq/docket"
	"github.com/docketq/docket/internal/amqptest"
)

// TestTLSVerifiesByDefault: an amqps:// URL verifies the broker's
// certificate against the system's roots. A broker whose certificate comes
// from a CA the process does not trust is refused with the reason; the same
// URL works once the CA is trusted (SSL_CERT_FILE, read by Go's crypto/x509
// at the first use of the system roots, so in a child process), and a task
// makes the round trip over TLS.
func TestTLSVerifiesByDefault(t *testing.T) {
	if url := os.Getenv("DOCKET_AMQP_TEST_TLS_URL"); url != "" {
		tlsRoundTrip(t, url)
		return
	}
	dir := t.TempDir()
	ca := writeTestPKI(t, dir)
	tlsPort := amqptest.FreePort(t)
	amqptest.StartNode(t, "", 30*time.Minute,
		fmt.Sprintf("listeners.ssl.default = 127.0.0.1:%d", tlsPort),
		"ssl_options.cacertfile = "+ca,
		"ssl_options.certfile = "+filepath.Join(dir, "server.pem"),
		"ssl_options.keyfile = "+filepath.Join(dir, "server.key"),
		"ssl_options.verify = verify_none",
		"ssl_options.fail_if_no_peer_cert = false",
	)
	url := fmt.Sprintf("amqps://guest:guest@localhost:%d/?prefix=tls", tlsPort)

	ctx, cancel := context.WithTimeout(bg, 20*time.Second)
	defer cancel()
	err := func() error {
		q, err := docket.Open(ctx, url)
		if err != nil {
			return err
		}
		defer q.Close()
		_, err = docket.NewTask("tls.echo", func(ctx context.Context, s string) (string, error) { return s, nil }).Enqueue(ctx, q, "x")
		return err
	}()
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a broker with an untrusted certificate: err = %v, want a certificate error", err)
	}
	t.Logf("untrusted: %v", err)
	if strings.Contains(err.Error(), "guest:guest") {
		t.Errorf("the error shows the password: %v", err)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestTLSVerifiesByDefault$", "-test.v")
	cmd.Env = append(os.Environ(), "DOCKET_AMQP_TEST_TLS_URL="+url, "SSL_CERT_FILE="+ca)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestTLSVerifiesByDefault") {
		t.Fatalf("with the CA trusted: %v\n%s", err, out)
	}
}

// tlsRoundTrip runs a task over url and checks its result.
func tlsRoundTrip(t *testing.T, url string) {
	ctx, cancel := context.WithTimeout(bg, 30*time.Second)
	defer cancel()
	q, err := docket.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	echo := docket.NewTask("tls.echo", func(ctx context.Context, s string) (string, error) { return s + "!", nil })
	q.Register(echo)
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- q.Run(rctx) }()
	defer func() { stop(); <-done }()
	r, err := echo.Enqueue(ctx, q, "over tls")
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.Wait(ctx)
	if err != nil || got != "over tls!" {
		t.Fatalf("result %q, %v", got, err)
	}
}

// writeTestPKI writes a CA and a server certificate for localhost and
// 127.0.0.1 signed by it into dir, and returns the CA's file.
func writeTestPKI(t *testing.T, dir string) string {
	t.Helper()
	write := func(name, kind string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "docket test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca := write("ca.pem", "CERTIFICATE", caDER)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caTmpl, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	write("server.pem", "CERTIFICATE", der)
	write("server.key", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key))
	return ca
}
