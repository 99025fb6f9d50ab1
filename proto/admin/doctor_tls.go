package admin

// DoctorTLS is the check of a destination's TLS: what the deliverer's
// tls_policy requires of it, the domain's MTA-STS policy, the TLSA records
// of its MX hosts and their DNSSEC status, and what each MX host offers
// (STARTTLS, certificate) checked against the policy.
const DoctorTLS = "tls"

// TLSReport is the answer of the tls check.
type TLSReport struct {
	Deliverer DelivererIdentity `json:"deliverer"`
	Domain    string            `json:"domain"`
	// Mode is the deliverer.tls_policy mode of the domain: none, may,
	// encrypt, verify, dane or mta-sts.
	Mode string `json:"mode"`
	// DNSSECServer is the resolver whose AD bit is trusted.
	DNSSECServer string `json:"dnssec_server"`
	Static       bool   `json:"static,omitempty"`
	MXError      string `json:"mx_error,omitempty"`
	// MXDNSSEC is the status of the domain's MX answer: "secure" (AD
	// bit), "insecure", or the lookup's failure.
	MXDNSSEC string     `json:"mx_dnssec"`
	MTASTS   MTASTSInfo `json:"mta_sts"`
	Hosts    []TLSHost  `json:"hosts"`
	Findings []Finding  `json:"findings"`
	Verdict  Verdict    `json:"verdict"`
	Budget   BudgetInfo `json:"budget"`
}

// MTASTSInfo is the domain's MTA-STS policy as fetched now.
type MTASTSInfo struct {
	// Policy is nil when the domain has none in force.
	Policy *MTASTSPolicy `json:"policy,omitempty"`
	// Note says where the policy came from or why there is none.
	Note string `json:"note"`
}

// MTASTSPolicy is a policy file's content and the id of its TXT record.
type MTASTSPolicy struct {
	ID     string   `json:"id"`
	Mode   string   `json:"mode"`
	MX     []string `json:"mx"`
	MaxAge int64    `json:"max_age"`
}

// TLSHost is one MX host.
type TLSHost struct {
	Host string `json:"host"`
	Port int    `json:"port"`
	// TLSAName is where its TLSA records are; TLSA lists them in
	// presentation form; TLSADNSSEC is "secure", "insecure", "none" (no
	// records, securely or not) or the lookup's failure.
	TLSAName   string   `json:"tlsa_name"`
	TLSA       []string `json:"tlsa,omitempty"`
	TLSADNSSEC string   `json:"tlsa_dnssec"`
	// Policy is the policy that applies to the host under Mode ("may",
	// "dane", "mta-sts enforce", ...), Required whether TLS is.
	Policy   string `json:"policy"`
	Required bool   `json:"required"`
	Refused  string `json:"refused,omitempty"`
	Note     string `json:"note,omitempty"`
	// Probe is the connection to the host: steps, EHLO, TLS and the
	// certificate (its Verified field is the system roots' verdict).
	Probe *MXProbe `json:"probe,omitempty"`
	// Check is the policy's verdict on what the host offered: "verified
	// (dane-ee)", "encrypted, not verified", "clear text", or "FAILED: ...".
	Check string `json:"check"`
	// Deliverable says whether a delivery under the policy would use this
	// host now.
	Deliverable bool `json:"deliverable"`
}
