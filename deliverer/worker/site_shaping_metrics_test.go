package worker

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/services/capture"
	"github.com/sluice-mta/sluice/services/telemetry"
)

// scrape reads the samples of the metrics named with prefix from a
// Prometheus text exposition at url, keyed `name{k="v",...}` with the
// labels sorted as the exposition gives them.
func scrape(t *testing.T, url, prefix string) map[string]float64 {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("sample %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

var siteLabel = regexp.MustCompile(`site="([^"]*)"`)

// bySite sums the samples of metric name whose labels contain match, by
// their site label.
func bySite(samples map[string]float64, name, match string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range samples {
		if !strings.HasPrefix(k, name+"{") || !strings.Contains(k, match) {
			continue
		}
		if m := siteLabel.FindStringSubmatch(k); m != nil {
			out[m[1]] += v
		}
	}
	return out
}

// TestSiteShapingMetrics reads the site-labelled shaping metrics through
// the Prometheus exporter the deliverer serves /metrics with: an operator's
// suspension and the waits of the suspended site's job, a site that
// answers "421 4.7.0 Try again later" (concurrency halved from 5 to 2,
// suspended by the reply), and more sites than the label names, counted
// as "other".
func TestSiteShapingMetrics(t *testing.T) {
	e := newEnv(t)
	tel, err := telemetry.Setup(context.Background(), "deliverer", telemetry.Env{}, io.Discard, "error")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := tel.ServeListener(ln, nil)
	t.Cleanup(func() { _ = srv.Close(); _ = tel.Shutdown(context.Background()) })
	url := "http://" + ln.Addr().String() + "/metrics"

	refusing, _ := listenCapture(t, capture.Options{Rcpt: func(string, int) *smtp.SMTPError {
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Try again later, closing connection."}
	}})
	open, _ := listenCapture(t, capture.Options{})
	svc := e.serviceWith(t, func(s *Settings) {
		s.Routes = map[string]string{"slow.test": refusing.Addr, "held.test": open.Addr}
		s.Shaping.Default.SuspendFor = time.Minute
		s.Shaping.BusyDelay = 50 * time.Millisecond
	}, func(d *Deps) { d.Meter = tel.Meter })
	ctx := context.Background()

	// The operator suspends held.test's site; its job waits.
	if _, code, err := svc.shapingSuspend(ctx, admin.ShapingRequest{Site: "held.test", For: "1m", Actor: "test"}); err != nil {
		t.Fatalf("suspend: %s %v", code, err)
	}
	e.enqueue(t, jobSpec{domain: "held.test", rcpts: []string{"x@held.test"}})
	var m map[string]float64
	eventually(t, 10*time.Second, "the held site's job counted as throttled", func() bool {
		m = scrape(t, url, "sluice_deliverer_site_")
		return bySite(m, "sluice_deliverer_site_throttled_total", "")[open.Addr] >= 1
	})
	if n := bySite(m, "sluice_deliverer_site_suspensions_total", `by="operator"`)[open.Addr]; n != 1 {
		t.Errorf("operator suspensions of %s: %v, want 1\n%v", open.Addr, n, m)
	}
	if l := bySite(m, "sluice_deliverer_site_concurrency_limit", "")[open.Addr]; l != 5 {
		t.Errorf("concurrency limit of the held site: %v, want the initial 5", l)
	}

	// slow.test answers "421 4.7.0 Try again later": halved, suspended.
	job := e.enqueue(t, jobSpec{domain: "slow.test", rcpts: []string{"x@slow.test"}})
	if r := e.result(t, job, 10*time.Second); r.Recipients[0].Reason != sluicev1.Reason_REASON_THROTTLED {
		t.Errorf("slow.test result %v, want throttled", r.Recipients[0])
	}
	eventually(t, 10*time.Second, "the reply's suspension counted", func() bool {
		m = scrape(t, url, "sluice_deliverer_site_")
		return bySite(m, "sluice_deliverer_site_suspensions_total", `by="reply"`)[refusing.Addr] == 1
	})
	if l := bySite(m, "sluice_deliverer_site_concurrency_limit", "")[refusing.Addr]; l != 2 {
		t.Errorf("concurrency limit of the site that asked to slow down: %v, want 5 halved to 2\n%v", l, m)
	}

	// Twelve more sites suspended: eight more get a name (ten in all),
	// the last four are "other".
	for i := range 12 {
		site := fmt.Sprintf("mx1.s%02d.test,mx2.s%02d.test", i, i)
		if _, code, err := svc.shapingSuspend(ctx, admin.ShapingRequest{Site: site, For: "1m"}); err != nil {
			t.Fatalf("suspend %s: %s %v", site, code, err)
		}
	}
	m = scrape(t, url, "sluice_deliverer_site_")
	ops := bySite(m, "sluice_deliverer_site_suspensions_total", `by="operator"`)
	named := 0
	for site := range bySite(m, "sluice_deliverer_site_suspensions_total", "") {
		if site != "other" {
			named++
		}
	}
	limits := bySite(m, "sluice_deliverer_site_concurrency_limit", "")
	if named != 10 || ops["other"] != 4 || ops["mx1.s07.test,mx2.s07.test"] != 1 || ops["mx1.s08.test,mx2.s08.test"] != 0 {
		t.Errorf("suspensions by site %v: want 10 sites named, s00..s07 among them, and 4 as other", ops)
	}
	if len(limits) != 10 || limits["other"] != 0 {
		t.Errorf("concurrency limits %v: want the 10 named sites, no other", limits)
	}
}

func eventually(t *testing.T, timeout time.Duration, what string, f func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !f(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
	}
}
