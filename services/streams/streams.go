// Package streams creates and updates Sluice's JetStream streams, consumers
// and buckets. Every service provisions what it uses when it starts, so the
// system comes up in any order and a configuration change (replicas, limits)
// is applied by restarting a service.
package streams

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
)

// LifetimeGrace is how long messages, jobs and bodies are kept beyond the
// queue lifetime. The scheduler deletes each message as soon as its last job
// finishes; this only bounds what a lost deletion could leave behind.
const LifetimeGrace = 24 * time.Hour

// Configs returns the stream configurations for the queue settings.
func Configs(q config.Queue) []jetstream.StreamConfig {
	maxAge := q.Lifetime + LifetimeGrace
	return []jetstream.StreamConfig{
		{
			// Accepted messages. Discard-new with a byte cap makes a full
			// queue refuse writes (the ingress answers 451) instead of
			// silently dropping the oldest mail.
			Name:        wire.StreamMessages,
			Description: "Sluice: accepted messages (envelope and body), kept until every job is done",
			Subjects:    []string{wire.SubjectMessages + ".>", wire.KeepSubject(wire.StreamMessages)},
			Retention:   jetstream.LimitsPolicy,
			Discard:     jetstream.DiscardNew,
			MaxBytes:    orUnlimited(q.MaxBytes),
			MaxMsgs:     -1,
			MaxAge:      maxAge,
			Storage:     jetstream.FileStorage,
			Replicas:    q.Replicas,
			Duplicates:  q.DuplicateWindow,
			AllowDirect: true,
			MaxMsgSize:  -1,
		},
		{
			// Jobs. A work queue: a job is removed when a deliverer
			// acknowledges it. Message schedules hold retries durably in the
			// same stream (a schedule's target must be one of its subjects).
			// Schedules require discard-old, so this stream has no byte or
			// count cap that could drop a job; the message stream's cap is
			// the backpressure point.
			Name:        wire.StreamJobs,
			Description: "Sluice: delivery jobs by priority class, their retry schedules, and held jobs",
			// Held jobs wait on their own subjects, which no consumer
			// reads, until an operator releases them.
			// The keep subject holds the scheduler's marker (wire.KeepSubject).
			Subjects:          []string{wire.SubjectJobs + ".>", wire.SubjectSchedule + ".>", wire.SubjectHeld + ".>", wire.KeepSubject(wire.StreamJobs)},
			Retention:         jetstream.WorkQueuePolicy,
			Discard:           jetstream.DiscardOld,
			MaxBytes:          -1,
			MaxMsgs:           -1,
			MaxAge:            maxAge,
			Storage:           jetstream.FileStorage,
			Replicas:          q.Replicas,
			Duplicates:        q.DuplicateWindow,
			AllowMsgSchedules: true,
			AllowRollup:       true,
			AllowDirect:       true,
		},
		{
			Name:        wire.StreamResults,
			Description: "Sluice: deliverer reports, consumed by the scheduler",
			Subjects:    []string{wire.SubjectResults + ".>", wire.KeepSubject(wire.StreamResults)},
			Retention:   jetstream.WorkQueuePolicy,
			MaxAge:      maxAge,
			MaxBytes:    -1,
			MaxMsgs:     -1,
			Storage:     jetstream.FileStorage,
			Replicas:    q.Replicas,
			Duplicates:  q.DuplicateWindow,
		},
		{
			Name:        wire.StreamBounces,
			Description: "Sluice: DSN requests, consumed by the bouncer",
			Subjects:    []string{wire.SubjectBounces + ".>"},
			Retention:   jetstream.WorkQueuePolicy,
			MaxAge:      maxAge,
			MaxBytes:    -1,
			MaxMsgs:     -1,
			Storage:     jetstream.FileStorage,
			Replicas:    q.Replicas,
			Duplicates:  q.DuplicateWindow,
		},
		{
			// The history of every job: what `sluice queue log` prints and
			// what the schedulers build their queue index from. Limits
			// retention by age only, so no event a live job needs is
			// dropped for space.
			Name:        wire.StreamEvents,
			Description: "Sluice: every state change of every job (received, attempts, outcomes, operator actions)",
			Subjects:    []string{wire.SubjectEvents + ".>"},
			Retention:   jetstream.LimitsPolicy,
			Discard:     jetstream.DiscardOld,
			MaxAge:      q.EventsRetention,
			MaxBytes:    -1,
			MaxMsgs:     -1,
			Storage:     jetstream.FileStorage,
			Replicas:    q.Replicas,
			Duplicates:  q.DuplicateWindow,
			AllowDirect: true,
			// A deliverer's attempt claim expires (wire.ClaimTTL): the
			// one subject per job copy each claim is on goes with it.
			AllowMsgTTL: true,
			PersistMode: eventsPersistMode(q),
		},
	}
}

