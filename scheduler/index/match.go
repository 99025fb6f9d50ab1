package index

import (
	"fmt"
	"strings"
	"time"

	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/wire"
)

// Matcher is a compiled admin.QueueFilter.
type Matcher struct {
	states   uint32 // bit per State; 0 matches all
	classes  uint32 // bit per priority; 0 matches all
	reasons  uint64 // bit per Reason; 0 matches all
	domain   string
	sender   string // lower case; "@d" matches a domain
	rcpt     string // lower case; "@d" matches a domain
	minAge   time.Duration
	maxAge   time.Duration
	now      int64
	nullFrom bool

	// Resolved against the interners by prepare, under the index lock.
	domainID  uint32
	noDomain  bool
	senderIDs map[uint32]bool
}

// Compile checks a filter and compiles it for matching at now. Its errors
// name the bad field.
func Compile(f admin.QueueFilter, now time.Time) (*Matcher, error) {
	m := &Matcher{now: now.UnixNano()}
	for _, s := range f.States {
		st, ok := ParseState(s)
		if !ok {
			return nil, fmt.Errorf("filter.states: unknown state %q (want ready, active, deferred or held)", s)
		}
		m.states |= 1 << st
	}
	for _, p := range f.Priorities {
		c, err := wire.ParseClass(p)
		if err != nil {
			return nil, fmt.Errorf("filter.priorities: %w", err)
		}
		m.classes |= 1 << c
	}
	for _, r := range f.Reasons {
		v, ok := reasonByName[strings.ToLower(r)]
		if !ok || v == 0 {
			return nil, fmt.Errorf("filter.reasons: unknown deferral reason %q", r)
		}
		m.reasons |= 1 << v
	}
	m.domain = strings.ToLower(strings.TrimSpace(f.Domain))
	m.sender = strings.ToLower(strings.TrimSpace(f.Sender))
	if m.sender == "<>" {
		m.nullFrom, m.sender = true, ""
	}
	m.rcpt = strings.ToLower(strings.TrimSpace(f.Recipient))
	if strings.HasPrefix(m.rcpt, "@") {
		// Jobs are per recipient domain: this is a domain filter.
		if m.domain != "" && m.domain != m.rcpt[1:] {
			m.noDomain = true
		}
		m.domain, m.rcpt = m.rcpt[1:], ""
	}
	var err error
	if f.MinAge != "" {
		if m.minAge, err = time.ParseDuration(f.MinAge); err != nil || m.minAge < 0 {
			return nil, fmt.Errorf("filter.min_age: %q is not a duration like 30m or 2h", f.MinAge)
		}
	}
	if f.MaxAge != "" {
		if m.maxAge, err = time.ParseDuration(f.MaxAge); err != nil || m.maxAge <= 0 {
			return nil, fmt.Errorf("filter.max_age: %q is not a duration like 30m or 2h", f.MaxAge)
		}
	}
	return m, nil
}

// prepare resolves names to interned ids; the caller holds the index lock.
func (m *Matcher) prepare(x *Index) {
	if m.domain != "" {
		id, ok := x.domains.lookup(m.domain)
		m.domainID, m.noDomain = id, m.noDomain || !ok
	}
	if m.sender != "" {
		m.senderIDs = map[uint32]bool{}
		if strings.HasPrefix(m.sender, "@") {
			for id := 1; id < x.senders.size(); id++ {
				s := x.senders.str(uint32(id))
				if s != "" && len(s) > len(m.sender) && strings.EqualFold(s[len(s)-len(m.sender):], m.sender) {
					m.senderIDs[uint32(id)] = true
				}
			}
		} else {
			// Addresses are stored as given; compare without case.
			for id := 1; id < x.senders.size(); id++ {
				if s := x.senders.str(uint32(id)); s != "" && strings.EqualFold(s, m.sender) {
					m.senderIDs[uint32(id)] = true
				}
			}
		}
	}
}

func (m *Matcher) match(x *Index, e *entry) bool {
	if m.states != 0 && m.states&(1<<e.state) == 0 {
		return false
	}
	if m.classes != 0 && m.classes&(1<<e.class) == 0 {
		return false
	}
	if m.reasons != 0 && m.reasons&(1<<e.reason) == 0 {
		return false
	}
	if m.domain != "" && (m.noDomain || e.domain != m.domainID) {
		return false
	}
	if m.nullFrom && e.sender != 0 {
		return false
	}
	if m.sender != "" && !m.senderIDs[e.sender] {
		return false
	}
	if m.minAge > 0 && m.now-e.received < int64(m.minAge) {
		return false
	}
	if m.maxAge > 0 && m.now-e.received > int64(m.maxAge) {
		return false
	}
	if m.rcpt != "" {
		rest, found := x.st.rcptsOf(e), false
		for rest != "" && !found {
			var a string
			a, rest, _ = strings.Cut(rest, "\n")
			found = strings.EqualFold(a, m.rcpt)
		}
		if !found {
			return false
		}
	}
	return true
}
