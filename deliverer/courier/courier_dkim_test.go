package courier

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	msgdkim "github.com/emersion/go-msgauth/dkim"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/sluice-mta/sluice/deliverer/dkim"
	"github.com/sluice-mta/sluice/deliverer/mx"
	"github.com/sluice-mta/sluice/deliverer/smtpclient"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/services/capture"
)

func newCourier(t *testing.T, route string, opts ...Option) *Courier {
	t.Helper()
	res, err := mx.New(mx.Config{Server: "127.0.0.1:1", Routes: map[string]string{"example.net": route}})
	if err != nil {
		t.Fatal(err)
	}
	d, err := smtpclient.New(smtpclient.Config{Hostname: "mta.example.com", ConnectTimeout: 2 * time.Second, CommandTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return New(res, d, noop.NewTracerProvider().Tracer(""), opts...)
}

const message = "From: <alice@example.com>\r\nTo: <bob@example.net>\r\nSubject: signed\r\n" +
	"Date: Mon, 2 Jun 2025 10:00:00 +0000\r\n\r\nbody\r\n"

func job() *sluicev1.Job {
	return &sluicev1.Job{Domain: "example.net", MailFrom: "alice@example.com", BodySize: int64(len(message)),
		Recipients: []*sluicev1.Recipient{{Address: "bob@example.net"}}}
}

// TestDeliverSignsWithDKIM delivers through a real SMTP server and verifies
// the signature it received against the key's published record.
func TestDeliverSignsWithDKIM(t *testing.T) {
	srv, err := capture.Listen("127.0.0.1:0", capture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	key := &dkim.Key{Domain: "example.com", Selector: "s1", Signer: priv}
	c := newCourier(t, srv.Addr, WithSigner(dkim.NewSigner([]*dkim.Key{key}, dkim.Options{})))

	res := c.Deliver(context.Background(), job(), strings.NewReader(message))
	if res[0].Outcome != sluicev1.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("outcome %v: %s", res[0].Outcome, res[0].Text)
	}
	got := srv.Messages()[0].Data
	if !bytes.HasPrefix(got, []byte("DKIM-Signature:")) || !bytes.HasSuffix(got, []byte(message)) {
		t.Fatalf("received:\n%s", got)
	}
	vs, err := msgdkim.VerifyWithOptions(bytes.NewReader(got), &msgdkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
		if name == key.RecordName() {
			return []string{key.Record()}, nil
		}
		return nil, &net.DNSError{IsNotFound: true, Name: name, Err: "no such host"}
	}})
	if err != nil || len(vs) != 1 || vs[0].Err != nil {
		t.Fatalf("verification: %v %+v", err, vs)
	}
}

type brokenBody struct{}

func (brokenBody) Read([]byte) (int, error) { return 0, errors.New("object store went away") }

// TestDeliverDefersWhenTheBodyCannotBeSigned: unsigned mail could fail
// DMARC, so a body that cannot be read for signing is a temporary failure.
func TestDeliverDefersWhenTheBodyCannotBeSigned(t *testing.T) {
	srv, err := capture.Listen("127.0.0.1:0", capture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	c := newCourier(t, srv.Addr, WithSigner(dkim.NewSigner([]*dkim.Key{{Domain: "example.com", Selector: "s1", Signer: priv}}, dkim.Options{})))
	res := c.Deliver(context.Background(), job(), io.MultiReader(strings.NewReader("From: a@example.com\r\n"), brokenBody{}))
	r := res[0]
	if r.Outcome != sluicev1.Outcome_OUTCOME_TEMPORARY || r.Code != 451 || r.EnhancedCode != "4.3.0" || srv.Count() != 0 {
		t.Fatalf("outcome %v %d %s %q, %d delivered", r.Outcome, r.Code, r.EnhancedCode, r.Text, srv.Count())
	}
}

// TestDeliverWithoutKeysSendsUnchanged: an empty signer is no signer.
func TestDeliverWithoutKeysSendsUnchanged(t *testing.T) {
	srv, err := capture.Listen("127.0.0.1:0", capture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c := newCourier(t, srv.Addr, WithSigner(dkim.NewSigner(nil, dkim.Options{})), WithSigner(nil))
	if res := c.Deliver(context.Background(), job(), strings.NewReader(message)); res[0].Outcome != sluicev1.Outcome_OUTCOME_DELIVERED {
		t.Fatal(res[0].Text)
	}
	if got := string(srv.Messages()[0].Data); got != message {
		t.Fatalf("received %q", got)
	}
}
