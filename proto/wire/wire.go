// Package wire names everything the Sluice services agree on about JetStream:
// streams, subjects, consumers, headers and identifiers. Together with the
// sluicev1 schemas it is the only thing services share about each other, so a
// change here is a change of the protocol and is versioned with it.
//
// Layout (see the README's architecture section for the reasons):
//
//	SLUICE_MSGS     limits, discard new   sluice.msg.<queue_id>            one per accepted transaction
//	SLUICE_JOBS     work queue, schedules sluice.job.<class>.<job_id>      ready jobs, one consumer per class
//	                                      sluice.sched.<job_id>            pending retries (Nats-Schedule @at)
//	SLUICE_RESULTS  work queue            sluice.result.<job_id>           deliverer reports
//	SLUICE_BOUNCES  work queue            sluice.bounce.<job_id>           DSN requests
//	sluice_bodies   object store                                          bodies too large to inline
//	sluice_refs     key-value                                             open jobs of split messages
//
// Queue events, held jobs and the admin API are described in events.go.
package wire

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/proto/sluicev1"
)

// SchemaVersion is written into every sluicev1 message.
const SchemaVersion = 1

// Stream, bucket and consumer names.
const (
	StreamMessages = "SLUICE_MSGS"
	StreamJobs     = "SLUICE_JOBS"
	StreamResults  = "SLUICE_RESULTS"
	StreamBounces  = "SLUICE_BOUNCES"

	BucketBodies = "sluice_bodies"
	BucketRefs   = "sluice_refs"
	// BucketStrikes counts, per job attempt, the deliveries that reached
	// the attempt and ended without a result (a deliverer crashed, was
	// killed or lost NATS): a job that does so too often is poison.
	BucketStrikes = "sluice_strikes"
	// BucketIndex holds the scheduler's last snapshot of the queue index,
	// so that a restart reads only the events stored after it.
	BucketIndex = "sluice_index"

	// ConsumerScheduler reads SLUICE_MSGS and turns messages into jobs.
	ConsumerScheduler = "scheduler"
	// ConsumerResults reads SLUICE_RESULTS; only the scheduler applies policy.
	ConsumerResults = "scheduler-results"
	// ConsumerBouncer reads SLUICE_BOUNCES.
	ConsumerBouncer = "bouncer"
)

// Subject prefixes.
const (
	SubjectMessages = "sluice.msg"
	SubjectJobs     = "sluice.job"
	SubjectSchedule = "sluice.sched"
	SubjectResults  = "sluice.result"
	SubjectBounces  = "sluice.bounce"
	// SubjectKeep is where the scheduler keeps one marker at the end of
	// each stream a mail passes through, read by no consumer (KeepSubject).
	SubjectKeep = "sluice.keep"
)

// KeepSubject is the subject of stream's marker, placed behind the
// stream's newest records every 100 ms while mail flows, so that removing
// the last job, result or message does not empty the stream's last block,
// which nats-server then replaces with a new file (scheduler/keeper.go).
func KeepSubject(stream string) string { return SubjectKeep + "." + stream }

// Headers carried on Sluice's NATS messages besides W3C trace context.
const (
	HeaderQueueID = "Sluice-Queue-Id"
	HeaderJobID   = "Sluice-Job-Id"
	HeaderAttempt = "Sluice-Attempt"
)

// Classes lists the priority classes, most urgent first.
var Classes = []sluicev1.Priority{sluicev1.Priority_PRIORITY_HIGH, sluicev1.Priority_PRIORITY_NORMAL, sluicev1.Priority_PRIORITY_BULK}

// ClassName is the subject token and label value of a priority class:
// "high", "normal" or "bulk". Unspecified counts as normal.
func ClassName(p sluicev1.Priority) string {
	switch p {
	case sluicev1.Priority_PRIORITY_HIGH:
		return "high"
	case sluicev1.Priority_PRIORITY_BULK:
		return "bulk"
	default:
		return "normal"
	}
}

// ParseClass is the inverse of ClassName.
func ParseClass(s string) (sluicev1.Priority, error) {
	switch strings.ToLower(s) {
	case "high":
		return sluicev1.Priority_PRIORITY_HIGH, nil
	case "normal":
		return sluicev1.Priority_PRIORITY_NORMAL, nil
	case "bulk":
		return sluicev1.Priority_PRIORITY_BULK, nil
	}
	return 0, fmt.Errorf("unknown priority class %q (want high, normal or bulk)", s)
}

// MessageSubject is where a message with this queue id is stored.
func MessageSubject(queueID string) string { return SubjectMessages + "." + queueID }

// JobSubject is where a ready job of this class waits for a deliverer.
func JobSubject(p sluicev1.Priority, jobID string) string {
	return SubjectJobs + "." + ClassName(p) + "." + jobID
}

// JobFilter is the consumer filter of one priority class.
func JobFilter(p sluicev1.Priority) string { return SubjectJobs + "." + ClassName(p) + ".>" }

// DelivererConsumer is the durable pull consumer all deliverers share for a class.
func DelivererConsumer(p sluicev1.Priority) string { return "deliver-" + ClassName(p) }

// ScheduleSubject holds the pending retry of a job. There is one per job, so
// publishing to it again (a roll-up) replaces the pending schedule atomically.
func ScheduleSubject(jobID string) string { return SubjectSchedule + "." + jobID }

// ResultSubject is where a deliverer reports an attempt of a job.
func ResultSubject(jobID string) string { return SubjectResults + "." + jobID }

// BounceSubject is where the scheduler asks for a DSN about a job.
func BounceSubject(jobID string) string { return SubjectBounces + "." + jobID }

// JobID names the n-th job (0-based) made from a message.
func JobID(queueID string, n int) string { return fmt.Sprintf("%s-%d", queueID, n) }

var idEncoding = base32.NewEncoding("0123456789ABCDEFGHJKMNPQRSTVWXYZ").WithPadding(base32.NoPadding)

// NewQueueID returns a new queue id: 8 bytes of time in microseconds and 7
// random bytes, Crockford base32, 24 characters. Ids sort by acceptance time
// and are valid as a single NATS subject token and as an SMTP reply word.
func NewQueueID(now time.Time) string {
	var b [15]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixMicro()))
	if _, err := rand.Read(b[8:]); err != nil {
		// crypto/rand does not fail on supported platforms (Go 1.24+).
		panic(err)
	}
	return idEncoding.EncodeToString(b[:])
}

// ValidToken reports whether s can be used as one subject token.
func ValidToken(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r <= ' ' || r == '.' || r == '*' || r == '>' || r > 0x7e {
			return false
		}
	}
	return true
}
