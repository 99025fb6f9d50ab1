// Package admin holds the JSON request and response bodies of the services'
// admin APIs (nats micro endpoints under sluice.admin.<area>), shared by the
// services that answer them and the sluice CLI that asks.
package admin

import "time"

// This file is the queue API of the scheduler (service wire.SchedulerService,
// subjects wire.AdminQueueSubject(endpoint)) and the queue events every
// service records in SLUICE_EVENTS.
//
// Errors come back as nats micro errors (headers Nats-Service-Error and
// Nats-Service-Error-Code): 400 for a bad request, 404 for an unknown id or
// a filter that matches nothing, 409 for a job whose state does not allow
// the change, 503 while the index is still being rebuilt, 500 otherwise.

// Job states as they appear in rows, filters and events.
const (
	StateReady    = "ready"    // waiting for a deliverer in its class's work queue
	StateActive   = "active"   // a deliverer is attempting it
	StateDeferred = "deferred" // waiting for its next attempt (a message schedule)
	StateHeld     = "held"     // on hold until released
	StateDone     = "done"     // finished: delivered, bounced, expired or deleted
)

// QueueFilter selects jobs; every field that is set must match. Address
// fields match a whole address case-insensitively, or every address of a
// domain when they start with "@" ("@example.com"); "<>" is the null
// sender.
type QueueFilter struct {
	States     []string `json:"states,omitempty"`
	Domain     string   `json:"domain,omitempty"`
	Sender     string   `json:"sender,omitempty"`
	Recipient  string   `json:"recipient,omitempty"`
	Priorities []string `json:"priorities,omitempty"`
	// Reasons are deferral reasons: dns, connect, tls, remote, timeout,
	// throttled, protocol, null_mx, no_domain, internal, require_tls.
	Reasons []string `json:"reasons,omitempty"`
	// MinAge and MaxAge bound the time since the message was received, as
	// Go durations ("30m", "2h").
	MinAge string `json:"min_age,omitempty"`
	MaxAge string `json:"max_age,omitempty"`
}

// Empty reports whether the filter selects every job.
func (f QueueFilter) Empty() bool {
	return len(f.States) == 0 && f.Domain == "" && f.Sender == "" && f.Recipient == "" &&
		len(f.Priorities) == 0 && len(f.Reasons) == 0 && f.MinAge == "" && f.MaxAge == ""
}

// QueueListRequest asks for one page of matching jobs, oldest first.
type QueueListRequest struct {
	Filter QueueFilter `json:"filter"`
	// Cursor is the Next of the previous page; empty for the first page.
	Cursor string `json:"cursor,omitempty"`
	// Limit is the most rows wanted; the service may return fewer.
	Limit int `json:"limit,omitempty"`
}

// QueueListResponse is one page. Next is empty on the last page.
type QueueListResponse struct {
	Rows  []QueueRow `json:"rows"`
	Next  string     `json:"next,omitempty"`
	Total int        `json:"total"`
}

// QueueRow is one job, shaped like a line of `postqueue -j` (queue_name,
// queue_id, arrival_time, message_size, sender, recipients) with Sluice's
// additions.
type QueueRow struct {
	QueueName   string           `json:"queue_name"` // the state
	QueueID     string           `json:"queue_id"`
	JobID       string           `json:"job_id"`
	ArrivalTime int64            `json:"arrival_time"` // Unix seconds
	MessageSize int64            `json:"message_size"`
	Sender      string           `json:"sender"`
	Recipients  []QueueRecipient `json:"recipients"`
	// MoreRecipients counts recipients left out of a long list.
	MoreRecipients int    `json:"more_recipients,omitempty"`
	Domain         string `json:"domain"`
	Priority       string `json:"priority"`
	// Attempts is how many delivery attempts were started.
	Attempts    int    `json:"attempts"`
	NextAttempt int64  `json:"next_attempt,omitempty"` // Unix seconds
	Reason      string `json:"reason,omitempty"`
	LastError   string `json:"last_error,omitempty"`
}

// QueueRecipient is a recipient in a row, with the reply that deferred it.
type QueueRecipient struct {
	Address     string `json:"address"`
	DelayReason string `json:"delay_reason,omitempty"`
}

// QueueIDRequest names a message (queue id: all its jobs) or one job.
type QueueIDRequest struct {
	ID string `json:"id"`
}

// QueueShowResponse describes every job the id names.
type QueueShowResponse struct {
	Jobs []QueueJob `json:"jobs"`
}

