package dsn

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"

	"github.com/sluice-mta/sluice/proto/sluicev1"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

var (
	received = time.Date(2026, 3, 1, 9, 30, 0, 0, time.UTC)
	created  = time.Date(2026, 3, 1, 9, 45, 12, 0, time.UTC)
	expires  = time.Date(2026, 3, 6, 9, 30, 0, 0, time.UTC)
)

const originalHeaders = "Received: from client.example.com (client.example.com [192.0.2.7])\r\n" +
	"\tby mx.sluice.test (Sluice) with ESMTP id 01ABCDEFGHJKMNPQRSTVWXYZ;\r\n" +
	"\tSun, 01 Mar 2026 09:30:00 +0000\r\n" +
	"From: Alice <alice@example.com>\r\n" +
	"To: bob@example.org, carol@example.org\r\n" +
	"Subject: Quarterly report\r\n" +
	"Message-ID: <q1@example.com>\r\n" +
	"\r\n"

func params() Params {
	return Params{
		Hostname:   "mx.sluice.test",
		Postmaster: "postmaster@sluice.test",
		Date:       time.Date(2026, 3, 1, 9, 45, 13, 0, time.UTC),
		MessageID:  "01DSNDSNDSNDSNDSNDSNDSN0@mx.sluice.test",
		Boundary:   "=_sluice-01DSNDSNDSNDSNDSNDSNDSN0",
	}
}

func job() *sluicev1.Job {
	return &sluicev1.Job{
		Schema:           1,
		JobId:            "01ABCDEFGHJKMNPQRSTVWXYZ-0",
		QueueId:          "01ABCDEFGHJKMNPQRSTVWXYZ",
		MailFrom:         "alice@example.com",
		Domain:           "example.org",
		Attempt:          3,
		ReceivedUnixNano: received.UnixNano(),
		ExpiresUnixNano:  expires.UnixNano(),
		Envid:            "Q1 report+v2",
		Recipients: []*sluicev1.Recipient{
			{Address: "bob@example.org", Orcpt: "rfc822;Bob@Example.org"},
			{Address: "carol@example.org"},
		},
	}
}

func failed() *sluicev1.Bounce {
	return &sluicev1.Bounce{
		Schema: 1,
		Job:    job(),
		Kind:   sluicev1.BounceKind_BOUNCE_KIND_FAILED,
		Recipients: []*sluicev1.RecipientResult{
			{
				Address: "bob@example.org", Outcome: sluicev1.Outcome_OUTCOME_PERMANENT,
				Reason: sluicev1.Reason_REASON_REMOTE, Code: 550, EnhancedCode: "5.1.1",
				Text: "<bob@example.org>: Recipient address rejected: User unknown", RemoteHost: "mx1.example.org",
				Orcpt: "rfc822;Bob@Example.org",
			},
			{
				Address: "carol@example.org", Outcome: sluicev1.Outcome_OUTCOME_TEMPORARY,
				Reason: sluicev1.Reason_REASON_EXPIRED, Text: "message expired after 5 days in the queue; last error: connection refused",
			},
		},
		OriginalHeaders: []byte(originalHeaders),
		CreatedUnixNano: created.UnixNano(),
	}
}

func delayed() *sluicev1.Bounce {
	b := failed()
	b.Kind = sluicev1.BounceKind_BOUNCE_KIND_DELAYED
	b.Recipients = []*sluicev1.RecipientResult{{
		Address: "carol@example.org", Outcome: sluicev1.Outcome_OUTCOME_TEMPORARY,
		Reason: sluicev1.Reason_REASON_REMOTE, Code: 451, EnhancedCode: "4.7.1",
		Text: "Greylisted, please try again later", RemoteHost: "mx2.example.org", Notify: uint32(sluicev1.Notify_NOTIFY_DELAY),
	}}
	return b
}

func delivered() *sluicev1.Bounce {
	b := failed()
	b.Kind = sluicev1.BounceKind_BOUNCE_KIND_DELIVERED
	b.Job.Envid = ""
	b.Recipients = []*sluicev1.RecipientResult{{
		Address: "bob@example.org", Outcome: sluicev1.Outcome_OUTCOME_DELIVERED,
		Code: 250, EnhancedCode: "2.0.0", Text: "Ok: queued as 4Q1x", RemoteHost: "mx1.example.org",
		Notify: uint32(sluicev1.Notify_NOTIFY_SUCCESS), Orcpt: "rfc822;Bob@Example.org",
	}}
	return b
}

