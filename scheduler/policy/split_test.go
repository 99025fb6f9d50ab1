package policy

import (
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
