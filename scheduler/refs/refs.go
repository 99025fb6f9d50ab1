// Package refs keeps the set of open jobs of a message that was split into
// more than one job, in the sluice_refs key-value bucket, so that the
// scheduler knows when the last job has finished and the message (and its
// body) can be deleted.
//
// The key is the queue id. The value is the ids of the jobs that are not
// final yet, one per line ("Q-0\nQ-1"), in job order: plain text rather than
// protobuf so that `nats kv get sluice_refs <qid>` is readable by an
// operator. Job ids never contain a newline (they are subject tokens).
//
// Every change is a compare-and-set on the entry's revision, retried on
// conflict, because the results of different jobs of one message are
// processed concurrently, possibly by different scheduler instances.
package refs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// Encode is the value of an entry holding ids.
func Encode(ids []string) []byte { return []byte(strings.Join(ids, "\n")) }

// Decode is the inverse of Encode; an empty value is the empty set.
func Decode(b []byte) []string {
	if len(b) == 0 {
		return nil
	}
	return strings.Split(string(b), "\n")
}

// maxConflicts bounds the compare-and-set retries of one change. A message
// has at most as many jobs as recipients, so even a burst of concurrent
// results settles well within this.
const maxConflicts = 100

// Create records ids as the open jobs of queueID. It is a no-op when an
// entry exists already: a split that is redone after a crash must not
// resurrect jobs that have finished since.
func Create(ctx context.Context, kv jetstream.KeyValue, queueID string, ids []string) error {
	_, err := kv.Create(ctx, queueID, Encode(ids))
	if err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("refs: create %s: %w", queueID, err)
	}
	return nil
}

// Done removes jobID from the open jobs of queueID and reports whether none
// are left, in which case the entry is deleted. It is idempotent: removing a
// job that is no longer listed changes nothing, and a missing entry (the
// last job finished earlier, and the deletion of the message may not have
// completed) reports true so the caller can finish the clean-up.
func Done(ctx context.Context, kv jetstream.KeyValue, queueID, jobID string) (bool, error) {
	for range maxConflicts {
		e, err := kv.Get(ctx, queueID)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return true, nil
		}
		if err != nil {
			return false, fmt.Errorf("refs: get %s: %w", queueID, err)
		}
		ids := Decode(e.Value())
		i := slices.Index(ids, jobID)
		if i < 0 {
			return len(ids) == 0, nil
		}
		ids = slices.Delete(ids, i, i+1)
		if len(ids) == 0 {
			err = kv.Delete(ctx, queueID, jetstream.LastRevision(e.Revision()))
		} else {
			_, err = kv.Update(ctx, queueID, Encode(ids), e.Revision())
		}
		if err == nil {
			return len(ids) == 0, nil
		}
		if !isConflict(err) {
			return false, fmt.Errorf("refs: update %s: %w", queueID, err)
		}
	}
	return false, fmt.Errorf("refs: update %s: still conflicting after %d attempts", queueID, maxConflicts)
}

// Open returns the open jobs of queueID (nil when there is no entry).
func Open(ctx context.Context, kv jetstream.KeyValue, queueID string) ([]string, error) {
	e, err := kv.Get(ctx, queueID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("refs: get %s: %w", queueID, err)
	}
	return Decode(e.Value()), nil
}

// isConflict reports whether err is JetStream refusing a write because the
// entry changed since it was read.
func isConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}