func TestGolden(t *testing.T) {
	for _, tc := range []struct {
		name   string
		bounce *sluicev1.Bounce
	}{
		{"failed", failed()},
		{"delayed", delayed()},
		{"delivered", delivered()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Write(tc.bounce, params())
			if err != nil {
				t.Fatal(err)
			}
			checkWire(t, got)
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("output differs from %s (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
			}
		})
	}
}

// checkWire asserts the 7bit and CRLF rules on a whole DSN.
func checkWire(t *testing.T, b []byte) {
	t.Helper()
	for i, c := range b {
		if c >= 0x80 || c == 0 {
			t.Fatalf("octet %#x at %d is not 7bit", c, i)
		}
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			t.Fatalf("bare LF at %d", i)
		}
		if c == '\r' && (i+1 == len(b) || b[i+1] != '\n') {
			t.Fatalf("bare CR at %d", i)
		}
	}
	for n, line := range strings.Split(string(b), "\r\n") {
		if len(line) > 998 {
			t.Fatalf("line %d is %d octets long", n+1, len(line))
		}
	}
}

// report is a DSN read back with a MIME parser.
type report struct {
	header     message.Header
	reportType string
	human      string
	perMessage textproto.Header
	recipients []textproto.Header
	quoted     string
}

func parse(t *testing.T, raw []byte) report {
	t.Helper()
	e, err := message.Read(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("parse DSN: %v", err)
	}
	var r report
	r.header = e.Header
	mt, params, err := e.Header.ContentType()
	if err != nil || mt != "multipart/report" {
		t.Fatalf("Content-Type = %q, %v; want multipart/report", mt, err)
	}
	r.reportType = params["report-type"]
	mr := e.MultipartReader()
	if mr == nil {
		t.Fatal("not multipart")
	}
	var types []string
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("next part: %v", err)
		}
		ct, _, _ := p.Header.ContentType()
		types = append(types, ct)
		body, err := io.ReadAll(p.Body) // decodes the transfer encoding
		if err != nil {
			t.Fatalf("read part %s: %v", ct, err)
		}
		switch ct {
		case "text/plain":
			r.human = string(body)
		case "message/delivery-status":
			br := bufio.NewReader(bytes.NewReader(body))
			h, err := textproto.ReadHeader(br)
			if err != nil {
				t.Fatalf("per-message fields: %v", err)
			}
			r.perMessage = h
			for {
				if _, err := br.Peek(1); err == io.EOF {
					break
				}
				h, err := textproto.ReadHeader(br)
				if err != nil {
					t.Fatalf("per-recipient fields: %v", err)
				}
				r.recipients = append(r.recipients, h)
			}
		case "text/rfc822-headers":
			r.quoted = string(body)
		}
	}
	want := []string{"text/plain", "message/delivery-status", "text/rfc822-headers"}
	if strings.Join(types, ",") != strings.Join(want, ",") {
		t.Fatalf("parts %v, want %v", types, want)
	}
	return r
}

