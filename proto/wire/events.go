package wire

import (
	"encoding/binary"
	"hash/fnv"
	"strconv"
	"strings"
	"time"
)

// Queue events, held jobs and the queue admin API.
//
//	SLUICE_EVENTS   limits, max age       sluice.event.<shard>.<type>     every state change of every job, its first ShardWindow
//	                                      sluice.event.<queue_id>.<type>  the same, after that
//	                                      sluice.event.<shard>.<type>.<seq>  claims of one job copy (ClaimSubject)
//	SLUICE_JOBS                           sluice.held.<job_id>            jobs on hold (no consumer reads them)
//	sluice_held     key-value             <job_id>                        hold and delete marks deliverers obey
//
// Events are protobuf (sluice.v1.QueueEvent, written and read by
// proto/admin; events of earlier versions are JSON, which readers still
// take). They are the history `sluice queue log` prints and the source
// from which every scheduler instance builds its in-memory queue index, so
// the stream must keep them at least as long as a job can live.
//
// An event's subject names its queue id's shard (EventShard) for the first
// ShardWindow of a message's life, and the queue id itself after that:
// JetStream keeps an index entry for every subject a stream holds, and
// subjects named by queue id for every message would hold one entry per
// message for the whole retention (about 220 bytes per message for seven
// days); most messages are done within seconds, and only those that live
// longer (deferred, held, throttled) get subjects of their own. The queue
// id is in the event itself; a reader of one message's events reads its
// shard for the first ShardWindow after its acceptance (a bounded part of
// the stream) and keeps those of its queue id, and reads the subjects of
// its own (OwnEventFilter), where Sluice before 2026-12-07 stored all of
// them.
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

// EventShards is how many shards the events are spread over: a fixed
// number of subjects per event type, whatever the traffic, and a reader of
// one message's events reads 1/EventShards of the events since it was
// received.
const EventShards = 4096

// ClaimTTL is how long JetStream keeps a deliverer's "attempt" claim
// (ClaimSubject). A claim is asked about while its job copy can be handed
// out again: during the attempt, through which the deliverer records the
// claim again every quarter of this, and for the ten minutes a deliverer
// remembers a finished attempt, so a claim at most five minutes old when
// its attempt ends must last ten more. The outcome event of the attempt
// (delivered, deferred, bounced) carries its start and deliverer, so the
// history loses only the record of a try that never reported.
const ClaimTTL = 20 * time.Minute

// EventShard is the subject token of queueID's shard: "e" and three hex
// digits of its FNV-1a hash, never a queue id (24 characters).
func EventShard(queueID string) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(queueID))
	const hex = "0123456789abcdef"
	n := h.Sum32() % EventShards
	return string([]byte{'e', hex[n>>8&0xf], hex[n>>4&0xf], hex[n&0xf]})
}

// ShardWindow is how long after a message's acceptance its events go to
// its shard; later ones go to subjects of its own.
const ShardWindow = 15 * time.Minute

// EventSubject is where an event of this type about a job of queueID,
// recorded at time at, goes: its shard within ShardWindow of the time the
// queue id carries, a subject of its own after that (and always for a
// queue id not made by NewQueueID).
func EventSubject(queueID, typ string, at time.Time) string {
	if InShard(queueID, at) {
		return shardSubject(queueID, typ)
	}
	return SubjectEvents + "." + queueID + "." + typ
}

// InShard reports whether an event about queueID recorded at time at goes
// to its shard (EventSubject).
func InShard(queueID string, at time.Time) bool {
	t, ok := QueueIDTime(queueID)
	return ok && at.Sub(t) < ShardWindow
}

func shardSubject(queueID, typ string) string {
	return SubjectEvents + "." + EventShard(queueID) + "." + typ
}

// ClaimSubject is where an event that claims one copy of a job goes: the
// copy stored at sequence seq of SLUICE_JOBS, which a deliverer claims with
// its "attempt" event and an operator's prioritize with its
// "reprioritised" event. Each is published only while ClaimFilter matches
// nothing (Nats-Expected-Last-Subject-Sequence 0 on that filter), so
// exactly one of them acts on the copy: the deliverer attempts it, or the
// scheduler moves it to another class and the deliverer drops it.
//
// Claims are always on the shard's subjects, whatever the job's age: the
// claimers and those who look a claim up must agree on its subject. An
// attempt claim expires (ClaimTTL); the outcome event of the attempt
// records what the log shows of it.
func ClaimSubject(queueID, typ string, seq uint64) string {
	return shardSubject(queueID, typ) + "." + strconv.FormatUint(seq, 10)
}

// ClaimFilter matches every claim of the job copy at sequence seq (a
// sequence of SLUICE_JOBS names one copy of one job, so the filter
// matches no other job's claims).
func ClaimFilter(queueID string, seq uint64) string {
	return SubjectEvents + "." + EventShard(queueID) + ".*." + strconv.FormatUint(seq, 10)
}

// ClaimType is the event type of a claim subject, "" when subject is not one.
func ClaimType(subject string) string {
	t := strings.Split(subject, ".")
	if len(t) != 5 || t[0]+"."+t[1] != SubjectEvents {
		return ""
	}
	return t[3]
}

// ShardFilter matches the events of one message in its shard, and those of
// the other messages of its shard: a reader keeps the events whose QueueID
// is queueID.
func ShardFilter(queueID string) string { return SubjectEvents + "." + EventShard(queueID) + ".>" }

// OwnEventFilter matches the events of one message on subjects of its own:
// those recorded more than ShardWindow after its acceptance, and all of
// them as Sluice before 2026-12-07 stored them.
func OwnEventFilter(queueID string) string { return SubjectEvents + "." + queueID + ".>" }

// QueueIDTime is the acceptance time a queue id made by NewQueueID
// carries, and false for any other id.
func QueueIDTime(queueID string) (time.Time, bool) {
	if len(queueID) != 24 {
		return time.Time{}, false
	}
	b, err := idEncoding.DecodeString(queueID)
	if err != nil || len(b) != 15 {
		return time.Time{}, false
	}
	return time.UnixMicro(int64(binary.BigEndian.Uint64(b[:8]))), true
}

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
