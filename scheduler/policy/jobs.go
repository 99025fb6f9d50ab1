package policy

import (
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
)

// JobParams is what MakeJobs needs besides the message.
type JobParams struct {
	// Seq is the message's sequence in SLUICE_MSGS.
	Seq uint64
	// Now is the time of the split.
	Now time.Time
	// Lifetime is queue.lifetime: a job expires this long after the message
	// was received.
	Lifetime time.Duration
	// Rules are the operator's priority rules.
	Rules Rules
}

// JobBodyInline is how many bytes of body copies the first-attempt jobs of
// one message may carry in all: a 4 KB message split into up to sixteen
// jobs travels inside them, a 64 KB one only when it makes a single job.
// The copy saves the deliverer one read of SLUICE_MSGS per job; the message
// there stays the reference, for retries, bounces and operators.
const JobBodyInline = 64 << 10

// MakeJobs splits a message into its first-attempt jobs, one per recipient
// domain (see Split), with ids wire.JobID(queue id, n). Each job carries the
// envelope and RFC 3461 parameters of the message and a reference to its
// body (stream sequence and object name); when the body is inline in the
// message and the copies fit in JobBodyInline, a copy of the body as well.
// A message without a receive time is treated as received now.
func MakeJobs(m *sluicev1.Message, p JobParams) []*sluicev1.Job {
	groups := Split(m.GetRecipients())
	var body []byte
	if b := m.GetBody(); m.GetBodyObject() == "" && len(b) > 0 && len(b)*len(groups) <= JobBodyInline {
		body = b
	}
	received := m.GetReceivedUnixNano()
	if received == 0 {
		received = p.Now.UnixNano()
	}
	expires := time.Unix(0, received).Add(p.Lifetime).UnixNano()
	size := m.GetBodySize()
	if size == 0 {
		size = int64(len(m.GetBody()))
	}
	jobs := make([]*sluicev1.Job, 0, len(groups))
	for n, g := range groups {
		jobs = append(jobs, &sluicev1.Job{
			Schema:            wire.SchemaVersion,
			JobId:             wire.JobID(m.GetQueueId(), n),
			QueueId:           m.GetQueueId(),
			MsgSeq:            p.Seq,
			BodyObject:        m.GetBodyObject(),
			BodyNuid:          m.GetBodyNuid(),
			BodySize:          size,
			MailFrom:          m.GetMailFrom(),
			Recipients:        g.Recipients,
			Domain:            g.Domain,
			Priority:          Class(p.Rules, m.GetMailFrom(), g.Domain, m.GetMtPriority(), m.GetHasMtPriority()),
			Attempt:           1,
			ReceivedUnixNano:  received,
			ExpiresUnixNano:   expires,
			Ret:               m.GetRet(),
			Envid:             m.GetEnvid(),
			RequireTls:        m.GetRequireTls(),
			Smtputf8:          m.GetSmtputf8(),
			BodyType:          m.GetBodyType(),
			JobsTotal:         uint32(len(groups)),
			IsDsn:             m.GetIsDsn(),
			ScheduledUnixNano: p.Now.UnixNano(),
			Body:              body,
		})
	}
	return jobs
}

// RetryJob is the next attempt of job for the recipients to retry: the same
// job id, class, body and deadline, attempt+1, only those recipients (with
// their NOTIFY and ORCPT), the reason and reply of the first of them as
// last_reason and last_error, scheduled now to run at at.
func RetryJob(job *sluicev1.Job, retry []*sluicev1.RecipientResult, now, at time.Time) *sluicev1.Job {
	next := proto.Clone(job).(*sluicev1.Job)
	next.Attempt = job.GetAttempt() + 1
	// The job's own recipient entries are authoritative for NOTIFY and
	// ORCPT; the copies in the results are for the bouncer.
	orig := make(map[string]*sluicev1.Recipient, len(job.GetRecipients()))
	for _, r := range job.GetRecipients() {
		if _, ok := orig[r.GetAddress()]; !ok {
			orig[r.GetAddress()] = r
		}
	}
	next.Recipients = make([]*sluicev1.Recipient, 0, len(retry))
	for _, rr := range retry {
		r, ok := orig[rr.GetAddress()]
		if !ok {
			r = &sluicev1.Recipient{Address: rr.GetAddress(), Notify: rr.GetNotify(), Orcpt: rr.GetOrcpt()}
		}
		next.Recipients = append(next.Recipients, proto.Clone(r).(*sluicev1.Recipient))
	}
	if len(retry) > 0 {
		next.LastReason = retry[0].GetReason()
		next.LastError = LastError(retry[0])
	}
	next.ScheduledUnixNano = now.UnixNano()
	next.NotBeforeUnixNano = at.UnixNano()
	return next
}

// LastError renders a recipient result as one line for an operator:
// "451 4.7.1 try later" or just the text when there was no reply.
func LastError(rr *sluicev1.RecipientResult) string {
	s := rr.GetText()
	if ec := rr.GetEnhancedCode(); ec != "" {
		s = ec + " " + s
	}
	if c := rr.GetCode(); c != 0 {
		s = strconv.FormatUint(uint64(c), 10) + " " + s
	}
	return strings.TrimSpace(s)
}
