package tlsrpt

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	stdlog "log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
	"github.com/sluice-mta/sluice/services/dnstest"
	"github.com/sluice-mta/sluice/services/natstest"
	"github.com/sluice-mta/sluice/services/streams"
)

// world is what a reporter works with: an embedded JetStream with
// SLUICE_MSGS and the TLS-RPT bucket holding example.test's counts of
// 2026-03-01 (those of TestSendDay), a DNS server for the TLS-RPT records
// and a log the test reads.
type world struct {
	js  jetstream.JetStream
	kv  jetstream.KeyValue
	dns *dnstest.Server
	cfg Config
	log *logBuffer
	now time.Time
}

func newWorld(t *testing.T) *world {
	t.Helper()
	ns := natstest.Start(t)
	_, js := ns.Connect(t)
	ctx := context.Background()
	if err := streams.Provision(ctx, js, config.DefaultQueue()); err != nil {
		t.Fatal(err)
	}
	kv, err := streams.TLSRPT(ctx, js, config.DefaultQueue())
	if err != nil {
		t.Fatal(err)
	}
	w := &world{js: js, kv: kv, dns: dnstest.Start(t), log: &logBuffer{}, now: time.Date(2026, 3, 2, 0, 5, 0, 0, time.UTC)}
	w.put(t, wire.TLSRPTCounts{Domain: "example.test", PolicyType: "sts", PolicyString: []string{"version: STSv1", "mode: enforce", "mx: mx.example.test", "max_age: 86400"},
		MXHosts: []string{"mx.example.test"}, Succeeded: 16, Failed: 3, Failures: []wire.TLSRPTFailure{
			{ResultType: "certificate-expired", ReceivingMX: "mx.example.test", ReceivingIP: "127.0.0.1", Detail: "mta-sts enforce: mx.example.test certificate expired", Count: 3}}})
	w.put(t, wire.TLSRPTCounts{Domain: "example.test", PolicyType: "no-policy-found", Succeeded: 2})
	w.cfg = Config{Params: Params{Organization: "Sluice Test", Contact: "postmaster@sender.test", Submitter: "sender.test"},
		Hostname: "mta.sender.test", DNSServer: w.dns.Addr}
	return w
}

func (w *world) put(t *testing.T, c wire.TLSRPTCounts) {
	t.Helper()
	b, _ := json.Marshal(c)
	if _, err := w.kv.Put(context.Background(), wire.TLSRPTCountKey("2026-03-01", c.PolicyType, c.Domain), b); err != nil {
		t.Fatal(err)
	}
}

// record publishes domain's TLS-RPT record.
func (w *world) record(t *testing.T, domain, txt string) {
	t.Helper()
	w.dns.MustAdd(t, `_smtp._tls.`+domain+`. 60 IN TXT "`+txt+`"`)
}

func (w *world) sendDay(t *testing.T) ([]Sent, error) {
	t.Helper()
	return NewReporter(w.cfg, w.kv, w.js, slog.New(slog.NewTextHandler(w.log, nil))).SendDay(context.Background(), "2026-03-01", w.now)
}

// claim returns the value of sent.2026-03-01.<domain>, or "" when there is
// none.
func (w *world) claim(t *testing.T, domain string) string {
	t.Helper()
	e, err := w.kv.Get(context.Background(), wire.TLSRPTSentKey("2026-03-01", domain))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(e.Value())
}

// mails returns the messages on SLUICE_MSGS.
func (w *world) mails(t *testing.T) []*sluicev1.Message {
	t.Helper()
	ctx := context.Background()
	str, err := w.js.Stream(ctx, wire.StreamMessages)
	if err != nil {
		t.Fatal(err)
	}
	info, err := str.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*sluicev1.Message
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		raw, err := str.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		var m sluicev1.Message
		if err := proto.Unmarshal(raw.Data, &m); err != nil {
			t.Fatal(err)
		}
		out = append(out, &m)
	}
	return out
}

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// request is what an https rua received.
type request struct {
	Method, Path, ContentType, ContentEncoding, UserAgent string
	Body                                                  []byte
}