func eventsPersistMode(q config.Queue) jetstream.PersistModeType {
	if q.EventsPersistMode() == config.PersistAsync {
		return jetstream.AsyncPersistMode
	}
	return jetstream.DefaultPersistMode
}

func orUnlimited(n int64) int64 {
	if n <= 0 {
		return -1
	}
	return n
}

// Provision creates or updates every stream and bucket.
func Provision(ctx context.Context, js jetstream.JetStream, q config.Queue) error {
	for _, sc := range Configs(q) {
		// JetStream refuses to change a stream's persist mode: a stream
		// keeps the mode it was created with.
		if cur, err := js.Stream(ctx, sc.Name); err == nil {
			sc.PersistMode = cur.CachedInfo().Config.PersistMode
			if upToDate(cur.CachedInfo().Config, sc) {
				continue
			}
		} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("provision stream %s: %w", sc.Name, err)
		}
		if _, err := racing(func() (jetstream.Stream, error) { return js.CreateOrUpdateStream(ctx, sc) }); err != nil {
			return fmt.Errorf("provision stream %s: %w", sc.Name, err)
		}
	}
	if _, err := Bodies(ctx, js, q); err != nil {
		return err
	}
	if _, err := Refs(ctx, js, q); err != nil {
		return err
	}
	if _, err := Held(ctx, js, q); err != nil {
		return err
	}
	if _, err := Shaping(ctx, js, q); err != nil {
		return err
	}
	if _, err := MTASTS(ctx, js, q); err != nil {
		return err
	}
	if _, err := Strikes(ctx, js, q); err != nil {
		return err
	}
	if _, err := TLSRPT(ctx, js, q); err != nil {
		return err
	}
	if _, err := IndexSnapshots(ctx, js, q); err != nil {
		return err
	}
	return nil
}

// upToDate reports whether an existing stream already has every setting
// Provision manages, so that no update is sent. Services start together and
// each provisions everything: needless updates would race with the others'
// consumer creation on the same stream (nats-server 2.15 reads the store's
// configuration without a lock there), and cost a write of the stream's
// metadata each.
func upToDate(cur, want jetstream.StreamConfig) bool {
	return cur.Description == want.Description &&
		slices.Equal(cur.Subjects, want.Subjects) &&
		cur.Retention == want.Retention && cur.Discard == want.Discard &&
		cur.MaxAge == want.MaxAge && cur.Storage == want.Storage &&
		max(cur.Replicas, 1) == max(want.Replicas, 1) &&
		orUnlimited(cur.MaxBytes) == orUnlimited(want.MaxBytes) &&
		orUnlimited(cur.MaxMsgs) == orUnlimited(want.MaxMsgs) &&
		orUnlimited(int64(cur.MaxMsgSize)) == orUnlimited(int64(want.MaxMsgSize)) &&
		(want.Duplicates == 0 || cur.Duplicates == want.Duplicates) &&
		cur.AllowDirect == want.AllowDirect && cur.AllowMsgSchedules == want.AllowMsgSchedules &&
		cur.AllowRollup == want.AllowRollup && cur.PersistMode == want.PersistMode &&
		cur.AllowMsgTTL == want.AllowMsgTTL
}

// bucketUpToDate reports whether the stream behind a key-value or object
// bucket already has the settings Sluice gives it: its description, ttl
// (0 for none), file storage and the queue's replicas (see upToDate).
func bucketUpToDate(ctx context.Context, js jetstream.JetStream, stream, desc string, ttl time.Duration, q config.Queue) bool {
	str, err := js.Stream(ctx, stream)
	if err != nil {
		return false
	}
	c := str.CachedInfo().Config
	return c.Description == desc && c.MaxAge == ttl && c.Storage == jetstream.FileStorage &&
		max(c.Replicas, 1) == max(q.Replicas, 1)
}

