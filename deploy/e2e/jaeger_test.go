package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// TestTraceInJaeger sends a message through the four services exporting to a
// real Jaeger and reads the message's trace back through Jaeger's query API,
// the way an operator would: search by the queue id from the 250 reply.
func TestTraceInJaeger(t *testing.T) {
	if _, err := os.Stat("../../bin/jaeger"); err != nil {
		t.Skip("bin/jaeger is not built; run `make jaeger` once (a few minutes) to enable this test")
	}
	w := newWorld(t, worldOpts{jaeger: true, destRcpt: refuseNobody})
	if w.st.Jaeger == nil {
		t.Fatal("Jaeger was not started")
	}
	// One recipient is refused, so the bouncer takes part too.
	qid, err := w.send("a@sender.test", []string{"b@dest.test", "nobody@dest.test"}, message("jaeger", "find me"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.dest.Wait(1, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := w.senders.Wait(1, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	base := "http://" + w.st.JaegerUI
	var traceID string
	eventually(t, 30*time.Second, "Jaeger finds the trace by sluice.queue_id", func() bool {
		q := url.Values{"service": {"sluice-ingress"}, "tags": {fmt.Sprintf(`{"sluice.queue_id":%q}`, qid)}, "limit": {"5"}}
		var res jaegerTraces
		if err := getJSON(base+"/api/traces?"+q.Encode(), &res); err != nil || len(res.Data) == 0 {
			return false
		}
		traceID = res.Data[0].TraceID
		return true
	})
	want := map[string]bool{"sluice-ingress": true, "sluice-scheduler": true, "sluice-deliverer": true, "sluice-bouncer": true}
	var got map[string]bool
	eventually(t, 30*time.Second, "the trace has spans of all four services", func() bool {
		var res jaegerTraces
		if err := getJSON(base+"/api/traces/"+traceID, &res); err != nil || len(res.Data) != 1 {
			return false
		}
		got = map[string]bool{}
		for _, p := range res.Data[0].Processes {
			got[p.ServiceName] = true
		}
		for s := range want {
			if !got[s] {
				return false
			}
		}
		return true
	})
	t.Logf("Jaeger trace %s has services %v", traceID, got)
}

type jaegerTraces struct {
	Data []struct {
		TraceID   string `json:"traceID"`
		Processes map[string]struct {
			ServiceName string `json:"serviceName"`
		} `json:"processes"`
	} `json:"data"`
}

func getJSON(u string, v any) error {
	resp, err := http.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", u, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func refuseNobody(rcpt string, _ int) *smtp.SMTPError {
	if strings.HasPrefix(rcpt, "nobody@") {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	return nil
}
