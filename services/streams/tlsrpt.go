package streams

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/services/config"
)

// TLSRPT returns the bucket of TLS session counts and report claims
// (wire.BucketTLSRPT), creating it if needed. Entries live
// wire.TLSRPTKeep.
func TLSRPT(ctx context.Context, js jetstream.JetStream, q config.Queue) (jetstream.KeyValue, error) {
	cfg := jetstream.KeyValueConfig{
		Bucket:      wire.BucketTLSRPT,
		Description: "Sluice: TLS session counts per day and policy domain (RFC 8460 reports), and report claims",
		Storage:     jetstream.FileStorage,
		Replicas:    q.Replicas,
		TTL:         wire.TLSRPTKeep,
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
		return nil, fmt.Errorf("provision key-value %s: %w", wire.BucketTLSRPT, err)
	}
	return kv, nil
}
