package wire

import (
	"strconv"
	"strings"
)

// Queue events, held jobs and the queue admin API.
//
//	SLUICE_EVENTS   limits, max age       sluice.event.<queue_id>.<type>  every state change of every job
//	                                      sluice.event.<queue_id>.<type>.<seq>  claims of one job copy (ClaimSubject)
//	SLUICE_JOBS                           sluice.held.<job_id>            jobs on hold (no consumer reads them)
//	sluice_held     key-value             <job_id>                        hold and delete marks deliverers obey
//
// Events are protobuf (sluice.v1.QueueEvent, written and read by
// proto/admin; events of earlier versions are JSON, which readers still
// take). They are the history `sluice queue log` prints and the source
// from which every scheduler instance builds its in-memory queue index, so
// the stream must keep them at least as long as a job can live.
const (
	StreamEvents  = "SLUICE_EVENTS"
	SubjectEvents = "sluice.event"
	SubjectHeld   = "sluice.held"
	BucketHeld    = "sluice_held"

	// SchedulerService is the nats micro service name of the scheduler's
	// admin API (`nats micro info sluice-scheduler`).
	SchedulerService = "sluice-scheduler"
	// AdminQueuePrefix is the subject prefix of the queue admin endpoints.
	AdminQueuePrefix = "sluice.admin.queue"
)

// Event types: the last token of an event subject and QueueEvent.Type.
const (
	EventReceived      = "received"      // the scheduler made the job from an accepted message
	EventScheduled     = "scheduled"     // an operator made the job due (retry)
	EventAttempt       = "attempt"       // a deliverer is about to attempt the job
	EventDelivered     = "delivered"     // every recipient is done, none failed
	EventDeferred      = "deferred"      // some recipients were deferred; a retry is scheduled
	EventBounced       = "bounced"       // done, some recipients failed permanently
	EventExpired       = "expired"       // done, deferred recipients passed the queue lifetime
	EventHeld          = "held"          // put on hold by an operator
	EventReleased      = "released"      // released from hold
	EventDeleted       = "deleted"       // removed by an operator
	EventReprioritised = "reprioritised" // moved to another priority class by an operator
	EventThrottled     = "throttled"     // a deliverer left the job waiting: its site is at its limits or suspended
)

// Admin endpoint names of the queue API, under AdminQueuePrefix.
const (
	AdminList       = "list"
	AdminShow       = "show"
	AdminLog        = "log"
	AdminStats      = "stats"
	AdminHold       = "hold"
	AdminRelease    = "release"
	AdminDelete     = "delete"
	AdminRetry      = "retry"
	AdminPrioritize = "prioritize"
)

// HeaderHoldMark is set on a parked job (HeldSubject) by whoever parked it.
const HeaderHoldMark = "Sluice-Held-By"

// EventSubject is where an event of this type about a job of queueID goes.
func EventSubject(queueID, typ string) string { return SubjectEvents + "." + queueID + "." + typ }

// ClaimSubject is where an event that claims one copy of a job goes: the
// copy stored at sequence seq of SLUICE_JOBS, which a deliverer claims with
// its "attempt" event and an operator's prioritize with its
// "reprioritised" event. Each is published only while ClaimFilter matches
// nothing (Nats-Expected-Last-Subject-Sequence 0 on that filter), so
// exactly one of them acts on the copy: the deliverer attempts it, or the
// scheduler moves it to another class and the deliverer drops it.
func ClaimSubject(queueID, typ string, seq uint64) string {
	return SubjectEvents + "." + queueID + "." + typ + "." + strconv.FormatUint(seq, 10)
}

// ClaimFilter matches every claim of the job copy at sequence seq.
func ClaimFilter(queueID string, seq uint64) string {
	return SubjectEvents + "." + queueID + ".*." + strconv.FormatUint(seq, 10)
}

// ClaimType is the event type of a claim subject, "" when subject is not one.
func ClaimType(subject string) string {
	t := strings.Split(subject, ".")
	if len(t) != 5 || t[0]+"."+t[1] != SubjectEvents {
		return ""
	}
	return t[3]
}

// EventFilter matches every event of one message.
func EventFilter(queueID string) string { return SubjectEvents + "." + queueID + ".>" }

// HeldSubject is where a job on hold waits; nothing consumes it.
func HeldSubject(jobID string) string { return SubjectHeld + "." + jobID }

// AdminQueueSubject is the subject of one queue admin endpoint.
func AdminQueueSubject(endpoint string) string { return AdminQueuePrefix + "." + endpoint }

// QueueIDOf returns the queue id of a job id made by JobID, or "" when
// jobID is not one.
func QueueIDOf(jobID string) string {
	i := strings.LastIndexByte(jobID, '-')
	if i <= 0 {
		return ""
	}
	return jobID[:i]
}
