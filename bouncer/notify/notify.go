// Package notify decides which recipients of a bounce request get a delivery
// status notification, following the NOTIFY parameter of RFC 3461 §4.1. It is
// pure policy: no I/O, table-tested.
package notify

import (
	"github.com/sluice-mta/sluice/proto/sluicev1"
)

// Policy holds the choices RFC 3461 leaves to the MTA.
type Policy struct {
	// DelayByDefault sends "delayed" reports to recipients given without a
	// NOTIFY parameter. RFC 3461 §4.1 says the absence of NOTIFY means
	// NOTIFY=FAILURE "or" NOTIFY=FAILURE,DELAY at the MTA's discretion. Exim
	// and sendmail warn about delays by default, Postfix does not; Sluice
	// warns by default because a sender who hears nothing for days will send
	// the message again, and the scheduler already bounds how often a delay
	// is reported.
	DelayByDefault bool
}

const (
	never   = uint32(sluicev1.Notify_NOTIFY_NEVER)
	success = uint32(sluicev1.Notify_NOTIFY_SUCCESS)
	failure = uint32(sluicev1.Notify_NOTIFY_FAILURE)
	delay   = uint32(sluicev1.Notify_NOTIFY_DELAY)
)

// Wants reports whether a recipient whose NOTIFY bit set is n asked for a
// report of kind k:
//
//   - NEVER (which RFC 3461 forbids combining with anything else, so it wins
//     over any other bit a confused client set) asks for nothing;
//   - failed needs FAILURE, or no NOTIFY at all;
//   - delayed needs DELAY, or no NOTIFY at all when DelayByDefault;
//   - delivered needs SUCCESS explicitly.
func (p Policy) Wants(n uint32, k sluicev1.BounceKind) bool {
	if n&never != 0 {
		return false
	}
	switch k {
	case sluicev1.BounceKind_BOUNCE_KIND_FAILED:
		return n == 0 || n&failure != 0
	case sluicev1.BounceKind_BOUNCE_KIND_DELAYED:
		return n&delay != 0 || n == 0 && p.DelayByDefault
	case sluicev1.BounceKind_BOUNCE_KIND_DELIVERED:
		return n&success != 0
	}
	return false
}

// Select returns a copy of b's recipients that asked for this kind of
// report. A recipient result that lacks its NOTIFY or ORCPT gets them from
// the job's envelope recipient of the same address, so the decision does not
// depend on which service copied what.
func (p Policy) Select(b *sluicev1.Bounce) []*sluicev1.RecipientResult {
	envelope := make(map[string]*sluicev1.Recipient, len(b.GetJob().GetRecipients()))
	for _, r := range b.GetJob().GetRecipients() {
		envelope[r.GetAddress()] = r
	}
	var out []*sluicev1.RecipientResult
	for _, r := range b.GetRecipients() {
		notify, orcpt := r.GetNotify(), r.GetOrcpt()
		if e := envelope[r.GetAddress()]; e != nil {
			if notify == 0 {
				notify = e.GetNotify()
			}
			if orcpt == "" {
				orcpt = e.GetOrcpt()
			}
		}
		if !p.Wants(notify, b.GetKind()) {
			continue
		}
		c := &sluicev1.RecipientResult{
			Address: r.GetAddress(), Outcome: r.GetOutcome(), Reason: r.GetReason(),
			Code: r.GetCode(), EnhancedCode: r.GetEnhancedCode(), Text: r.GetText(),
			RemoteHost: r.GetRemoteHost(), Notify: notify, Orcpt: orcpt,
		}
		out = append(out, c)
	}
	return out
}