// receiver is an https rua: it keeps each request and answers status
// with body.
type receiver struct {
	mu       sync.Mutex
	requests []request
	status   int
	body     string
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.requests = append(rc.requests, request{Method: r.Method, Path: r.URL.Path, ContentType: r.Header.Get("Content-Type"),
		ContentEncoding: r.Header.Get("Content-Encoding"), UserAgent: r.Header.Get("User-Agent"), Body: b})
	status, body := rc.status, rc.body
	rc.mu.Unlock()
	w.WriteHeader(status)
	io.WriteString(w, body)
}

func (rc *receiver) got() []request {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]request(nil), rc.requests...)
}

// wireReport is the JSON of RFC 8460 §4.4 with the member names spelt out
// here, apart from the package's Report, so that a misspelt tag shows.
type wireReport struct {
	Organization string `json:"organization-name"`
	DateRange    struct {
		Start string `json:"start-datetime"`
		End   string `json:"end-datetime"`
	} `json:"date-range"`
	Contact  string `json:"contact-info"`
	ReportID string `json:"report-id"`
	Policies []struct {
		Policy struct {
			Type   string `json:"policy-type"`
			Domain string `json:"policy-domain"`
		} `json:"policy"`
		Summary struct {
			Successful int64 `json:"total-successful-session-count"`
			Failed     int64 `json:"total-failure-session-count"`
		} `json:"summary"`
	} `json:"policies"`
}

// gunzipJSON returns the gzipped JSON report b, both as the wire names
// read it and as a Report.
func gunzipJSON(t *testing.T, b []byte) (wireReport, Report) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("POST body is not gzip: %v", err)
	}
	js, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	var w wireReport
	var r Report
	if err := json.Unmarshal(js, &w); err != nil {
		t.Fatalf("POST body is not JSON: %v: %s", err, js)
	}
	if err := json.Unmarshal(js, &r); err != nil {
		t.Fatal(err)
	}
	return w, r
}

