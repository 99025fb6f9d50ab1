// Package hold writes and clears the marks of held and deleted jobs (bucket
// wire.BucketHeld; package marks reads them) and parks held jobs on their
// held subject.
//
// A job on hold lives on wire.HeldSubject(job id) in SLUICE_JOBS, which no
// consumer reads, so nothing can deliver it. Whoever finds a held job where
// it could be delivered parks it there: the admin API for jobs that are
// scheduled or waiting, a deliverer for a job it fetched after the hold, and
// the result processor for the retry of a job that was being attempted when
// it was held. A parked copy rolls up the held subject, so the job is parked
// once however many of them raced.
package hold

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
)

// Put sets the mark of jobID.
func Put(ctx context.Context, kv jetstream.KeyValue, jobID string, m admin.QueueMark) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if _, err := kv.Put(ctx, jobID, b); err != nil {
		return fmt.Errorf("hold: mark %s: %w", jobID, err)
	}
	return nil
}

// Clear removes the mark of jobID; a missing mark is not an error.
func Clear(ctx context.Context, kv jetstream.KeyValue, jobID string) error {
	if err := kv.Purge(ctx, jobID); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("hold: clear mark of %s: %w", jobID, err)
	}
	return nil
}

// ParkMsg is the message that parks job (encoded as data) on its held
// subject, keeping the original's headers (trace context, ids) but none of
// a schedule's. by names who parked it; the message id is
// "<job id>/<attempt>/held/<nonce>", so a replayed park is stored once while
// a job parked again after a release is not mistaken for a duplicate.
func ParkMsg(job *sluicev1.Job, data []byte, orig nats.Header, by, nonce string) *nats.Msg {
	m := &nats.Msg{Subject: wire.HeldSubject(job.GetJobId()), Header: nats.Header{}, Data: data}
	for k, v := range orig {
		// JetStream's own headers (schedule, rollup, message id, and what a
		// direct get adds) are directives or metadata of the original.
		if strings.HasPrefix(k, "Nats-") {
			continue
		}
		m.Header[k] = v
	}
	m.Header.Set(wire.HeaderQueueID, job.GetQueueId())
	m.Header.Set(wire.HeaderJobID, job.GetJobId())
	m.Header.Set(wire.HeaderAttempt, strconv.FormatUint(uint64(job.GetAttempt()), 10))
	m.Header.Set(wire.HeaderHoldMark, by)
	m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	m.Header.Set(jetstream.MsgIDHeader, job.GetJobId()+"/"+strconv.FormatUint(uint64(job.GetAttempt()), 10)+"/held/"+nonce)
	return m
}