// Held returns the bucket of hold and delete marks, keyed by job id, that
// deliverers check before every attempt and the scheduler checks before it
// schedules a retry, creating it if needed. A mark outlives any job it can
// be about.
func Held(ctx context.Context, js jetstream.JetStream, q config.Queue) (jetstream.KeyValue, error) {
	kv, err := keyValue(ctx, js, q, jetstream.KeyValueConfig{
		Bucket:      wire.BucketHeld,
		Description: "Sluice: jobs on hold or deleted by an operator",
	})
	if err != nil {
		return nil, fmt.Errorf("provision key-value %s: %w", wire.BucketHeld, err)
	}
	return kv, nil
}

// ShapingLimitMarkerTTL is how long the shaping bucket keeps the marker of
// a key removed by its TTL: long enough for every watcher to see it.
const ShapingLimitMarkerTTL = time.Minute

// Shaping returns the deliverers' traffic shaping bucket (connection slots,
// concurrency and suspensions per receiving site), creating it if needed.
// Its keys carry their own TTLs (a slot expires a few seconds after the
// deliverer holding it stopped renewing it), so the bucket has no TTL of
// its own and needs per-key TTL support (LimitMarkerTTL, nats-server 2.11).
func Shaping(ctx context.Context, js jetstream.JetStream, q config.Queue) (jetstream.KeyValue, error) {
	cfg := jetstream.KeyValueConfig{
		Bucket:         wire.BucketShaping,
		Description:    "Sluice: deliverers' connection slots, concurrency and suspensions per receiving site",
		Storage:        jetstream.FileStorage,
		Replicas:       q.Replicas,
		LimitMarkerTTL: ShapingLimitMarkerTTL,
	}
	if str, err := js.Stream(ctx, "KV_"+cfg.Bucket); err == nil {
		c := str.CachedInfo().Config
		if c.Description == cfg.Description && c.SubjectDeleteMarkerTTL == cfg.LimitMarkerTTL && c.AllowMsgTTL &&
			max(c.Replicas, 1) == max(q.Replicas, 1) {
			if kv, err := js.KeyValue(ctx, cfg.Bucket); err == nil {
				return kv, nil
			}
		}
	}
	kv, err := racing(func() (jetstream.KeyValue, error) { return js.CreateOrUpdateKeyValue(ctx, cfg) })
	if err != nil {
		return nil, fmt.Errorf("provision key-value %s: %w", wire.BucketShaping, err)
	}
	return kv, nil
}

// StrikesTTL is how long a job attempt's strike count is kept: the
// deliveries of one attempt happen within minutes of each other.
const StrikesTTL = time.Hour

// Strikes returns the bucket of strike counts per job attempt (see
// wire.BucketStrikes), creating it if needed.
func Strikes(ctx context.Context, js jetstream.JetStream, q config.Queue) (jetstream.KeyValue, error) {
	cfg := jetstream.KeyValueConfig{
		Bucket:      wire.BucketStrikes,
		Description: "Sluice: deliveries of a job attempt that ended without a result",
		TTL:         StrikesTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    q.Replicas,
	}
	if str, err := js.Stream(ctx, "KV_"+cfg.Bucket); err == nil {
		c := str.CachedInfo().Config
		if c.Description == cfg.Description && c.MaxAge == cfg.TTL && max(c.Replicas, 1) == max(q.Replicas, 1) {
			if kv, err := js.KeyValue(ctx, cfg.Bucket); err == nil {
				return kv, nil
			}
		}
	}
	kv, err := racing(func() (jetstream.KeyValue, error) { return js.CreateOrUpdateKeyValue(ctx, cfg) })
	if err != nil {
		return nil, fmt.Errorf("provision key-value %s: %w", wire.BucketStrikes, err)
	}
	return kv, nil
}

// Bodies returns the object store for large bodies, creating it if needed.
func Bodies(ctx context.Context, js jetstream.JetStream, q config.Queue) (jetstream.ObjectStore, error) {
	return objectStore(ctx, js, q, jetstream.ObjectStoreConfig{
		Bucket:      wire.BucketBodies,
		Description: "Sluice: message bodies too large to store inline",
		TTL:         q.Lifetime + LifetimeGrace,
	})
}

