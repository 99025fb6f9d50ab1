package admin

import "time"

// This file is the traffic shaping API of the deliverers: endpoints under
// ShapingPrefix on their micro service (DelivererService), answered by any
// one deliverer, since the state they report and change is shared by the
// fleet (the sluice_shaping key-value bucket).
//
// A site is named by its name as `sluice shaping show` prints it (the sorted
// MX host names, "host:port" for a static route, "domain:<name>" for a
// domain shaped apart) or by a destination domain, which the deliverer
// resolves to its site.

// ShapingPrefix is the subject prefix of the shaping endpoints.
const ShapingPrefix = "sluice.admin.shaping"

// Shaping endpoint names, under ShapingPrefix.
const (
	ShapingShow    = "show"
	ShapingSuspend = "suspend"
	ShapingResume  = "resume"
)

// ShapingRequest asks about or changes a site. Site is empty for show of
// every site with state.
type ShapingRequest struct {
	Site string `json:"site,omitempty"`
	// For is how long a suspension lasts, as a Go duration ("30m").
	For    string `json:"for,omitempty"`
	Reason string `json:"reason,omitempty"`
	Actor  string `json:"actor,omitempty"`
}

// ShapingSite is the fleet-wide state of one site.
type ShapingSite struct {
	Site string `json:"site"`
	// Connections is the number of connection slots held now, and
	// Holders how many each deliverer holds.
	Connections int            `json:"connections"`
	Holders     map[string]int `json:"holders,omitempty"`
	// Limit is the current concurrency (slow start), MaxConnections the
	// policy's maximum.
	Limit          int `json:"limit"`
	MaxConnections int `json:"max_connections"`
	// Rate is the policy's message rate ("600/1m"), empty without one, and
	// Sent the messages the fleet counted against it over the last period
	// (the current window and the ones before it; 0 without a rate, as
	// nothing is counted then).
	Rate           string    `json:"rate,omitempty"`
	Sent           int       `json:"sent"`
	SuspendedUntil time.Time `json:"suspended_until,omitzero"`
	Reason         string    `json:"reason,omitempty"`
	// Queued is the number of jobs in the queue (ready, active, deferred
	// or held) whose destination domain is routed to the site, as the
	// scheduler's index counts them per domain and the answering deliverer
	// resolves each domain; with per-source shaping, the site's jobs
	// whatever address sends them.
	Queued int `json:"queued"`
}

// ShapingResponse lists sites, or the one a change was made to.
type ShapingResponse struct {
	Sites []ShapingSite `json:"sites"`
	// Instance is the deliverer that answered.
	Instance string `json:"instance"`
	// QueuedUnknown says why Queued is missing (no scheduler answered),
	// and QueuedElsewhere counts the jobs of destination domains that
	// were not resolved to a site: beyond the most queued ones show looks
	// up, or without MX records now.
	QueuedUnknown   string `json:"queued_unknown,omitempty"`
	QueuedElsewhere int    `json:"queued_elsewhere,omitempty"`
}
