package policy

import (
	"strings"

	"github.com/sluice-mta/sluice/proto/sluicev1"
)

// Domain returns the lower-cased domain of an address: the part after the
// last "@" (RFC 5321 section 4.1.2: a local part may itself contain a quoted
// "@", the domain never does). An address without "@" has the empty domain.
// Internationalised domains are compared as given; the ingress stores them
// as the client sent them.
func Domain(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return ""
	}
	return strings.ToLower(addr[i+1:])
}

// Group is the recipients of one message that share a destination domain.
type Group struct {
	Domain     string
	Recipients []*sluicev1.Recipient
}

// Split groups recipients by lower-cased domain. Groups appear in the order
// of their domain's first recipient, and recipients keep their order within
// a group, so the n-th job of a message is the same on every run and its id
// (wire.JobID(queue id, n)) is stable when a split is redone after a crash.
func Split(rcpts []*sluicev1.Recipient) []Group {
	var groups []Group
	index := make(map[string]int, 2)
	for _, r := range rcpts {
		d := Domain(r.GetAddress())
		i, ok := index[d]
		if !ok {
			i = len(groups)
			index[d] = i
			groups = append(groups, Group{Domain: d})
		}
		groups[i].Recipients = append(groups[i].Recipients, r)
	}
	return groups
}