// TestSendDayHTTPS: a record with a mailto and an https rua; the report
// is enqueued for the address and POSTed to the URL, over TLS verified
// against the test CA, as application/tlsrpt+gzip, and the receiver's 202
// counts as accepted. The POSTed JSON carries the recorded counts and is
// the report the mail carries. The claim is written, and a second
// reporter neither mails nor POSTs again.
func TestSendDayHTTPS(t *testing.T) {
	w := newWorld(t)
	rc := &receiver{status: http.StatusAccepted}
	srv := httptest.NewTLSServer(rc)
	defer srv.Close()
	u := srv.URL + "/v1/tlsrpt"
	w.record(t, "example.test", "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test,"+u)
	w.cfg.HTTPClient = srv.Client()

	sent, err := w.sendDay(t)
	if err != nil {
		t.Fatal(err)
	}
	if len(sent) != 1 || sent[0].Domain != "example.test" || sent[0].QueueID == "" ||
		strings.Join(sent[0].To, ",") != "tlsrpt@reports.test" || strings.Join(sent[0].HTTPS, ",") != u || len(sent[0].Failed) != 0 {
		t.Fatalf("sent %+v, want a mail to tlsrpt@reports.test and a POST to %s", sent, u)
	}
	reqs := rc.got()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	q := reqs[0]
	if q.Method != http.MethodPost || q.Path != "/v1/tlsrpt" || q.ContentType != "application/tlsrpt+gzip" || q.ContentEncoding != "" {
		t.Errorf("request %s %s, Content-Type %q, Content-Encoding %q; want POST /v1/tlsrpt as application/tlsrpt+gzip",
			q.Method, q.Path, q.ContentType, q.ContentEncoding)
	}
	if !strings.HasPrefix(q.UserAgent, "Sluice-TLSRPT/") || !strings.Contains(q.UserAgent, "mta.sender.test") {
		t.Errorf("User-Agent %q", q.UserAgent)
	}
	wr, posted := gunzipJSON(t, q.Body)
	if wr.Organization != "Sluice Test" || wr.Contact != "postmaster@sender.test" ||
		wr.DateRange.Start != "2026-03-01T00:00:00Z" || wr.DateRange.End != "2026-03-01T23:59:59Z" ||
		wr.ReportID != "2026-03-01_example.test@sender.test" || len(wr.Policies) != 2 {
		t.Fatalf("posted report %+v", wr)
	}
	for i, want := range []struct {
		typ          string
		succ, failed int64
	}{{"no-policy-found", 2, 0}, {"sts", 16, 3}} {
		p := wr.Policies[i]
		if p.Policy.Type != want.typ || p.Policy.Domain != "example.test" || p.Summary.Successful != want.succ || p.Summary.Failed != want.failed {
			t.Errorf("policies[%d] = %+v, want %s with %d successful and %d failed sessions", i, p, want.typ, want.succ, want.failed)
		}
	}

	mails := w.mails(t)
	if len(mails) != 1 || mails[0].QueueId != sent[0].QueueID || len(mails[0].Recipients) != 1 || mails[0].Recipients[0].Address != "tlsrpt@reports.test" {
		t.Fatalf("mails on %s: %v", wire.StreamMessages, mails)
	}
	if mailed := readReport(t, mails[0].Body); !reflect.DeepEqual(mailed, posted) {
		t.Errorf("mailed report %+v, posted %+v", mailed, posted)
	}
	if c := w.claim(t, "example.test"); c != "mta.sender.test" {
		t.Errorf("claim %q, want mta.sender.test", c)
	}

	again, err := w.sendDay(t)
	if err != nil || len(again) != 0 {
		t.Fatalf("second reporter sent %+v (%v), want nothing", again, err)
	}
	if n := len(rc.got()); n != 1 {
		t.Errorf("%d requests after the second reporter, want 1", n)
	}
	if n := len(w.mails(t)); n != 1 {
		t.Errorf("%d mails after the second reporter, want 1", n)
	}
}

