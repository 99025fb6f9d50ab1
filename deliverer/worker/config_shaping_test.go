package worker

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/services/config"
)

// TestShapingConfig decodes the README's shaping example over the
// defaults, strictly: every key is known, overrides keep the defaults they
// do not name, and a misspelt key is an error that names it.
func TestShapingConfig(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(readme)
	i := strings.Index(doc, "```yaml\ndeliverer:\n  shaping:")
	if i < 0 {
		t.Fatal("README has no deliverer.shaping example")
	}
	example := doc[i+len("```yaml\n"):]
	example = example[:strings.Index(example, "```")]
	cfg := Default()
	if err := config.Decode([]byte(example), &cfg); err != nil {
		t.Fatalf("README example: %v", err)
	}
	sh := cfg.Deliverer.Shaping
	if sh.Default.MaxConnections != 20 || sh.Default.InitialConnections != 5 || sh.Default.SuspendFor != time.Minute ||
		sh.LeaseTTL != 6*time.Second || sh.BusyDelay != 500*time.Millisecond || sh.MaxWait != 5*time.Minute {
		t.Errorf("decoded %+v", sh)
	}
	if sh.Sites["outlook.com"].MaxConnections != 10 || sh.Sites["outlook.com"].SuspendFor != 5*time.Minute ||
		sh.Domains["small-isp.example"].MaxConnections != 2 {
		t.Errorf("overrides %+v %+v", sh.Sites, sh.Domains)
	}
	if err := sh.Validate(); err != nil {
		t.Errorf("README example: %v", err)
	}
	bad := Default()
	err = config.Decode([]byte("deliverer:\n  shaping:\n    default:\n      max_conections: 3\n"), &bad)
	if err == nil || !strings.Contains(err.Error(), "max_conections") {
		t.Errorf("misspelt key: %v", err)
	}
}

// TestSourceAddressConfig: deliverer.source_address must be an IP address,
// and shaping.per_source needs one.
func TestSourceAddressConfig(t *testing.T) {
	for _, c := range []struct {
		yaml, err string
	}{
		{"deliverer:\n  source_address: 192.0.2.10\n  shaping: {per_source: true}\n", ""},
		{"deliverer:\n  source_address: 2001:db8::25\n", ""},
		{"deliverer:\n  source_address: mail.example.com\n", `deliverer.source_address: "mail.example.com" is not an IP address`},
		{"deliverer:\n  shaping: {per_source: true}\n", "deliverer.shaping.per_source: needs deliverer.source_address"},
	} {
		cfg := Default()
		if err := config.Decode([]byte(c.yaml), &cfg); err != nil {
			t.Fatalf("%q: %v", c.yaml, err)
		}
		cfg.Deliverer.Hostname = "mail.example.com"
		err := cfg.Deliverer.Validate()
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != c.err {
			t.Errorf("%q: Validate() = %q, want %q", c.yaml, got, c.err)
		}
	}
}
