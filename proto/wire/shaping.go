package wire

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
)

// Traffic shaping: the fleet-wide state of the deliverers' limits per
// receiving site, in one key-value bucket with per-key TTLs (nats-server
// 2.11+):
//
//	sluice_shaping  key-value, per-key TTL   conn.<site-key>.<slot>  a connection slot held by one deliverer
//	                                         limit.<site-key>        the site's current concurrency (slow start)
//	                                         susp.<site-key>         a suspension, expiring when it ends
//	                                         rate.<site-key>.<n>     messages sent in rate window n
//
// A site is the set of MX hosts that receive a destination's mail (see the
// deliverer's mx package); its key is a hash, because a site's name is not a
// valid key token. Every value is JSON that names the site in full
// (ShapingValue).
const BucketShaping = "sluice_shaping"

// SiteKey is the key token of a site: 16 hex digits of its SHA-256.
func SiteKey(site string) string {
	h := sha256.Sum256([]byte(site))
	return hex.EncodeToString(h[:8])
}

// ShapingConnKey is the key of connection slot n of a site.
func ShapingConnKey(siteKey string, n int) string {
	return "conn." + siteKey + "." + strconv.Itoa(n)
}

// ShapingLimitKey is the key of a site's current concurrency.
func ShapingLimitKey(siteKey string) string { return "limit." + siteKey }

// ShapingSuspendKey is the key of a site's suspension.
func ShapingSuspendKey(siteKey string) string { return "susp." + siteKey }
