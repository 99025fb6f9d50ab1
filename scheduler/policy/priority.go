package policy

import (
	"errors"
	"fmt"
	"strings"

	"github.com/sluice-mta/sluice/proto/sluicev1"
	"github.com/sluice-mta/sluice/proto/wire"
)

// ClassForMTPriority maps an RFC 6710 MT-PRIORITY value to a delivery class.
//
// RFC 6710 defines priorities from -9 (lowest) to 9 (highest), with 0 the
// priority of a message that carries none. Sluice has three classes, so the
// mapping keeps the RFC's sign: any positive priority is high, 0 is normal
// and any negative priority is bulk. A value outside -9..9 (which the ingress
// refuses) still maps by its sign. A message without MT-PRIORITY is normal.
//
// The scheduler honours the value as given: the ingress accepts MAIL FROM
// with MT-PRIORITY only from trusted clients (authenticated submission and
// trusted networks), which is the trust decision RFC 6710's security
// considerations ask the receiving MTA to make.
func ClassForMTPriority(value int32, present bool) sluicev1.Priority {
	if !present {
		return sluicev1.Priority_PRIORITY_NORMAL
	}
	switch {
	case value > 0:
		return sluicev1.Priority_PRIORITY_HIGH
	case value < 0:
		return sluicev1.Priority_PRIORITY_BULK
	default:
		return sluicev1.Priority_PRIORITY_NORMAL
	}
}

// NullSender is the value of Rule.Sender that matches the null reverse-path
// <>, the sender of delivery status notifications.
const NullSender = "<>"

// Rule is one operator priority rule. Every field that is set must match
// (they are ANDed); a rule with no match field is invalid. Matching is
// case-insensitive and exact: a domain matches only itself, not its
// subdomains, so a rule never applies to more mail than it names.
type Rule struct {
	// Sender is a full envelope sender address, or "<>" for the null sender.
	Sender string `yaml:"sender"`
	// SenderDomain is the domain of the envelope sender.
	SenderDomain string `yaml:"sender_domain"`
	// RecipientDomain is the destination domain of the job.
	RecipientDomain string `yaml:"recipient_domain"`
	// Class is high, normal or bulk.
	Class string `yaml:"class"`
}

// Validate reports a rule's first problem.
func (r Rule) Validate() error {
	_, err := r.validate()
	return err
}

// validate also returns the YAML key of the bad field, empty when the
// problem is the rule as a whole.
func (r Rule) validate() (string, error) {
	if r.Sender == "" && r.SenderDomain == "" && r.RecipientDomain == "" {
		return "", errors.New("a rule needs at least one of sender, sender_domain, recipient_domain")
	}
	if _, err := wire.ParseClass(r.Class); err != nil {
		return "class", err
	}
	return "", nil
}

// Rules is an ordered list of priority rules; the first match wins.
type Rules []Rule

// Validate reports the first bad rule as "priority_rules[i]" or
// "priority_rules[i].field".
func (rs Rules) Validate() error {
	for i, r := range rs {
		field, err := r.validate()
		if err == nil {
			continue
		}
		if field != "" {
			return fmt.Errorf("priority_rules[%d].%s: %w", i, field, err)
		}
		return fmt.Errorf("priority_rules[%d]: %w", i, err)
	}
	return nil
}

// Match returns the class of the first rule matching a job from sender to
// recipientDomain, and whether any rule matched. Invalid rules (see
// Validate) never match.
func (rs Rules) Match(sender, recipientDomain string) (sluicev1.Priority, bool) {
	senderDomain := Domain(sender)
	for _, r := range rs {
		if r.Sender == "" && r.SenderDomain == "" && r.RecipientDomain == "" {
			continue
		}
		if r.Sender != "" {
			if r.Sender == NullSender {
				if sender != "" {
					continue
				}
			} else if sender == "" || !strings.EqualFold(r.Sender, sender) {
				continue
			}
		}
		if r.SenderDomain != "" && (sender == "" || !strings.EqualFold(r.SenderDomain, senderDomain)) {
			continue
		}
		if r.RecipientDomain != "" && !strings.EqualFold(r.RecipientDomain, recipientDomain) {
			continue
		}
		class, err := wire.ParseClass(r.Class)
		if err != nil {
			continue
		}
		return class, true
	}
	return 0, false
}

// Class decides a job's priority class. Operator rules win over MT-PRIORITY:
// the operator knows which senders send newsletters or password resets, and
// a rule is how they overrule a client that marks everything urgent. Without
// a matching rule the message's MT-PRIORITY decides (ClassForMTPriority).
func Class(rules Rules, sender, recipientDomain string, mtPriority int32, hasMTPriority bool) sluicev1.Priority {
	if c, ok := rules.Match(sender, recipientDomain); ok {
		return c
	}
	return ClassForMTPriority(mtPriority, hasMTPriority)
}
