package policy

import (
	"bytes"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
)

func rcpts(addrs ...string) []*sluicev1.Recipient {
	out := make([]*sluicev1.Recipient, len(addrs))
	for i, a := range addrs {
		out[i] = &sluicev1.Recipient{Address: a}
	}
	return out
}

func TestDomain(t *testing.T) {
	tests := map[string]string{
		"a@Example.COM":         "example.com",
		`"a@b"@c.test`:          "c.test",
		"postmaster":            "",
		"":                      "",
		"x@":                    "",
		"ünï@bücher.example":    "bücher.example",
		"a@b@MULTI.example.org": "multi.example.org",
	}
	for in, want := range tests {
		if got := Domain(in); got != want {
			t.Errorf("Domain(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSplit(t *testing.T) {
	groups := Split(rcpts("a@B.test", "c@a.test", "d@b.TEST", "e@c.test", "f@a.test"))
	var got [][]string
	var doms []string
	for _, g := range groups {
		doms = append(doms, g.Domain)
		var as []string
		for _, r := range g.Recipients {
			as = append(as, r.Address)
		}
		got = append(got, as)
	}
	if want := []string{"b.test", "a.test", "c.test"}; !reflect.DeepEqual(doms, want) {
		t.Errorf("domains %v, want %v", doms, want)
	}
	want := [][]string{{"a@B.test", "d@b.TEST"}, {"c@a.test", "f@a.test"}, {"e@c.test"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("groups %v, want %v", got, want)
	}
	if len(Split(nil)) != 0 {
		t.Error("Split(nil) is not empty")
	}
}

func TestMakeJobs(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	received := now.Add(-time.Minute)
	m := &sluicev1.Message{
		QueueId: "Q1", MailFrom: "s@news.example", ReceivedUnixNano: received.UnixNano(),
		Recipients:    []*sluicev1.Recipient{{Address: "a@x.test", Notify: 2, Orcpt: "rfc822;a@x.test"}, {Address: "b@y.test"}, {Address: "c@X.test"}},
		HasMtPriority: true, MtPriority: 4, Ret: "HDRS", Envid: "E1", Smtputf8: true, BodyType: "8BITMIME",
		RequireTls: true, Body: []byte("hello"), IsDsn: false,
	}
	jobs := MakeJobs(m, JobParams{Seq: 7, Now: now, Lifetime: time.Hour, Rules: Rules{{RecipientDomain: "y.test", Class: "bulk"}}})
	if len(jobs) != 2 {
		t.Fatalf("%d jobs, want 2", len(jobs))
	}
	j0, j1 := jobs[0], jobs[1]
	if j0.JobId != wire.JobID("Q1", 0) || j1.JobId != wire.JobID("Q1", 1) {
		t.Errorf("job ids %s %s", j0.JobId, j1.JobId)
	}
	if j0.Domain != "x.test" || len(j0.Recipients) != 2 || j0.Recipients[1].Address != "c@X.test" || j0.Recipients[0].Notify != 2 {
		t.Errorf("job 0 recipients wrong: %v", j0)
	}
	if j0.Priority != high || j1.Priority != bulk {
		t.Errorf("classes %v %v, want high (MT-PRIORITY 4) and bulk (rule)", j0.Priority, j1.Priority)
	}
	for _, j := range jobs {
		if j.MsgSeq != 7 || j.JobsTotal != 2 || j.Attempt != 1 || j.BodySize != 5 || j.QueueId != "Q1" ||
			j.ReceivedUnixNano != received.UnixNano() || j.ExpiresUnixNano != received.Add(time.Hour).UnixNano() ||
			j.ScheduledUnixNano != now.UnixNano() || j.Ret != "HDRS" || j.Envid != "E1" || !j.Smtputf8 ||
			j.BodyType != "8BITMIME" || !j.RequireTls || j.MailFrom != "s@news.example" || j.Schema != wire.SchemaVersion {
			t.Errorf("job fields wrong: %v", j)
		}
	}
}

// TestMakeJobsBodyCopy: first-attempt jobs carry the body while all the
// copies fit in JobBodyInline, never for a body in the object store.
func TestMakeJobsBodyCopy(t *testing.T) {
	rcpts := func(domains int) []*sluicev1.Recipient {
		var r []*sluicev1.Recipient
		for i := range domains {
			r = append(r, &sluicev1.Recipient{Address: fmt.Sprintf("a@d%d.test", i)})
		}
		return r
	}
	small := bytes.Repeat([]byte("x"), 4096)
	for _, tc := range []struct {
		name    string
		m       *sluicev1.Message
		carried bool
	}{
		{"small, one domain", &sluicev1.Message{QueueId: "Q", Body: small, Recipients: rcpts(1)}, true},
		{"small, sixteen domains", &sluicev1.Message{QueueId: "Q", Body: small, Recipients: rcpts(16)}, true},
		{"small, seventeen domains", &sluicev1.Message{QueueId: "Q", Body: small, Recipients: rcpts(17)}, false},
		{"at the limit", &sluicev1.Message{QueueId: "Q", Body: make([]byte, JobBodyInline), Recipients: rcpts(1)}, true},
		{"over the limit", &sluicev1.Message{QueueId: "Q", Body: make([]byte, JobBodyInline+1), Recipients: rcpts(1)}, false},
		{"object store", &sluicev1.Message{QueueId: "Q", BodyObject: "Q", BodySize: 100, Recipients: rcpts(1)}, false},
	} {
		jobs := MakeJobs(tc.m, JobParams{Seq: 3, Now: time.Unix(1_800_000_000, 0), Lifetime: time.Hour})
		for _, j := range jobs {
			if got := len(j.Body) > 0; got != tc.carried {
				t.Errorf("%s: job carries the body: %v, want %v", tc.name, got, tc.carried)
			}
			if tc.carried && !bytes.Equal(j.Body, tc.m.Body) {
				t.Errorf("%s: the job's copy differs from the body", tc.name)
			}
			if j.MsgSeq != 3 {
				t.Errorf("%s: job lost its reference to the message: seq %d", tc.name, j.MsgSeq)
			}
		}
	}
}
