package notify

import (
	"testing"

	"github.com/sluice-mta/sluice/proto/sluicev1"
)

func TestWants(t *testing.T) {
	const (
		failed    = sluicev1.BounceKind_BOUNCE_KIND_FAILED
		delayed   = sluicev1.BounceKind_BOUNCE_KIND_DELAYED
		delivered = sluicev1.BounceKind_BOUNCE_KIND_DELIVERED
	)
	var (
		def = uint32(0)
		nev = uint32(sluicev1.Notify_NOTIFY_NEVER)
		suc = uint32(sluicev1.Notify_NOTIFY_SUCCESS)
		fai = uint32(sluicev1.Notify_NOTIFY_FAILURE)
		del = uint32(sluicev1.Notify_NOTIFY_DELAY)
	)
	for _, tc := range []struct {
		notify         uint32
		kind           sluicev1.BounceKind
		delayByDefault bool
		want           bool
	}{
		{def, failed, false, true},
		{def, delayed, true, true},
		{def, delayed, false, false},
		{def, delivered, true, false},
		{nev, failed, true, false},
		{nev | fai, failed, true, false},
		{nev, delayed, true, false},
		{suc, delivered, false, true},
		{suc, failed, true, false},
		{suc | fai, failed, false, true},
		{fai, delayed, true, false},
		{fai | del, delayed, false, true},
		{del, failed, true, false},
		{suc | fai | del, delivered, false, true},
		{fai, sluicev1.BounceKind_BOUNCE_KIND_UNSPECIFIED, true, false},
	} {
		p := Policy{DelayByDefault: tc.delayByDefault}
		if got := p.Wants(tc.notify, tc.kind); got != tc.want {
			t.Errorf("notify %04b kind %v delayByDefault %v: %v, want %v", tc.notify, tc.kind, tc.delayByDefault, got, tc.want)
		}
	}
}

func TestSelectFillsFromEnvelope(t *testing.T) {
	b := &sluicev1.Bounce{
		Kind: sluicev1.BounceKind_BOUNCE_KIND_FAILED,
		Job: &sluicev1.Job{Recipients: []*sluicev1.Recipient{
			{Address: "a@x.test", Notify: uint32(sluicev1.Notify_NOTIFY_NEVER)},
			{Address: "b@x.test", Orcpt: "rfc822;B@x.test"},
			{Address: "c@x.test", Notify: uint32(sluicev1.Notify_NOTIFY_SUCCESS)},
		}},
		Recipients: []*sluicev1.RecipientResult{
			{Address: "a@x.test", Code: 550},
			{Address: "b@x.test", Code: 550},
			{Address: "c@x.test", Code: 550},
		},
	}
	got := Policy{}.Select(b)
	if len(got) != 1 || got[0].GetAddress() != "b@x.test" || got[0].GetOrcpt() != "rfc822;B@x.test" || got[0].GetCode() != 550 {
		t.Fatalf("Select = %v, want only b@x.test with its ORCPT", got)
	}
	if b.Recipients[1].Orcpt != "" {
		t.Fatal("Select modified the request")
	}
}