// TestSendDayHTTPSFailures: the https ruas answer 500, redirect to plain
// http, redirect with 303 (which would turn the POST into a GET) and time
// out; the mail still goes, each failure is in Sent.Failed and in the log
// with its URL and cause, nothing reaches the plain http server or the
// 303's target, and the report counts as sent (claimed), because the mail
// took it.
func TestSendDayHTTPSFailures(t *testing.T) {
	w := newWorld(t)
	plain := &receiver{status: http.StatusOK}
	plainSrv := httptest.NewServer(plain)
	defer plainSrv.Close()
	failing := &receiver{status: http.StatusInternalServerError, body: "storage\x00 full\n"}
	target := &receiver{status: http.StatusOK}
	mux := http.NewServeMux()
	mux.Handle("/fail", failing)
	mux.Handle("/ok-get", target)
	mux.HandleFunc("/moved", func(rw http.ResponseWriter, r *http.Request) {
		http.Redirect(rw, r, plainSrv.URL+"/tlsrpt", http.StatusPermanentRedirect)
	})
	mux.HandleFunc("/see-other", func(rw http.ResponseWriter, r *http.Request) {
		http.Redirect(rw, r, "/ok-get", http.StatusSeeOther)
	})
	mux.HandleFunc("/slow", func(rw http.ResponseWriter, r *http.Request) {
		// The server notices the client hanging up once the body is read.
		io.ReadAll(r.Body)
		select {
		case <-r.Context().Done():
		case <-time.After(20 * time.Second):
		}
	})
	srv := httptest.NewTLSServer(mux)
	defer srv.Close()
	urls := []string{srv.URL + "/fail", srv.URL + "/moved", srv.URL + "/see-other", srv.URL + "/slow"}
	w.record(t, "example.test", "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test,"+strings.Join(urls, ","))
	client := srv.Client()
	client.Timeout = 2 * time.Second
	w.cfg.HTTPClient = client

	sent, err := w.sendDay(t)
	if err != nil {
		t.Fatalf("SendDay: %v, want no error: the mail took the report", err)
	}
	if len(sent) != 1 || sent[0].QueueID == "" || strings.Join(sent[0].To, ",") != "tlsrpt@reports.test" || len(sent[0].HTTPS) != 0 {
		t.Fatalf("sent %+v, want the mail and no https acceptance", sent)
	}
	causes := []string{`HTTP status 500 Internal Server Error: "storage full"`, "not https", "would drop the report (GET instead of POST)", "timeout"}
	// The log's text handler escapes the quotes.
	logged := []string{`HTTP status 500 Internal Server Error: \"storage full\"`, "not https", "would drop the report (GET instead of POST)", "timeout"}
	if len(sent[0].Failed) != len(urls) {
		t.Fatalf("failed %v, want %d", sent[0].Failed, len(urls))
	}
	log := w.log.String()
	for i, f := range sent[0].Failed {
		if f.Dest != urls[i] || f.Err == nil || !strings.Contains(f.Err.Error(), causes[i]) {
			t.Errorf("failed[%d] = %s: %v, want %s: ...%s...", i, f.Dest, f.Err, urls[i], causes[i])
		}
		line := ""
		for _, l := range strings.Split(log, "\n") {
			if strings.Contains(l, "rua="+urls[i]+" ") {
				line = l
			}
		}
		if !strings.Contains(line, "level=WARN") || !strings.Contains(line, logged[i]) {
			t.Errorf("no warning about %s with %q in the log:\n%s", urls[i], logged[i], log)
		}
	}
	if q := failing.got(); len(q) != 1 || q[0].Method != http.MethodPost || q[0].ContentType != "application/tlsrpt+gzip" {
		t.Errorf("the failing rua got %+v, want one POST", q)
	}
	if n := len(plain.got()); n != 0 {
		t.Errorf("the plain http server got %d requests, want none", n)
	}
	if n := len(target.got()); n != 0 {
		t.Errorf("the 303 target got %d requests, want none", n)
	}
	mails := w.mails(t)
	if len(mails) != 1 || mails[0].Recipients[0].Address != "tlsrpt@reports.test" {
		t.Fatalf("mails %v", mails)
	}
	if rep := readReport(t, mails[0].Body); len(rep.Policies) != 2 || rep.Policies[1].Summary != (Summary{16, 3}) {
		t.Errorf("mailed report %+v", rep)
	}
	if c := w.claim(t, "example.test"); c != "mta.sender.test" {
		t.Errorf("claim %q, want mta.sender.test: the mail took the report", c)
	}
}

// TestSendDayHTTPIgnored: plain http rua URIs get nothing: example.test's
// report goes only by mail, and httponly.test, whose record names only an
// http URI, is treated as a domain without destinations (no report, no
// claim, no error).
func TestSendDayHTTPIgnored(t *testing.T) {
	w := newWorld(t)
	w.put(t, wire.TLSRPTCounts{Domain: "httponly.test", PolicyType: "no-policy-found", Succeeded: 7})
	plain := &receiver{status: http.StatusOK}
	srv := httptest.NewServer(plain)
	defer srv.Close()
	w.record(t, "example.test", "v=TLSRPTv1; rua="+srv.URL+"/tlsrpt,mailto:tlsrpt@reports.test")
	w.record(t, "httponly.test", "v=TLSRPTv1; rua="+srv.URL+"/tlsrpt")
	w.cfg.HTTPClient = srv.Client()

	sent, err := w.sendDay(t)
	if err != nil {
		t.Fatal(err)
	}
	if len(sent) != 1 || sent[0].Domain != "example.test" || strings.Join(sent[0].To, ",") != "tlsrpt@reports.test" ||
		len(sent[0].HTTPS) != 0 || len(sent[0].Failed) != 0 {
		t.Fatalf("sent %+v, want example.test's report by mail only", sent)
	}
	if n := len(plain.got()); n != 0 {
		t.Errorf("the http rua got %d requests, want none", n)
	}
	if n := len(w.mails(t)); n != 1 {
		t.Errorf("%d mails, want 1", n)
	}
	if c := w.claim(t, "httponly.test"); c != "" {
		t.Errorf("httponly.test claimed by %q, want no claim", c)
	}
}

