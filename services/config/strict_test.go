package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type strictConfig struct {
	NATS    NATS  `yaml:"nats"`
	Queue   Queue `yaml:"queue"`
	Ingress struct {
		Listen string `yaml:"listen"`
		Routes []struct {
			Domain string `yaml:"domain"`
			Host   string `yaml:"host"`
		} `yaml:"routes"`
		Limits    map[string]struct{ Max int } `yaml:"limits"`
		Telemetry `yaml:",inline"`
	} `yaml:"ingress"`
}

func (c *strictConfig) Validate() error { return c.NATS.Validate() }

func TestDecodeStrict(t *testing.T) {
	for _, c := range []struct{ name, doc, want string }{
		{"misspelt top-level", "nats:\n  url: nats://a:1\nqeue:\n  replicas: 3\n",
			`line 3: unknown key "qeue" at the top level (did you mean "queue"?)`},
		{"misspelt in a section", "nats:\n  url: nats://a:1\n  request_timout: 30s\n",
			`line 3: unknown key "request_timout" in nats (did you mean "request_timeout"?)`},
		{"inline telemetry field misspelt", "ingress:\n  listen: :25\n  metrics_listn: :9100\n",
			`line 3: unknown key "metrics_listn" in ingress (did you mean "metrics_listen"?)`},
		{"inside a list", "ingress:\n  routes:\n    - domain: a\n      hots: b\n",
			`line 4: unknown key "hots" in ingress.routes[0] (did you mean "host"?)`},
		{"inside a map value", "ingress:\n  limits:\n    a.example:\n      max: 1\n      min: 2\n",
			`line 5: unknown key "min" in ingress.limits.a.example`},
		{"nothing near", "zzzzzzzz: 1\n", `line 1: unknown key "zzzzzzzz" at the top level (known: bouncer, deliverer, ingress, nats, queue, scheduler)`},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := &strictConfig{NATS: DefaultNATS()}
			err := Decode([]byte(c.doc), cfg)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Decode error = %v, want it to contain %q", err, c.want)
			}
		})
	}
}

func TestDecodeAcceptsOtherServicesSectionsAndMergeKeys(t *testing.T) {
	doc := "base: &b\n  listen: :2525\n"
	cfg := &strictConfig{NATS: DefaultNATS()}
	// "base" is not a section: an anchor holder at the top level is a typo
	// as far as the loader can tell.
	if err := Decode([]byte(doc), cfg); err == nil || !strings.Contains(err.Error(), `"base"`) {
		t.Fatalf("want an error naming base, got %v", err)
	}
	doc = "scheduler:\n  anything: 1\ndeliverer:\n  concurrency: 3\ningress:\n  <<: {listen: \":2526\"}\n  metrics_listen: :9100\nnats:\n  request_timeout: 30s\n"
	cfg = &strictConfig{NATS: DefaultNATS()}
	if err := Decode([]byte(doc), cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Ingress.Listen != ":2526" || cfg.Ingress.MetricsListen != ":9100" || cfg.NATS.RequestTimeout != 30*time.Second {
		t.Fatalf("decoded %+v", cfg.Ingress)
	}
}

func TestLoadNamesFileAndLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sluice.yaml")
	if err := os.WriteFile(path, []byte("nats:\n  url: nats://a:1\nqueue:\n  replica: 3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := Load(path, &strictConfig{NATS: DefaultNATS(), Queue: DefaultQueue()})
	want := "config " + path + `: line 4: unknown key "replica" in queue (did you mean "replicas"?)`
	if err == nil || err.Error() != want {
		t.Fatalf("Load error = %v, want %q", err, want)
	}
	// An empty file is the defaults.
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &strictConfig{NATS: DefaultNATS(), Queue: DefaultQueue()}
	if err := Load(path, cfg); err != nil || cfg.NATS.URL != DefaultNATS().URL {
		t.Fatalf("empty file: %v, %q", err, cfg.NATS.URL)
	}
}