// QueueJob is everything known about one job, folded from its events.
type QueueJob struct {
	JobID       string                 `json:"job_id"`
	QueueID     string                 `json:"queue_id"`
	State       string                 `json:"state"`
	Outcome     string                 `json:"outcome,omitempty"` // the final event type when done
	Envelope    *QueueEnvelope         `json:"envelope,omitempty"`
	Priority    string                 `json:"priority"`
	Recipients  []QueueRecipientStatus `json:"recipients"`
	Attempts    []QueueAttempt         `json:"attempts"`
	NextAttempt time.Time              `json:"next_attempt,omitzero"`
	TraceID     string                 `json:"trace_id,omitempty"`
	Updated     time.Time              `json:"updated,omitzero"`
	// Throttled says why the job waits without an attempt when a deliverer
	// held it back for its receiving site ("throttled by site ...": busy,
	// suspended, slowed down), from its latest throttled event since its
	// last attempt began.
	Throttled string `json:"throttled,omitempty"`
}

// QueueRecipientStatus is the latest status of one recipient.
type QueueRecipientStatus struct {
	Address string `json:"address"`
	// Status is pending, delivered, failed or deleted.
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
	Reply  string `json:"reply,omitempty"`
}

// QueueAttempt is one delivery attempt.
type QueueAttempt struct {
	Attempt    uint32    `json:"attempt"`
	Started    time.Time `json:"started,omitzero"`
	Finished   time.Time `json:"finished,omitzero"`
	Deliverer  string    `json:"deliverer,omitempty"`
	RemoteHost string    `json:"remote_host,omitempty"`
	// Result is delivered, deferred, bounced, expired, or empty while the
	// attempt runs (or when its result was never recorded).
	Result string `json:"result,omitempty"`
	Reason string `json:"reason,omitempty"`
	Reply  string `json:"reply,omitempty"`
	// TLS is the session's TLS, when the attempt reached a server.
	TLS QueueTLS `json:"tls,omitzero"`
}

// QueueLogResponse is the history of a message or job, oldest first.
type QueueLogResponse struct {
	Events []QueueEvent `json:"events"`
}

// QueueStatsRequest asks for the shape of the queue.
type QueueStatsRequest struct {
	Filter QueueFilter `json:"filter"`
	// Top limits the domain rows (0: all).
	Top int `json:"top,omitempty"`
}

// QueueStatsResponse is the qshape-style view of the queue. Buckets are the
// upper bounds of the age columns in minutes (as in qshape: 5 10 20 40 ...),
// the last column counting everything older than the last bound.
type QueueStatsResponse struct {
	Buckets  []int           `json:"buckets"`
	Total    QueueShapeRow   `json:"total"`
	Domains  []QueueShapeRow `json:"domains"`
	Jobs     int             `json:"jobs"`
	ByState  map[string]int  `json:"by_state"`
	ByClass  map[string]int  `json:"by_priority"`
	ByReason map[string]int  `json:"by_reason"`
	Delay    QueueDelay      `json:"delivery_delay"`
	// IndexJobs is the size of the answering scheduler's index; HeapBytes
	// is that process's live heap as of its last garbage collection, and
	// IndexBytes what the index holds outside that heap.
	IndexJobs  int    `json:"index_jobs"`
	HeapBytes  uint64 `json:"heap_bytes"`
	IndexBytes int    `json:"index_bytes"`
	Instance   string `json:"instance"`
}

// QueueShapeRow is one line of the table: jobs by age bucket.
type QueueShapeRow struct {
	Domain string `json:"domain"`
	Total  int    `json:"total"`
	Counts []int  `json:"counts"`
}

// QueueDelay are delivery delay percentiles (acceptance to delivery, per
// delivered recipient) over the recent Window.
type QueueDelay struct {
	Window  string  `json:"window"`
	Count   int     `json:"count"`
	P50     float64 `json:"p50_seconds"`
	P90     float64 `json:"p90_seconds"`
	P99     float64 `json:"p99_seconds"`
	Max     float64 `json:"max_seconds"`
	Elapsed string  `json:"elapsed,omitempty"`
}

// QueueActionRequest asks for hold, release, delete, retry or prioritize of
// the jobs named by IDs (queue ids or job ids) or matched by Filter. One of
// the two must be given.
type QueueActionRequest struct {
	IDs    []string     `json:"ids,omitempty"`
	Filter *QueueFilter `json:"filter,omitempty"`
	// DryRun counts what would change and changes nothing.
	DryRun bool `json:"dry_run,omitempty"`
	// Bounce (delete) sends a failure DSN to the sender.
	Bounce bool `json:"bounce,omitempty"`
	// Priority (prioritize) is the new class: high, normal or bulk.
	Priority string `json:"priority,omitempty"`
	// KeepSchedule (release) leaves a released job waiting for the retry
	// time it had; by default a released job is tried now.
	KeepSchedule bool `json:"keep_schedule,omitempty"`
	// Actor names who asked, for the events ("user@host").
	Actor string `json:"actor,omitempty"`
}