// TestSendDayHTTPSUntrusted: by default the client verifies certificates
// against the system roots, which do not hold the test server's CA; with
// the record's only rua refused, SendDay fails, naming the URL and the
// certificate, writes no claim and POSTs nothing. The next run, with a
// client that trusts the test CA, sends the report.
func TestSendDayHTTPSUntrusted(t *testing.T) {
	w := newWorld(t)
	rc := &receiver{status: http.StatusOK}
	srv := httptest.NewUnstartedServer(rc)
	srv.Config.ErrorLog = stdlog.New(io.Discard, "", 0) // the refused handshake
	srv.StartTLS()
	defer srv.Close()
	u := srv.URL + "/tlsrpt"
	w.record(t, "example.test", "v=TLSRPTv1; rua="+u)

	sent, err := w.sendDay(t)
	if err == nil || !strings.Contains(err.Error(), "example.test: no rua took the report: "+u+": ") ||
		!strings.Contains(err.Error(), "certificate") {
		t.Fatalf("SendDay: %v, want example.test's %s refused for its certificate", err, u)
	}
	if len(sent) != 0 {
		t.Errorf("sent %+v, want nothing", sent)
	}
	if n := len(rc.got()); n != 0 {
		t.Errorf("the rua got %d requests over an unverified connection", n)
	}
	if c := w.claim(t, "example.test"); c != "" {
		t.Errorf("claimed by %q after no rua took the report", c)
	}
	if !strings.Contains(w.log.String(), "rua="+u) {
		t.Errorf("the failure is not logged with its URL:\n%s", w.log)
	}

	w.cfg.HTTPClient = srv.Client()
	sent, err = w.sendDay(t)
	if err != nil {
		t.Fatal(err)
	}
	if len(sent) != 1 || sent[0].QueueID != "" || len(sent[0].To) != 0 || strings.Join(sent[0].HTTPS, ",") != u {
		t.Fatalf("retry sent %+v, want the POST to %s only", sent, u)
	}
	if reqs := rc.got(); len(reqs) != 1 || reqs[0].ContentType != "application/tlsrpt+gzip" {
		t.Errorf("requests %+v, want one POST", reqs)
	}
	if c := w.claim(t, "example.test"); c != "mta.sender.test" {
		t.Errorf("claim %q after the retry", c)
	}
	if n := len(w.mails(t)); n != 0 {
		t.Errorf("%d mails for a record without mailto", n)
	}
}

// TestHTTPClient: the default client has the timeout and verifies
// certificates against the system roots; a given client keeps its
// timeout, or gets the default, and is not changed itself.
func TestHTTPClient(t *testing.T) {
	c := httpClient(nil)
	tr, ok := c.Transport.(*http.Transport)
	if c.Timeout != HTTPTimeout || !ok || tr.TLSClientConfig == nil || tr.TLSClientConfig.InsecureSkipVerify ||
		tr.TLSClientConfig.RootCAs != nil || tr.Proxy != nil || c.CheckRedirect == nil {
		t.Errorf("default client %+v", c)
	}
	mine := &http.Client{Timeout: time.Second}
	if c := httpClient(mine); c.Timeout != time.Second || c == mine || mine.CheckRedirect != nil {
		t.Errorf("client with a timeout became %+v (given %+v)", c, mine)
	}
	if c := httpClient(&http.Client{}); c.Timeout != HTTPTimeout {
		t.Errorf("client without a timeout got %s", c.Timeout)
	}
}
