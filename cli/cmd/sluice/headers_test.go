package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	msgdkim "github.com/emersion/go-msgauth/dkim"
	"github.com/nats-io/nats.go/micro"

	"github.com/sluice-mta/sluice/cli/headers"
	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/dnstest"
	"github.com/sluice-mta/sluice/services/natstest"
)

var updateHeaders = flag.Bool("update-headers", false, "rewrite testdata/headers/*.golden")

// TestHeadersGolden runs `sluice headers -offline` on real-world-shaped
// messages: a relay through Sluice, skewed clocks, missing dates, Exchange
// Online, a DSN, ten hops, and malformed fields.
func TestHeadersGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/headers/*.eml")
	if len(files) < 6 {
		t.Fatalf("%d test messages", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			code, out, errOut := diagRun("headers", "-offline", f)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			golden := strings.TrimSuffix(f, ".eml") + ".golden"
			if *updateHeaders {
				if err := os.WriteFile(golden, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run TestHeadersGolden -update-headers)", err)
			}
			if out != string(want) {
				t.Errorf("output differs from %s:\n%s", golden, out)
			}
		})
	}
}

// TestHeadersLiveDKIM verifies signatures through a DNS server: one good,
// one whose body was changed after signing, one whose key is missing.
func TestHeadersLiveDKIM(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	msg := "From: a@example.org\r\nTo: b@example.net\r\nSubject: signed\r\nDate: Mon, 2 Jun 2025 10:00:00 +0000\r\n\r\nHello.\r\n"
	sign := func(selector, m string) string {
		var b bytes.Buffer
		if err := msgdkim.Sign(&b, strings.NewReader(m), &msgdkim.SignOptions{Domain: "example.org", Selector: selector, Signer: priv}); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	dns := dnstest.Start(t)
	dns.MustAdd(t, `good._domainkey.example.org. 60 IN TXT "v=DKIM1; k=ed25519; p=`+base64.StdEncoding.EncodeToString(pub)+`"`)
	dir := t.TempDir()
	good := sign("good", msg)
	tampered := strings.Replace(good, "Hello.", "Hello!", 1)
	missing := sign("gone", msg)
	for name, c := range map[string]struct{ msg, want string }{
		"good":     {good, "pass"},
		"tampered": {tampered, "fail: body hash did not verify"},
		"missing":  {missing, "permerror: no key for signature"},
	} {
		path := filepath.Join(dir, name+".eml")
		os.WriteFile(path, []byte(c.msg), 0o644)
		code, out, errOut := diagRun("headers", "-json", "-dns", dns.Addr, "-timeout", "1s", path)
		var rep headers.Report
		if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 0 {
			t.Fatalf("%s: exit %d %v %s", name, code, err, errOut)
		}
		if len(rep.DKIM) != 1 || !strings.HasPrefix(rep.DKIM[0].Result, c.want) {
			t.Errorf("%s: %+v, want %s", name, rep.DKIM, c.want)
		}
	}
}

// TestHeadersTraceID asks the queue API for the trace id of our hop; with
// nothing answering, it says how to get it.
func TestHeadersTraceID(t *testing.T) {
	ns := natstest.Start(t)
	nc, _ := ns.Connect(t)
	path := "testdata/headers/sluice_relay.eml"

	code, out, _ := diagRun("headers", "-server", ns.ClientURL(), "-timeout", "500ms", "-dns", "127.0.0.1:1", path)
	if code != 0 || !strings.Contains(out, "trace id: not in the message; `sluice queue show 0634R5Y2WQ7ZK8N3D1HFXM6T` prints it (no answer from sluice-scheduler within 500ms") {
		t.Fatalf("without a scheduler (exit %d):\n%s", code, out)
	}

	// A stand-in for the scheduler's queue API, on its documented subject.
	svc, err := micro.AddService(nc, micro.Config{Name: wire.SchedulerService, Version: "0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop()
	var asked string
	err = svc.AddGroup(wire.AdminQueuePrefix).AddEndpoint(wire.AdminShow, micro.HandlerFunc(func(r micro.Request) {
		var req admin.QueueIDRequest
		json.Unmarshal(r.Data(), &req)
		asked = req.ID
		r.RespondJSON(admin.QueueShowResponse{Jobs: []admin.QueueJob{{QueueID: req.ID, TraceID: "4bf92f3577b34da6a3ce929d0e0e4736"}}})
	}))
	if err != nil {
		t.Fatal(err)
	}
	// The endpoint's subscription must reach the server before the CLI,
	// on its own connection, asks it.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	code, out, _ = diagRun("headers", "-server", ns.ClientURL(), "-dns", "127.0.0.1:1", "-timeout", "2s", path)
	if code != 0 || asked != "0634R5Y2WQ7ZK8N3D1HFXM6T" || !strings.Contains(out, "trace id 4bf92f3577b34da6a3ce929d0e0e4736 (from sluice-scheduler)") {
		t.Fatalf("with a scheduler (exit %d, asked %q):\n%s", code, asked, out)
	}
}

func TestHeadersInput(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"headers", "-offline"}, strings.NewReader("Received: by x; Mon, 2 Jun 2025 10:00:00 +0000\r\n\r\n"), &out, &errOut); code != 0 ||
		!strings.Contains(out.String(), "Received hops, first to last (1)") {
		t.Fatalf("stdin: %d %s %s", code, out.String(), errOut.String())
	}
	if code, _, errOut := diagRun("headers", "-offline", "/nonexistent.eml"); code != 1 || !strings.Contains(errOut, "no such file") {
		t.Fatalf("missing file: %d %s", code, errOut)
	}
	if code, _, _ := diagRun("headers", "a", "b"); code != 2 {
		t.Fatalf("two files: exit %d", code)
	}
	if code, out, _ := diagRun("headers", "-offline", "/dev/null"); code != 1 || !strings.Contains(out, "no header fields found") {
		t.Fatalf("empty input: %d %s", code, out)
	}
}
