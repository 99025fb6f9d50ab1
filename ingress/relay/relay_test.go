package relay

import (
	"net/netip"
	"testing"
)

func TestDecide(t *testing.T) {
	p := Policy{
		Trusted:      []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("10.1.0.0/16")},
		LocalDomains: []string{"Example.ORG"},
	}
	tests := []struct {
		name string
		req  Request
		want Decision
	}{
		{"loopback v4", Request{Client: netip.MustParseAddr("127.0.0.1"), Domain: "example.test"}, Decision{true, AllowedTrustedNetwork}},
		{"loopback v6", Request{Client: netip.MustParseAddr("::1"), Domain: "example.test"}, Decision{true, AllowedTrustedNetwork}},
		{"v4-mapped loopback", Request{Client: netip.MustParseAddr("::ffff:127.0.0.2"), Domain: "example.test"}, Decision{true, AllowedTrustedNetwork}},
		{"trusted lan", Request{Client: netip.MustParseAddr("10.1.200.3"), Domain: "example.test"}, Decision{true, AllowedTrustedNetwork}},
		{"neighbouring lan", Request{Client: netip.MustParseAddr("10.2.0.3"), Domain: "example.test"}, Decision{false, DeniedUntrusted}},
		{"internet", Request{Client: netip.MustParseAddr("192.0.2.7"), Domain: "example.test"}, Decision{false, DeniedUntrusted}},
		{"internet to local domain", Request{Client: netip.MustParseAddr("192.0.2.7"), Domain: "example.org"}, Decision{true, AllowedLocalDomain}},
		{"local domain, trailing dot", Request{Client: netip.MustParseAddr("192.0.2.7"), Domain: "EXAMPLE.org."}, Decision{true, AllowedLocalDomain}},
		{"subdomain is not local", Request{Client: netip.MustParseAddr("192.0.2.7"), Domain: "mail.example.org"}, Decision{false, DeniedUntrusted}},
		{"authenticated", Request{Client: netip.MustParseAddr("192.0.2.7"), AuthUser: "alice", Domain: "example.test"}, Decision{true, AllowedAuthenticated}},
		{"unknown client", Request{Domain: "example.test"}, Decision{false, DeniedUntrusted}},
		{"trusted to local domain is local", Request{Client: netip.MustParseAddr("127.0.0.1"), Domain: "example.org"}, Decision{true, AllowedLocalDomain}},
		{"authenticated to local domain is local", Request{Client: netip.MustParseAddr("192.0.2.7"), AuthUser: "alice", Domain: "example.org"}, Decision{true, AllowedLocalDomain}},
		{"address literal is never local", Request{Client: netip.MustParseAddr("192.0.2.7"), Domain: "[192.0.2.1]"}, Decision{false, DeniedUntrusted}},
		{"empty domain", Request{Client: netip.MustParseAddr("192.0.2.7"), Domain: ""}, Decision{false, DeniedUntrusted}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.Decide(tt.req); got != tt.want {
				t.Errorf("Decide(%+v) = %+v (%s), want %+v (%s)", tt.req, got, got.Reason, tt.want, tt.want.Reason)
			}
		})
	}
	if got := (Policy{}).Decide(Request{Client: netip.MustParseAddr("127.0.0.1"), Domain: "x.test"}); got.Allowed {
		t.Errorf("empty policy allowed loopback: %+v", got)
	}
}
