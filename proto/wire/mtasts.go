package wire

// BucketMTASTS is the key-value bucket where deliverers cache the MTA-STS
// policies (RFC 8461) of destination domains, shared by the fleet so that
// a policy fetched by one deliverer is enforced by all, and survives
// their restarts:
//
//	sluice_mta_sts  key-value  <domain>  JSON: the policy's id (from the
//	                                     _mta-sts TXT record), mode, mx
//	                                     patterns, max_age, and when it was
//	                                     fetched and expires
//
// A key is the domain's lower-case name.
const BucketMTASTS = "sluice_mta_sts"