func TestParsesAsDeliveryStatus(t *testing.T) {
	raw, err := Write(failed(), params())
	if err != nil {
		t.Fatal(err)
	}
	r := parse(t, raw)
	if r.reportType != "delivery-status" {
		t.Errorf("report-type = %q", r.reportType)
	}
	for k, want := range map[string]string{
		"From":           "Mail Delivery System <MAILER-DAEMON@mx.sluice.test>",
		"To":             "<alice@example.com>",
		"Subject":        "Undelivered Mail Returned to Sender",
		"Auto-Submitted": "auto-replied",
		"MIME-Version":   "1.0",
		"Message-Id":     "<01DSNDSNDSNDSNDSNDSNDSN0@mx.sluice.test>",
	} {
		if got := r.header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if got := r.perMessage.Get("Reporting-MTA"); got != "dns; mx.sluice.test" {
		t.Errorf("Reporting-MTA = %q", got)
	}
	if got := r.perMessage.Get("Original-Envelope-Id"); got != "Q1+20report+2Bv2" {
		t.Errorf("Original-Envelope-Id = %q, want the xtext form", got)
	}
	if got := r.perMessage.Get("Arrival-Date"); got != "Sun, 01 Mar 2026 09:30:00 +0000" {
		t.Errorf("Arrival-Date = %q", got)
	}
	if len(r.recipients) != 2 {
		t.Fatalf("%d recipient blocks, want 2", len(r.recipients))
	}
	want := []map[string]string{
		{
			"Original-Recipient": "rfc822;Bob@Example.org",
			"Final-Recipient":    "rfc822; bob@example.org",
			"Action":             "failed",
			"Status":             "5.1.1",
			"Remote-MTA":         "dns; mx1.example.org",
			"Diagnostic-Code":    "smtp; 550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown",
			"Last-Attempt-Date":  "Sun, 01 Mar 2026 09:45:12 +0000",
		},
		{
			"Original-Recipient": "",
			"Final-Recipient":    "rfc822; carol@example.org",
			"Action":             "failed",
			"Status":             "4.4.7",
			"Remote-MTA":         "",
			"Diagnostic-Code":    "X-Sluice; expired: message expired after 5 days in the queue; last error: connection refused",
			"Will-Retry-Until":   "",
		},
	}
	for i, fields := range want {
		for k, v := range fields {
			if got := unfold(r.recipients[i].Get(k)); got != v {
				t.Errorf("recipient %d %s = %q, want %q", i, k, got, v)
			}
		}
	}
	if !strings.Contains(r.quoted, "Subject: Quarterly report\r\n") || !strings.Contains(r.quoted, "Message-ID: <q1@example.com>\r\n") {
		t.Errorf("quoted headers lack the original Subject and Message-ID:\n%s", r.quoted)
	}
	if !strings.Contains(r.human, "host mx1.example.org said: 550 5.1.1") {
		t.Errorf("explanation lacks the remote reply:\n%s", r.human)
	}
}

func TestDelayedAndDelivered(t *testing.T) {
	raw, err := Write(delayed(), params())
	if err != nil {
		t.Fatal(err)
	}
	r := parse(t, raw)
	if got := r.header.Get("Subject"); got != "Delayed Mail (still being retried)" {
		t.Errorf("Subject = %q", got)
	}
	rc := r.recipients[0]
	if rc.Get("Action") != "delayed" || rc.Get("Status") != "4.7.1" || rc.Get("Will-Retry-Until") != "Fri, 06 Mar 2026 09:30:00 +0000" {
		t.Errorf("delayed recipient: Action %q Status %q Will-Retry-Until %q", rc.Get("Action"), rc.Get("Status"), rc.Get("Will-Retry-Until"))
	}

	raw, err = Write(delivered(), params())
	if err != nil {
		t.Fatal(err)
	}
	r = parse(t, raw)
	rc = r.recipients[0]
	if r.header.Get("Subject") != "Successful Mail Delivery Report" || rc.Get("Action") != "delivered" || rc.Get("Status") != "2.0.0" {
		t.Errorf("delivered: Subject %q Action %q Status %q", r.header.Get("Subject"), rc.Get("Action"), rc.Get("Status"))
	}
	if r.perMessage.Has("Original-Envelope-Id") {
		t.Error("Original-Envelope-Id present without ENVID")
	}
}

func TestStatusDefaults(t *testing.T) {
	for _, tc := range []struct {
		kind   sluicev1.BounceKind
		code   string
		reason sluicev1.Reason
		want   string
	}{
		{sluicev1.BounceKind_BOUNCE_KIND_FAILED, "", sluicev1.Reason_REASON_REMOTE, "5.0.0"},
		{sluicev1.BounceKind_BOUNCE_KIND_FAILED, "2.0.0", sluicev1.Reason_REASON_REMOTE, "5.0.0"},
		{sluicev1.BounceKind_BOUNCE_KIND_FAILED, "5.7.26", sluicev1.Reason_REASON_REMOTE, "5.7.26"},
		{sluicev1.BounceKind_BOUNCE_KIND_FAILED, "", sluicev1.Reason_REASON_EXPIRED, "4.4.7"},
		{sluicev1.BounceKind_BOUNCE_KIND_FAILED, "5.1.1x", sluicev1.Reason_REASON_REMOTE, "5.0.0"},
		{sluicev1.BounceKind_BOUNCE_KIND_DELAYED, "", sluicev1.Reason_REASON_DNS, "4.0.0"},
		{sluicev1.BounceKind_BOUNCE_KIND_DELAYED, "5.1.1", sluicev1.Reason_REASON_REMOTE, "4.0.0"},
		{sluicev1.BounceKind_BOUNCE_KIND_DELIVERED, "", 0, "2.0.0"},
		{sluicev1.BounceKind_BOUNCE_KIND_DELIVERED, "2.6.0", 0, "2.6.0"},
	} {
		b := &sluicev1.Bounce{Kind: tc.kind}
		if got := statusCode(b, &sluicev1.RecipientResult{EnhancedCode: tc.code, Reason: tc.reason}); got != tc.want {
			t.Errorf("%v code %q reason %v: Status %q, want %q", tc.kind, tc.code, tc.reason, got, tc.want)
		}
	}
}

func TestInjectionAndEightBit(t *testing.T) {
	b := failed()
	b.Recipients[0].Text = "rejected\r\nBcc: victim@example.net\r\n\r\n--=_sluice-01DSNDSNDSNDSNDSNDSNDSN0--\r\nnaïve \\ \x00 end"
	b.Recipients[0].RemoteHost = "mx1.example.org\r\nX-Evil: 1"
	b.Recipients[1].Address = "josé@exämple.org"
	b.Job.Envid = "id\r\nX-Evil: 2"
	b.OriginalHeaders = []byte("Subject: caf\xc3\xa9 \xff\r\nFrom: a@b\r\n\r\nbody line that must not be quoted\r\n")
	raw, err := Write(b, params())
	if err != nil {
		t.Fatal(err)
	}
	checkWire(t, raw)
	for _, line := range strings.Split(string(raw), "\r\n") {
		for _, evil := range []string{"Bcc:", "X-Evil:"} {
			if strings.HasPrefix(line, evil) {
				t.Errorf("injected field %q reached the output", line)
			}
		}
	}
	r := parse(t, raw)
	if !strings.Contains(r.header.Get("Content-Type"), `boundary="=_sluice-01DSNDSNDSNDSNDSNDSNDSN0-1"`) {
		t.Errorf("boundary was not changed after a collision: %s", r.header.Get("Content-Type"))
	}
	if got := unfold(r.recipients[0].Get("Diagnostic-Code")); !strings.Contains(got, `na\x{EF}ve \x{5C} \x{00} end`) {
		t.Errorf("Diagnostic-Code %q: want non-ASCII, backslash and NUL escaped", got)
	}
	if got := r.recipients[1].Get("Final-Recipient"); got != `utf-8; jos\x{E9}@ex\x{E4}mple.org` {
		t.Errorf("Final-Recipient = %q", got)
	}
	if got := r.perMessage.Get("Original-Envelope-Id"); got != "id+0D+0AX-Evil:+202" {
		t.Errorf("Original-Envelope-Id = %q", got)
	}
	// The 8-bit header section travels quoted-printable and decodes back.
	if !strings.Contains(r.quoted, "Subject: caf\xc3\xa9 \xff\r\n") || strings.Contains(r.quoted, "body line") {
		t.Errorf("quoted headers = %q", r.quoted)
	}
}

func TestShortensQuotedHeadersToFit(t *testing.T) {
	b := failed()
	var h strings.Builder
	for i := 0; i < 200; i++ {
		h.WriteString("X-Filler: " + strings.Repeat("x", 60) + "\r\n")
	}
	b.OriginalHeaders = []byte("Subject: first\r\n" + h.String())
	full, err := Write(b, params())
	if err != nil {
		t.Fatal(err)
	}
	p := params()
	p.MaxBytes = 6000
	raw, err := Write(b, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(full) <= p.MaxBytes || len(raw) > p.MaxBytes {
		t.Fatalf("full %d octets, shortened %d, limit %d", len(full), len(raw), p.MaxBytes)
	}
	r := parse(t, raw)
	if !strings.HasPrefix(r.quoted, "Subject: first\r\n") {
		t.Errorf("the first header fields should be kept: %q", r.quoted[:40])
	}
	if !strings.Contains(r.human, "shortened") {
		t.Error("the explanation does not say the headers were shortened")
	}
}

func TestRefusesImpossibleReports(t *testing.T) {
	b := failed()
	b.Job.MailFrom = ""
	if _, err := Write(b, params()); !errors.Is(err, ErrNullSender) {
		t.Errorf("null sender: %v", err)
	}
	b = failed()
	b.Recipients = nil
	if _, err := Write(b, params()); !errors.Is(err, ErrNoRecipients) {
		t.Errorf("no recipients: %v", err)
	}
	b = failed()
	b.Kind = sluicev1.BounceKind_BOUNCE_KIND_UNSPECIFIED
	if _, err := Write(b, params()); !errors.Is(err, ErrKind) {
		t.Errorf("unspecified kind: %v", err)
	}
	p := params()
	p.Hostname = "mx.example\r\nX: y"
	if _, err := Write(failed(), p); err == nil {
		t.Error("accepted a host name with CR LF")
	}
}

func unfold(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
