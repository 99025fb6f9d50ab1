package shaping

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/sluice-mta/sluice/proto/wire"
)

// Site is a receiving site with the policy that applies to it.
type Site struct {
	// Name is the site: the sorted MX host names of the destination (see
	// mx.Route.Site), or "domain:<domain>" for a domain configured apart.
	Name string
	// Key is Name's token in the shaping bucket's keys.
	Key      string
	Policy   Policy
	slow     []*regexp.Regexp
	rate     Rate
	connRate Rate
}

// Rate is the site's message rate limit; a zero N means none.
func (s Site) Rate() Rate { return s.rate }

// ConnectionRate is the site's limit of new connections; a zero N means
// none.
func (s Site) ConnectionRate() Rate { return s.connRate }

// SlowDown reports whether a reply asks us to slow down: a temporary reply
// matching one of the site's slow-down patterns. Permanent replies never
// do: they end the mail, not the pace.
func (s Site) SlowDown(code int, enhanced, text string) bool {
	if code < 400 || code > 499 {
		return false
	}
	reply := strconv.Itoa(code) + " " + enhanced + " " + text
	for _, re := range s.slow {
		if re.MatchString(reply) {
			return true
		}
	}
	return false
}

// Rules resolve a destination to its site and policy. They are immutable
// and safe for concurrent use.
type Rules struct {
	def     Site
	sites   map[string]Site // by lower-case host name or parent domain
	domains map[string]Site // by lower-case destination domain
}

// NewRules compiles cfg, which must be valid.
func NewRules(cfg Config) (*Rules, error) {
	base := cfg.SlowDownPatterns
	if len(base) == 0 {
		base = DefaultSlowDownPatterns
	}
	compile := func(p Policy) (Site, error) {
		s := Site{Policy: p}
		var err error
		if s.rate, err = ParseRate(p.MaxMessageRate); err != nil {
			return s, fmt.Errorf("shaping: max_message_rate %w", err)
		}
		if s.connRate, err = ParseRate(p.MaxConnectionRate); err != nil {
			return s, fmt.Errorf("shaping: max_connection_rate %w", err)
		}
		for _, pat := range append(append([]string(nil), base...), p.SlowDownPatterns...) {
			re, err := regexp.Compile("(?i)" + pat)
			if err != nil {
				return s, fmt.Errorf("shaping: pattern %q: %w", pat, err)
			}
			s.slow = append(s.slow, re)
		}
		return s, nil
	}
	r := &Rules{sites: map[string]Site{}, domains: map[string]Site{}}
	var err error
	if r.def, err = compile(Policy{}.over(cfg.Default)); err != nil {
		return nil, err
	}
	for name, p := range cfg.Sites {
		if r.sites[normal(name)], err = compile(r.def.Policy.over(p)); err != nil {
			return nil, err
		}
	}
	for name, p := range cfg.Domains {
		if r.domains[normal(name)], err = compile(r.def.Policy.over(p)); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func normal(name string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(name), "."))
}

// From is the site s as seen from source address source (per_source
// shaping): its own name, key and budget, the same policy.
func (s Site) From(source string) Site {
	s.Name += "@" + source
	s.Key = wire.SiteKey(s.Name)
	return s
}

// Site returns the site of a job to domain whose route has the site mxSite.
func (r *Rules) Site(domain, mxSite string) Site {
	domain = normal(domain)
	if s, ok := r.domains[domain]; ok {
		s.Name = "domain:" + domain
		s.Key = wire.SiteKey(s.Name)
		return s
	}
	s := r.def
	best := -1
	for _, host := range strings.Split(mxSite, ",") {
		// The host itself, then each parent domain: "a.b.google.com",
		// "b.google.com", "google.com", "com".
		for h := normal(host); h != ""; {
			if o, ok := r.sites[h]; ok && len(h) > best {
				s, best = o, len(h)
			}
			i := strings.IndexByte(h, '.')
			if i < 0 {
				break
			}
			h = h[i+1:]
		}
	}
	s.Name = mxSite
	s.Key = wire.SiteKey(mxSite)
	return s
}
