package admin

// This file is the doctor API of the deliverers: checks of the sending
// identity (DNS, DNSBL listings, SPF/DKIM/DMARC) and of the path to a
// destination, run on each deliverer host, because that is where the egress
// IP, the resolver and the firewall that matter are.
//
// Every deliverer process runs the nats micro service DelivererService (one
// instance per process; its metadata carries MetadataInstance and
// MetadataHostname). The doctor endpoints subscribe WITHOUT a queue group,
// so a request published to DoctorSubject(check) reaches every deliverer and
// each one answers for its own host. The CLI first discovers the instances
// ($SRV.INFO.sluice-deliverer, keeping those that list the doctor
// endpoints), then publishes one request with a reply inbox and gathers
// replies until every discovered instance answered or its wait is over; an
// instance that stays silent is reported by name, not forgotten.
//
// Errors come back as nats micro errors: 400 for a bad request (a missing or
// invalid domain), 500 otherwise. A check that ran and found problems is not
// an error: its report says so in Verdict and Findings.

const (
	// DelivererService is the nats micro service name of each deliverer.
	DelivererService = "sluice-deliverer"
	// DoctorPrefix is the subject prefix of the doctor endpoints.
	DoctorPrefix = "sluice.admin.doctor"

	// Doctor checks: the endpoint names under DoctorPrefix.
	DoctorDNS     = "dns"
	DoctorDNSBL   = "dnsbl"
	DoctorConnect = "connect"
	DoctorAuth    = "auth"

	// MetadataInstance and MetadataHostname are keys of the micro service
	// metadata: the deliverer's instance name and its EHLO host name.
	MetadataInstance = "instance"
	MetadataHostname = "hostname"
)

// DoctorSubject is the subject of one doctor check.
func DoctorSubject(check string) string { return DoctorPrefix + "." + check }

// DoctorRequest asks a deliverer to run a check. Domain is required by
// connect and auth, ignored by dns and dnsbl; Domains is read by dns only.
type DoctorRequest struct {
	Domain string `json:"domain,omitempty"`
	// Domains are the domains whose mail DNS the dns check looks at (MX,
	// null MX, implicit MX, the addresses of each MX host); empty means
	// the deliverer's sending domains.
	Domains []string `json:"domains,omitempty"`
	// StepTimeoutMS bounds each network step (a DNS query, a TCP connect,
	// a reply, a TLS handshake); 0 lets the deliverer choose (10 s).
	StepTimeoutMS int64 `json:"step_timeout_ms,omitempty"`
	// BudgetMS bounds the whole check, so the answer arrives while the
	// asker still waits; steps not run in time are reported as skipped.
	// 0 lets the deliverer choose (50 s).
	BudgetMS int64 `json:"budget_ms,omitempty"`
}

// Severity grades a finding and a verdict.
type Severity string

const (
	SeverityOK      Severity = "ok"
	SeverityWarning Severity = "warning" // works, but hurts deliverability
	SeverityError   Severity = "error"   // mail will be rejected or junked, or the check could not run
)

// Rank orders severities: ok < warning < error.
func (s Severity) Rank() int {
	switch s {
	case SeverityWarning:
		return 1
	case SeverityError:
		return 2
	}
	return 0
}

// Finding is one thing that is wrong, and what would fix it.
type Finding struct {
	Severity Severity `json:"severity"`
	// Subject is what the finding is about: a name, an address, a record.
	Subject string `json:"subject"`
	// Problem says what is wrong, in a sentence.
	Problem string `json:"problem"`
	// Fix says what to do, usually the record to publish in zone-file
	// syntax.
	Fix string `json:"fix,omitempty"`
}

// Verdict is the conclusion of one check on one deliverer.
type Verdict struct {
	Severity Severity `json:"severity"`
	Summary  string   `json:"summary"`
}

// DelivererIdentity says who answered: every report starts with it.
type DelivererIdentity struct {
	// ServiceID is the micro service instance id.
	ServiceID string `json:"service_id"`
	Instance  string `json:"instance"`
	// Hostname is the EHLO name.
	Hostname  string   `json:"hostname"`
	EgressIPs []string `json:"egress_ips"`
	// EgressGuessed is true when egress_ips is not configured and the
	// address is the host's primary outbound address, which is wrong
	// behind NAT.
	EgressGuessed bool   `json:"egress_guessed,omitempty"`
	DNSServer     string `json:"dns_server"`
}

// DNSReport is the answer of the dns check.
type DNSReport struct {
	Deliverer DelivererIdentity `json:"deliverer"`
	// HELO is the EHLO name and the addresses it resolves to.
	HELO DNSName `json:"helo"`
	// Reverse has one entry per egress IP.
	Reverse []ReverseDNS `json:"reverse"`
	// Domains has one entry per domain of the request, or per sending
	// domain when the request names none.
	Domains  []SendingDomain `json:"domains"`
	Findings []Finding       `json:"findings"`
	Verdict  Verdict         `json:"verdict"`
}

