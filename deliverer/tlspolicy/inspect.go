package tlspolicy

import (
	"context"
	"strings"

	"github.com/sluice-mta/sluice/deliverer/dane"
)

// This file answers the doctor's questions (`sluice doctor tls`), which
// look at what a domain publishes whatever mode the configuration gives it.

// DNSSECServer is the resolver whose AD bit is trusted.
func (e *Engine) DNSSECServer() string { return e.res.server }

// MXDNSSEC says whether the domain's MX answer is authenticated:
// "secure", "insecure", or the lookup's failure.
func (e *Engine) MXDNSSEC(ctx context.Context, domain string) string {
	ok, err := e.res.mxSecure(ctx, domain)
	switch {
	case err != nil:
		return err.Error()
	case ok:
		return "secure"
	}
	return "insecure"
}

// TLSA returns where the TLSA records of host:port are, the records, and
// their status: "secure", "insecure", "none", or the lookup's failure.
func (e *Engine) TLSA(ctx context.Context, host string, port int) (string, []dane.Record, string) {
	t, err := e.res.tlsa(ctx, strings.ToLower(strings.TrimSuffix(host, ".")), port)
	name := t.where()
	switch {
	case err != nil:
		return name, nil, err.Error()
	case len(t.records) == 0 && t.bad == 0:
		return name, nil, "none"
	case t.secure:
		return name, t.records, "secure"
	}
	return name, t.records, "insecure"
}

// STSID is the id of the policy in force, "" when none.
func (d *Decision) STSID(ctx context.Context) string {
	if p, _ := d.STS(ctx); p == nil {
		return ""
	}
	return d.stsState.entry.ID
}
