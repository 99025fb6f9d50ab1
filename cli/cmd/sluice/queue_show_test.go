package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	api "github.com/sluice-mta/sluice/proto/admin"
)

// TestShowAttemptTLS: each attempt of queue show says how its session used
// TLS, and under which policy.
func TestShowAttemptTLS(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	j := &api.QueueJob{JobID: "q-0", QueueID: "q", State: api.StateDeferred, Attempts: []api.QueueAttempt{
		{Attempt: 1, Started: t0, Finished: t0.Add(time.Second), RemoteHost: "mx1.d.test", Result: "deferred", Reason: "tls",
			Reply: "mta-sts enforce: mx1.d.test: certificate is not valid for mx1.d.test",
			TLS:   api.QueueTLS{Policy: "mta-sts enforce", Version: "1.3"}},
		{Attempt: 2, Started: t0, Finished: t0.Add(time.Second), RemoteHost: "mx2.d.test", Result: "delivered",
			TLS: api.QueueTLS{Policy: "dane", Version: "1.3", Cipher: "TLS_AES_128_GCM_SHA256", VerifiedBy: "dane-ee"}},
		{Attempt: 3, Started: t0, Finished: t0.Add(time.Second), RemoteHost: "mx3.d.test", Result: "delivered",
			TLS: api.QueueTLS{Policy: "may"}},
	}}
	var b bytes.Buffer
	printJob(&b, j, painter(false), t0)
	out := b.String()
	for _, want := range []string{
		"TLS", "TLSv1.3 unverified (policy mta-sts enforce)", "TLSv1.3 verified by dane-ee (policy dane)",
		"clear text (policy may)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("queue show lacks %q:\n%s", want, out)
		}
	}
}