// DNSName is a name and its A/AAAA records.
type DNSName struct {
	Name  string   `json:"name"`
	Addrs []string `json:"addrs"`
	// MatchesEgress is true when every egress IP is among Addrs.
	MatchesEgress bool   `json:"matches_egress"`
	Error         string `json:"error,omitempty"`
}

// ReverseDNS is the PTR check of one egress IP: forward-confirmed when one
// of its PTR names resolves back to it (FCrDNS, RFC 8601 §3 "iprev").
type ReverseDNS struct {
	IP               string    `json:"ip"`
	PTR              []DNSName `json:"ptr"`
	ForwardConfirmed bool      `json:"forward_confirmed"`
	// MatchesHELO is true when a confirmed PTR name is the EHLO name.
	MatchesHELO bool   `json:"matches_helo"`
	Error       string `json:"error,omitempty"`
}

// SendingDomain is what a domain publishes for mail: a sending domain of
// the deliverer, or any domain the request names.
type SendingDomain struct {
	Domain string `json:"domain"`
	// Sending is true for a domain of deliverer.sending_domains.
	Sending bool `json:"sending,omitempty"`
	// MX are the MX records as "preference host".
	MX []string `json:"mx"`
	// Addrs are the domain's own A/AAAA addresses.
	Addrs []string `json:"addrs"`
	// NullMX is true when the domain publishes "MX 0 ." (RFC 7505): it
	// accepts no mail.
	NullMX bool `json:"null_mx,omitempty"`
	// ImplicitMX is true when the domain has no MX records but addresses,
	// where mail goes instead (RFC 5321 §5.1).
	ImplicitMX bool `json:"implicit_mx,omitempty"`
	// Hosts are the MX hosts in preference order, each with its addresses.
	Hosts []MXHost `json:"hosts,omitempty"`
	// Error is why the MX records could not be looked up.
	Error string `json:"error,omitempty"`
	// Severity is the worst finding about the domain.
	Severity Severity `json:"severity,omitempty"`
}

// MXHost is one MX host of a domain and the outcome of its address lookup.
type MXHost struct {
	Name       string   `json:"name"`
	Preference uint16   `json:"preference"`
	Addrs      []string `json:"addrs"`
	// Lookup is the outcome of the A/AAAA lookup: one of the Lookup*
	// values.
	Lookup string `json:"lookup"`
	// Error says why there is no address.
	Error string `json:"error,omitempty"`
}

// Outcomes of a DNS lookup (MXHost.Lookup).
const (
	LookupOK       = "ok"       // addresses found
	LookupNoData   = "nodata"   // the name exists without address records
	LookupNXDomain = "nxdomain" // the name does not exist
	LookupServFail = "servfail" // the server answered an error (SERVFAIL, REFUSED, ...)
	LookupTimeout  = "timeout"  // no answer in time
	LookupError    = "error"    // the query could not be made
)

// DNSBLReport is the answer of the dnsbl check.
type DNSBLReport struct {
	Deliverer DelivererIdentity `json:"deliverer"`
	Zones     []string          `json:"zones"`
	// Results has one entry per egress IP and zone.
	Results  []DNSBLResult `json:"results"`
	Findings []Finding     `json:"findings"`
	Verdict  Verdict       `json:"verdict"`
}

// DNSBL result statuses.
const (
	DNSBLListed    = "listed"
	DNSBLNotListed = "not_listed"
	DNSBLError     = "error"
)

// DNSBLResult is one egress IP in one zone.
type DNSBLResult struct {
	IP   string `json:"ip"`
	Zone string `json:"zone"`
	// Query is the name looked up (reversed octets or IPv6 nibbles).
	Query  string `json:"query"`
	Status string `json:"status"`
	// Codes are the A records of a listing (127.0.0.x return codes).
	Codes []string `json:"codes,omitempty"`
	// Text is the zone's TXT explanation of the listing.
	Text       string `json:"text,omitempty"`
	Error      string `json:"error,omitempty"`
	DurationMS int64  `json:"duration_ms"`
}

// ConnectReport is the answer of the connect check.
type ConnectReport struct {
	Deliverer DelivererIdentity `json:"deliverer"`
	Domain    string            `json:"domain"`
	Port      int               `json:"port"`
	// Static is true when a configured route replaces the MX records;
	// Implicit when the domain has no MX and its own address is used.
	Static   bool       `json:"static,omitempty"`
	Implicit bool       `json:"implicit,omitempty"`
	MXError  string     `json:"mx_error,omitempty"`
	Probes   []MXProbe  `json:"probes"`
	Port25   *Port25    `json:"port25,omitempty"`
	Findings []Finding  `json:"findings"`
	Verdict  Verdict    `json:"verdict"`
	Budget   BudgetInfo `json:"budget"`
}

// BudgetInfo says how long the check ran and whether it ran out of time.
type BudgetInfo struct {
	ElapsedMS int64 `json:"elapsed_ms"`
	Exhausted bool  `json:"exhausted,omitempty"`
}

// Step results.
const (
	StepOK      = "ok"
	StepFailed  = "failed"
	StepTimeout = "timeout"
	StepSkipped = "skipped"
)

