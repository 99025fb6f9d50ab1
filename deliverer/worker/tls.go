package worker

import (
	"context"
	"fmt"

	"github.com/sluice-mta/sluice/deliverer/tlspolicy"
	"github.com/sluice-mta/sluice/proto/wire"
)

// newTLSPolicy builds the TLS policy engine of deliverer.tls_policy; o
// carries what tests inject (roots, the HTTPS dial of policy fetches).
func newTLSPolicy(s Settings, o tlspolicy.Options) (*tlspolicy.Engine, error) {
	o.DNSServer, o.DNSTimeout = s.DNSServer, s.DNSTimeout
	return tlspolicy.New(s.TLSPolicy, o)
}

// startTLSPolicy gives the engine the fleet's MTA-STS cache
// (wire.BucketMTASTS), and the TLS-RPT recorder the fleet's counts
// (wire.BucketTLSRPT), both provisioned with the streams.
func (s *Service) startTLSPolicy(ctx context.Context) error {
	kv, err := s.js.KeyValue(ctx, wire.BucketMTASTS)
	if err != nil {
		return fmt.Errorf("key-value %s: %w", wire.BucketMTASTS, err)
	}
	s.tlsPolicy.UseStore(kv)
	rpt, err := s.js.KeyValue(ctx, wire.BucketTLSRPT)
	if err != nil {
		return fmt.Errorf("key-value %s: %w", wire.BucketTLSRPT, err)
	}
	s.tlsReports.UseStore(rpt)
	return nil
}