// objectStore opens the bucket cfg names, creating or updating it with
// file storage and the queue's replicas unless it already has them.
func objectStore(ctx context.Context, js jetstream.JetStream, q config.Queue, cfg jetstream.ObjectStoreConfig) (jetstream.ObjectStore, error) {
	cfg.Storage = jetstream.FileStorage
	cfg.Replicas = q.Replicas
	if bucketUpToDate(ctx, js, ObjectStream(cfg.Bucket), cfg.Description, cfg.TTL, q) {
		if os, err := js.ObjectStore(ctx, cfg.Bucket); err == nil {
			return os, nil
		}
	}
	os, err := racing(func() (jetstream.ObjectStore, error) { return js.CreateOrUpdateObjectStore(ctx, cfg) })
	if err != nil {
		return nil, fmt.Errorf("provision object store %s: %w", cfg.Bucket, err)
	}
	return os, nil
}

// IndexSnapshots returns the object store for the scheduler's snapshots of
// the queue index, creating it if needed. A snapshot is kept until the next
// replaces it: it holds jobs as old as the queue's lifetime.
func IndexSnapshots(ctx context.Context, js jetstream.JetStream, q config.Queue) (jetstream.ObjectStore, error) {
	return objectStore(ctx, js, q, jetstream.ObjectStoreConfig{
		Bucket:      wire.BucketIndex,
		Description: "Sluice: snapshots of the scheduler's queue index",
	})
}

// Refs returns the bucket that counts the open jobs of messages split into
// more than one job, creating it if needed.
func Refs(ctx context.Context, js jetstream.JetStream, q config.Queue) (jetstream.KeyValue, error) {
	kv, err := keyValue(ctx, js, q, jetstream.KeyValueConfig{
		Bucket:      wire.BucketRefs,
		Description: "Sluice: open jobs of messages split across destinations",
	})
	if err != nil {
		return nil, fmt.Errorf("provision key-value %s: %w", wire.BucketRefs, err)
	}
	// Reads of this bucket decide whether a message is finished and may be
	// deleted, so they go to the leader, not to a replica that may not
	// have caught up (see LeaderMsg): a bucket without direct gets is read
	// through the leader by nats.go. It is small (messages split across
	// destinations, until their last job ends).
	str, err := js.Stream(ctx, "KV_"+wire.BucketRefs)
	if err != nil {
		return nil, fmt.Errorf("provision key-value %s: %w", wire.BucketRefs, err)
	}
	if c := str.CachedInfo().Config; c.AllowDirect {
		c.AllowDirect = false
		if _, err := js.UpdateStream(ctx, c); err != nil {
			return nil, fmt.Errorf("provision key-value %s: leader reads: %w", wire.BucketRefs, err)
		}
		if kv, err = js.KeyValue(ctx, wire.BucketRefs); err != nil {
			return nil, fmt.Errorf("provision key-value %s: %w", wire.BucketRefs, err)
		}
	}
	return kv, nil
}

// keyValue opens the bucket cfg names, creating or updating it with the
// queue's lifetime and replicas unless it already has them.
func keyValue(ctx context.Context, js jetstream.JetStream, q config.Queue, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	cfg.TTL = q.Lifetime + LifetimeGrace
	cfg.Storage = jetstream.FileStorage
	cfg.Replicas = q.Replicas
	if bucketUpToDate(ctx, js, "KV_"+cfg.Bucket, cfg.Description, cfg.TTL, q) {
		if kv, err := js.KeyValue(ctx, cfg.Bucket); err == nil {
			return kv, nil
		}
	}
	return racing(func() (jetstream.KeyValue, error) { return js.CreateOrUpdateKeyValue(ctx, cfg) })
}

// racing runs create, one of nats.go's CreateOrUpdate calls, again when it
// lost a race: it asks to update, hears that the stream does not exist,
// asks to create it and hears "stream name already in use" (10058) when
// another service created it meanwhile, as every service starting at once
// does. The second call finds the stream and updates it.
func racing[T any](create func() (T, error)) (T, error) {
	v, err := create()
	for i := 0; i < 3 && isNameInUse(err); i++ {
		v, err = create()
	}
	return v, err
}

func isNameInUse(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamNameInUse
}

// IsStorageFull reports whether a publish error means the stream or account
// is over its limits, as opposed to JetStream being unreachable.
func IsStorageFull(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case 10047, // insufficient resources
			10077, // maximum messages exceeded
			10078, // maximum bytes exceeded
			10027: // resource limits exceeded for account
			return true
		}
	}
	return false
}