// Step is one timed step of a probe: connect, banner, ehlo, starttls.
type Step struct {
	Name       string `json:"name"`
	Status     string `json:"status"`
	DurationMS int64  `json:"duration_ms"`
	Detail     string `json:"detail,omitempty"`
}

// MXProbe is one conversation with one address of one MX host.
type MXProbe struct {
	Host       string   `json:"host"`
	Preference uint16   `json:"preference"`
	Addr       string   `json:"addr"`
	Steps      []Step   `json:"steps"`
	ConnectMS  int64    `json:"connect_ms,omitempty"`
	Banner     string   `json:"banner,omitempty"`
	EHLO       []string `json:"ehlo,omitempty"`
	TLS        *TLSInfo `json:"tls,omitempty"`
	// Reached is true when the server greeted us with 220.
	Reached bool `json:"reached"`
}

// TLSInfo describes a STARTTLS handshake and the server's certificate.
type TLSInfo struct {
	Version   string   `json:"version"`
	Cipher    string   `json:"cipher"`
	Subject   string   `json:"subject"`
	Issuer    string   `json:"issuer"`
	DNSNames  []string `json:"dns_names,omitempty"`
	NotBefore string   `json:"not_before"`
	NotAfter  string   `json:"not_after"`
	// Verified is true when the chain verifies against the system roots
	// for the MX host name; delivery does not require it (opportunistic
	// TLS, RFC 7435) but MTA-STS and DANE senders do.
	Verified    bool   `json:"verified"`
	VerifyError string `json:"verify_error,omitempty"`
	// PostTLSEHLO are the capabilities offered after the handshake.
	PostTLSEHLO []string `json:"post_tls_ehlo,omitempty"`
}

// Port25 is the blocked-port check: when no MX of the destination could be
// reached because every connection timed out, the deliverer tries the MX
// hosts of well-known domains (deliverer.doctor_probe_domains).
type Port25 struct {
	Blocked bool          `json:"blocked"`
	Probes  []Port25Probe `json:"probes"`
}

// Port25Probe is the outcome for one well-known domain.
type Port25Probe struct {
	Domain  string `json:"domain"`
	Reached bool   `json:"reached"`
	// Detail is the host reached, or why none was.
	Detail string `json:"detail"`
}

// AuthReport is the answer of the auth check for one sending domain.
type AuthReport struct {
	Deliverer DelivererIdentity `json:"deliverer"`
	Domain    string            `json:"domain"`
	SPF       SPFCheck          `json:"spf"`
	DKIM      []DKIMCheck       `json:"dkim"`
	DMARC     DMARCCheck        `json:"dmarc"`
	Findings  []Finding         `json:"findings"`
	Verdict   Verdict           `json:"verdict"`
}

// SPFCheck is the domain's SPF record and its result for each egress IP.
type SPFCheck struct {
	Record  string      `json:"record,omitempty"`
	Error   string      `json:"error,omitempty"`
	Results []SPFResult `json:"results"`
}

// SPFResult is the RFC 7208 §2.6 result for one egress IP.
type SPFResult struct {
	IP string `json:"ip"`
	// Result is none, neutral, pass, fail, softfail, temperror or permerror.
	Result string `json:"result"`
	// Mechanism is the kind of mechanism that matched ("ip4", "a", "mx",
	// "all", ...), or the term of the top-level record when it can be told.
	Mechanism   string `json:"mechanism,omitempty"`
	Explanation string `json:"explanation"`
}

// DKIM key statuses.
const (
	DKIMMatch    = "match"    // published and equal to our key
	DKIMMismatch = "mismatch" // published, but another key
	DKIMMissing  = "missing"  // no record at selector._domainkey
	DKIMInvalid  = "invalid"  // a record that is not a usable key
	DKIMError    = "error"    // the lookup failed
)

// DKIMCheck is one configured key of the domain.
type DKIMCheck struct {
	Selector  string `json:"selector"`
	Algorithm string `json:"algorithm"`
	// RecordName is selector._domainkey.domain.
	RecordName string `json:"record_name"`
	Published  string `json:"published,omitempty"`
	Status     string `json:"status"`
	Detail     string `json:"detail,omitempty"`
	// SignatureValid is true when a message signed by this deliverer
	// verified against the published key through DNS.
	SignatureValid bool   `json:"signature_valid"`
	SignatureError string `json:"signature_error,omitempty"`
}

// DMARCCheck is the domain's DMARC policy (RFC 7489 §6.3).
type DMARCCheck struct {
	Found bool `json:"found"`
	// At is where the record was found: _dmarc.<domain>, or the
	// organizational domain's record (RFC 7489 §6.6.3).
	At              string   `json:"at,omitempty"`
	Record          string   `json:"record,omitempty"`
	Policy          string   `json:"policy,omitempty"`
	SubdomainPolicy string   `json:"subdomain_policy,omitempty"`
	DKIMAlignment   string   `json:"adkim,omitempty"`
	SPFAlignment    string   `json:"aspf,omitempty"`
	Percent         int      `json:"pct,omitempty"`
	AggregateTo     []string `json:"rua,omitempty"`
	FailureTo       []string `json:"ruf,omitempty"`
	Error           string   `json:"error,omitempty"`
}
