package doctor

import (
	"errors"
	"net"
	"net/netip"
)

// EgressProbes are the destinations DetectEgress "connects" to. A UDP
// connect sends no packet: the kernel only picks the route and the source
// address it would use, which is the host's primary outbound address.
var EgressProbes = []string{"192.0.2.1:25", "[2001:db8::1]:25"}

// DetectEgress guesses the egress IPs when none are configured: the source
// address the kernel would use towards each of targets (host:port). It
// sends nothing. Behind NAT the guess is a private address, which the
// reports point out.
func DetectEgress(targets []string) ([]netip.Addr, error) {
	var out []netip.Addr
	var errs []error
	for _, t := range targets {
		c, err := net.Dial("udp", t)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ap, err := netip.ParseAddrPort(c.LocalAddr().String())
		c.Close()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		a := ap.Addr().Unmap()
		if !a.IsUnspecified() && !containsAddr(out, a) {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		if len(errs) == 0 {
			return nil, errors.New("no route to the outside")
		}
		return nil, errors.Join(errs...)
	}
	return out, nil
}
