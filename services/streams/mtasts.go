package streams

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
)

// MTASTSTTL keeps a cached MTA-STS policy a little longer than the largest
// max_age a policy may have (about a year, RFC 8461 §3.2); each entry
// carries its own expiry, this only clears domains no longer mailed.
const MTASTSTTL = 400 * 24 * time.Hour

// MTASTS returns the deliverers' cache of MTA-STS policies, creating it if
// needed.
func MTASTS(ctx context.Context, js jetstream.JetStream, q config.Queue) (jetstream.KeyValue, error) {
	cfg := jetstream.KeyValueConfig{
		Bucket:      wire.BucketMTASTS,
		Description: "Sluice: MTA-STS policies of destination domains, cached by the deliverers",
		Storage:     jetstream.FileStorage,
		Replicas:    q.Replicas,
		TTL:         MTASTSTTL,
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
		return nil, fmt.Errorf("provision key-value %s: %w", wire.BucketMTASTS, err)
	}
	return kv, nil
}
