package shaping

import (
	"fmt"
	"maps"
	"os"

	"github.com/sluice-mta/sluice/services/config"
)

// ReadFile reads the shaping file at path (Config.File): the defaults,
// with the file's keys over them, decoded strictly (a key Config has not
// is an error naming it and its line) and validated.
func ReadFile(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("deliverer.shaping.file: %w", err)
	}
	c := DefaultConfig()
	if err := config.DecodeSection(b, &c); err != nil {
		return Config{}, fmt.Errorf("deliverer.shaping.file %s: %w", path, err)
	}
	if c.File != "" {
		return Config{}, fmt.Errorf("deliverer.shaping.file %s: file: a shaping file cannot name another", path)
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("deliverer.shaping.file %s: %w", path, err)
	}
	return c, nil
}

// Base is the configuration the inline section is decoded over when it
// names file f: f without its sites and domains, which Under adds after
// the decode, entry by entry, so that an inline entry overrides the
// file's field by field instead of replacing it whole.
func (f Config) Base() Config {
	f.Sites, f.Domains = nil, nil
	return f
}

// Under returns inline, the section decoded over f.Base(), with the sites
// and domains of f under its own.
func (f Config) Under(inline Config) Config {
	inline.Sites = under(f.Sites, inline.Sites)
	inline.Domains = under(f.Domains, inline.Domains)
	return inline
}

func under(file, inline map[string]Policy) map[string]Policy {
	if len(file) == 0 {
		return inline
	}
	out := maps.Clone(file)
	for name, p := range inline {
		// Names match as NewRules reads them: "Google.com." is google.com.
		for k, fp := range out {
			if normal(k) == normal(name) {
				p = fp.fill(p)
				delete(out, k)
			}
		}
		out[name] = p
	}
	return out
}
