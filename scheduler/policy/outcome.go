package policy

import (
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/proto/sluicev1"
)

// ExpiredStatus and ExpiredText are what an expired recipient is reported
// with: RFC 3463 section 3.5, X.4.7 "Delivery time expired", which RFC 3463
// gives as a persistent transient status, reported with Action: failed.
const (
	ExpiredStatus = "4.4.7"
	ExpiredText   = "delivery time expired"
)

// Decision is what becomes of each recipient of one delivery attempt.
type Decision struct {
	// Delivered recipients are done.
	Delivered []*sluicev1.RecipientResult
	// Failed recipients are done and bounce: permanent failures, and
	// temporary failures of a job past its expiry (rewritten by Expire).
	Failed []*sluicev1.RecipientResult
	// Retry recipients get another attempt.
	Retry []*sluicev1.RecipientResult
	// Expired reports that temporary failures were turned into failures
	// because the job expired.
	Expired bool
}

// Final reports whether the job is finished: nothing is left to retry.
func (d Decision) Final() bool { return len(d.Retry) == 0 }

// Decide sorts the recipient results of one attempt of job at now.
//
// An unspecified outcome counts as temporary (unknown problems are
// temporary: retrying is safe, bouncing is not). A recipient of the job the
// result does not mention at all is retried too, with REASON_INTERNAL, so a
// deliverer bug cannot silently drop a recipient. Temporary failures of a job
// that has expired (Expired(now, job expires)) become failures with status
// 4.4.7 instead.
func Decide(job *sluicev1.Job, results []*sluicev1.RecipientResult, now time.Time) Decision {
	var d Decision
	var temporary []*sluicev1.RecipientResult
	reported := make(map[string]int, len(results))
	for _, rr := range results {
		reported[rr.GetAddress()]++
		switch rr.GetOutcome() {
		case sluicev1.Outcome_OUTCOME_DELIVERED:
			d.Delivered = append(d.Delivered, rr)
		case sluicev1.Outcome_OUTCOME_PERMANENT:
			d.Failed = append(d.Failed, rr)
		default:
			temporary = append(temporary, rr)
		}
	}
	for _, r := range job.GetRecipients() {
		if reported[r.GetAddress()] > 0 {
			reported[r.GetAddress()]--
			continue
		}
		temporary = append(temporary, &sluicev1.RecipientResult{
			Address: r.GetAddress(),
			Outcome: sluicev1.Outcome_OUTCOME_TEMPORARY,
			Reason:  sluicev1.Reason_REASON_INTERNAL,
			Code:    451, EnhancedCode: "4.3.0",
			Text:   "the deliverer reported no outcome for this recipient",
			Notify: r.GetNotify(), Orcpt: r.GetOrcpt(),
		})
	}
	if len(temporary) == 0 {
		return d
	}
	if Expired(now, time.Unix(0, job.GetExpiresUnixNano())) && job.GetExpiresUnixNano() != 0 {
		d.Expired = true
		for _, rr := range temporary {
			d.Failed = append(d.Failed, Expire(rr))
		}
		return d
	}
	d.Retry = temporary
	return d
}

// Expire returns a copy of a temporary recipient result reported as expired:
// outcome permanent, reason EXPIRED, status 4.4.7. The last attempt's reply
// moves into the text ("delivery time expired; last attempt: 451 4.7.1 try
// later") and the reply code is cleared, so a DSN's Diagnostic-Code does not
// present our 4.4.7 as something the remote server said; the remote host
// stays for the Remote-MTA field.
func Expire(rr *sluicev1.RecipientResult) *sluicev1.RecipientResult {
	e := proto.Clone(rr).(*sluicev1.RecipientResult)
	e.Outcome = sluicev1.Outcome_OUTCOME_PERMANENT
	e.Reason = sluicev1.Reason_REASON_EXPIRED
	e.EnhancedCode = ExpiredStatus
	e.Code = 0
	e.Text = ExpiredText
	if last := LastError(rr); last != "" {
		e.Text += "; last attempt: " + last
	}
	return e
}

// MayBounce reports whether a DSN may be sent about a job at all. RFC 5321
// section 4.5.5 and RFC 3464 section 2: a message with the null
// reverse-path is itself a notification and is never answered with one,
// and Sluice's own DSNs are marked is_dsn for the same reason.
func MayBounce(job *sluicev1.Job) bool {
	return job.GetMailFrom() != "" && !job.GetIsDsn()
}

// WantsFailure reports whether a recipient's RFC 3461 NOTIFY asks for a
// failure DSN. No NOTIFY parameter means FAILURE (RFC 3461 section 4.1);
// NEVER suppresses it.
func WantsFailure(notify uint32) bool {
	if notify&uint32(sluicev1.Notify_NOTIFY_NEVER) != 0 {
		return false
	}
	return notify == 0 || notify&uint32(sluicev1.Notify_NOTIFY_FAILURE) != 0
}

// WantsSuccess reports whether a recipient's NOTIFY asks for a success DSN,
// which is only ever sent on request (RFC 3461 section 4.1).
func WantsSuccess(notify uint32) bool {
	return notify&uint32(sluicev1.Notify_NOTIFY_NEVER) == 0 && notify&uint32(sluicev1.Notify_NOTIFY_SUCCESS) != 0
}

// WantsDelay reports whether a recipient's NOTIFY allows a delay DSN: DELAY
// asked for explicitly, or no NOTIFY at all, which RFC 3461 section 4.1
// leaves to the MTA (we warn, as Postfix does).
func WantsDelay(notify uint32) bool {
	if notify&uint32(sluicev1.Notify_NOTIFY_NEVER) != 0 {
		return false
	}
	return notify == 0 || notify&uint32(sluicev1.Notify_NOTIFY_DELAY) != 0
}

// ShouldWarnDelay reports whether a job still being retried at now has
// waited long enough for its sender to be told, and was not told yet.
func ShouldWarnDelay(job *sluicev1.Job, now time.Time, after time.Duration) bool {
	if after <= 0 || job.GetDelayWarned() || job.GetReceivedUnixNano() == 0 {
		return false
	}
	return now.Sub(time.Unix(0, job.GetReceivedUnixNano())) >= after
}

// Filter returns the results for which want(notify) holds.
func Filter(rrs []*sluicev1.RecipientResult, want func(uint32) bool) []*sluicev1.RecipientResult {
	var out []*sluicev1.RecipientResult
	for _, rr := range rrs {
		if want(rr.GetNotify()) {
			out = append(out, rr)
		}
	}
	return out
}