// QueueActionResponse says what happened.
type QueueActionResponse struct {
	Action  string      `json:"action"`
	DryRun  bool        `json:"dry_run,omitempty"`
	Matched int         `json:"matched"`
	Changed int         `json:"changed"`
	Skipped []QueueSkip `json:"skipped,omitempty"`
	// SkippedTotal counts skipped jobs, of which Skipped lists the first.
	SkippedTotal int `json:"skipped_total,omitempty"`
}

// QueueSkip is a matched job that was not changed, and why.
type QueueSkip struct {
	JobID  string `json:"job_id"`
	Reason string `json:"reason"`
}

// QueueEvent is one state change of one job, stored in SLUICE_EVENTS under
// wire.EventSubject(queue id, type, time). State is the job's state after the
// event; Attempt the attempt it concerns.
type QueueEvent struct {
	Type     string    `json:"type"`
	Time     time.Time `json:"time"`
	QueueID  string    `json:"queue_id"`
	JobID    string    `json:"job_id"`
	State    string    `json:"state,omitempty"`
	Attempt  uint32    `json:"attempt,omitempty"`
	Priority string    `json:"priority,omitempty"`
	TraceID  string    `json:"trace_id,omitempty"`
	// Instance is the deliverer of an attempt; Actor who asked for an
	// operator's change.
	Instance string `json:"instance,omitempty"`
	Actor    string `json:"actor,omitempty"`
	// Envelope is set on received events.
	Envelope *QueueEnvelope `json:"envelope,omitempty"`
	// Outcome events: the first deferral reason and reply, the remote host,
	// when the next attempt is due, and every recipient's result.
	Reason      string                 `json:"reason,omitempty"`
	Error       string                 `json:"error,omitempty"`
	RemoteHost  string                 `json:"remote_host,omitempty"`
	Started     time.Time              `json:"started,omitzero"`
	NextAttempt time.Time              `json:"next_attempt,omitzero"`
	Recipients  []QueueRecipientResult `json:"recipients,omitempty"`
	Note        string                 `json:"note,omitempty"`
}

// QueueEnvelope is what a received event records about the job.
type QueueEnvelope struct {
	Sender     string    `json:"sender"`
	Recipients []string  `json:"recipients"`
	Domain     string    `json:"domain"`
	Size       int64     `json:"size"`
	Received   time.Time `json:"received"`
	Expires    time.Time `json:"expires,omitzero"`
	JobsTotal  uint32    `json:"jobs_total,omitempty"`
	ENVID      string    `json:"envid,omitempty"`
	RET        string    `json:"ret,omitempty"`
	RequireTLS bool      `json:"require_tls,omitempty"`
	SMTPUTF8   bool      `json:"smtputf8,omitempty"`
	IsDSN      bool      `json:"is_dsn,omitempty"`
}

// QueueRecipientResult is one recipient's result in an outcome event.
type QueueRecipientResult struct {
	Address    string `json:"address"`
	Outcome    string `json:"outcome"` // delivered, deferred, failed
	Reason     string `json:"reason,omitempty"`
	Reply      string `json:"reply,omitempty"`
	RemoteHost string `json:"remote_host,omitempty"`
	// TLS is how the attempt used TLS; zero when no session was made.
	TLS QueueTLS `json:"tls,omitzero"`
}

// QueueTLS is the TLS of one delivery attempt (sluice.v1.TlsOutcome).
type QueueTLS struct {
	// Policy is the policy that applied: none, may, encrypt, verify, dane,
	// "mta-sts enforce", "mta-sts testing".
	Policy string `json:"policy,omitempty"`
	// Version ("1.3") and Cipher are empty for a clear-text session.
	Version string `json:"version,omitempty"`
	Cipher  string `json:"cipher,omitempty"`
	// VerifiedBy is webpki, dane-ee or dane-ta; empty when the
	// certificate was not verified.
	VerifiedBy string `json:"verified_by,omitempty"`
	// Reported is a failure an MTA-STS testing policy let through.
	Reported string `json:"reported,omitempty"`
}

// Marks in the wire.BucketHeld bucket, keyed by job id. Deliverers read the
// mark of every job before they attempt it, and the scheduler before it
// schedules a retry: a held job is parked on wire.HeldSubject instead, a
// deleted one is dropped.
const (
	MarkHold   = "hold"
	MarkDelete = "delete"
)

// QueueMark is the value of a mark.
type QueueMark struct {
	Action string    `json:"action"`
	Time   time.Time `json:"time"`
	Actor  string    `json:"actor,omitempty"`
}
