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
	"time"

	msgdkim "github.com/emersion/go-msgauth/dkim"
	"github.com/nats-io/nats.go/micro"

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

// TestHeadersFacts checks the analysis itself on the golden messages, so a
// wrong golden file cannot hide a wrong answer.
func TestHeadersFacts(t *testing.T) {
	read := func(name string) headersReport {
		raw, err := os.ReadFile("testdata/headers/" + name)
		if err != nil {
			t.Fatal(err)
		}
		return analyse(raw)
	}
	r := read("skewed_clocks.eml")
	if len(r.Hops) != 5 || !r.Hops[3].Skew || *r.Hops[3].Delay != -208*time.Second || r.Slowest != 3 || r.Hops[4].Date.UTC().Hour() != 12 {
		t.Errorf("skewed: %+v", r.Hops)
	}
	r = read("missing_dates.eml")
	if r.Hops[1].Date.IsZero() != true || r.Hops[3].DelayFrom != 1 || *r.Hops[3].Delay != 7*time.Minute+time.Second || !r.Date.IsZero() {
		t.Errorf("missing dates: %+v", r.Hops)
	}
	r = read("sluice_relay.eml")
	if len(r.Sluice) != 1 || r.Sluice[0].QueueID != "0634R5Y2WQ7ZK8N3D1HFXM6T" || r.Sluice[0].Hop != 2 || !r.Hops[0].TLS || r.Hops[2].TLS {
		t.Errorf("sluice: %+v %+v", r.Sluice, r.Hops)
	}
	r = read("exchange_online.eml")
	if !r.Hops[2].TLS || r.Hops[0].FromAddr != "2001:db8:4:5::20" || r.Hops[1].From != "" || len(r.Auth[0].Results) != 4 {
		t.Errorf("exchange: %+v %+v", r.Hops, r.Auth)
	}
	r = read("dsn_bounce.eml")
	if r.DSN == nil || len(r.DSN.Recipients) != 2 || r.DSN.Recipients[0][2] != "Status: 5.1.1" {
		t.Errorf("dsn: %+v", r.DSN)
	}
}

func TestParseReceivedForms(t *testing.T) {
	for _, c := range []struct {
		in                       string
		from, addr, by, with, id string
		tls, sluice, dated       bool
	}{
		{"from a.example (a.example [192.0.2.1]) by b.example (Sluice) with ESMTPS id Q1 for <x@y>; Mon, 02 Jun 2025 10:00:00 +0000",
			"a.example", "192.0.2.1", "b.example", "ESMTPS", "Q1", true, true, true},
		{"FROM a BY b WITH esmtpsa ID 7; 2 Jun 2025 10:00:00 -0000", "a", "", "b", "esmtpsa", "7", true, false, true},
		{"from x ([IPv6:2001:db8::1]) by y with ESMTP (Exim 4.97) (TLS1.3) tls TLS_AES_256_GCM_SHA384 id 1; Mon, 2 Jun 2025 10:00:00 +0100 (BST)",
			"x", "2001:db8::1", "y", "ESMTP tls TLS_AES_256_GCM_SHA384", "1", true, false, true},
		{"by y", "", "", "y", "", "", false, false, false},
		{"", "", "", "", "", "", false, false, false},
	} {
		h := parseReceived(c.in)
		if h.From != c.from || h.FromAddr != c.addr || h.By != c.by || h.With != c.with || h.ID != c.id ||
			h.TLS != c.tls || h.Sluice != c.sluice || h.Date.IsZero() == c.dated {
			t.Errorf("%q:\n got %+v", c.in, h)
		}
	}
}

// FuzzParseReceived: any input gives an answer, never a panic or a hang,
// and the analysis of a whole message built around it survives too. The
// seed corpus is testdata/fuzz/FuzzParseReceived plus every Received field
// of the golden messages.
func FuzzParseReceived(f *testing.F) {
	files, _ := filepath.Glob("testdata/headers/*.eml")
	for _, file := range files {
		raw, _ := os.ReadFile(file)
		fields, _, _ := splitHeader(raw)
		for _, fl := range fields {
			if strings.EqualFold(fl.Name, "Received") {
				f.Add(fl.Value)
			}
		}
	}
	f.Add("from (((( by ))))")
	f.Add("from \"quoted \\\" by\" by x; ;;;")
	f.Fuzz(func(t *testing.T, v string) {
		h := parseReceived(v)
		if h.Sluice && !strings.Contains(strings.ToLower(v), "sluice") {
			t.Fatalf("Sluice hop without the word: %q", v)
		}
		msg := "Received: " + strings.ReplaceAll(v, "\n", "\n ") + "\r\nDate: " + v + "\r\nSubject: x\r\n\r\nbody\r\n"
		_ = analyse([]byte(msg))
	})
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
		var rep headersReport
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
