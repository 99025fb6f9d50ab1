package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type testConfig struct {
	NATS  NATS  `yaml:"nats"`
	Queue Queue `yaml:"queue"`
	Other struct {
		Names []string      `yaml:"names" env:"T_NAMES"`
		Wait  time.Duration `yaml:"wait" env:"T_WAIT"`
	} `yaml:"other"`
}

func (c *testConfig) Validate() error {
	if err := c.NATS.Validate(); err != nil {
		return err
	}
	return c.Queue.Validate()
}

func TestLoadFileThenEnv(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sluice.yaml")
	os.WriteFile(path, []byte("nats:\n  url: nats://a:1\nqueue:\n  lifetime: 10s\nother:\n  wait: 3s\ndeliverer:\n  x: 1\n"), 0o600)
	cfg := &testConfig{NATS: DefaultNATS(), Queue: DefaultQueue()}
	t.Setenv("SLUICE_NATS_URL", "nats://b:2")
	t.Setenv("T_NAMES", "x, y,,z")
	if err := Load(path, cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.NATS.URL != "nats://b:2" {
		t.Errorf("env override lost: %q", cfg.NATS.URL)
	}
	if cfg.Queue.Lifetime != 10*time.Second || cfg.Other.Wait != 3*time.Second {
		t.Errorf("file values lost: %v %v", cfg.Queue.Lifetime, cfg.Other.Wait)
	}
	if cfg.NATS.RequestTimeout != 5*time.Second {
		t.Errorf("default lost: %v", cfg.NATS.RequestTimeout)
	}
	if strings.Join(cfg.Other.Names, "|") != "x|y|z" {
		t.Errorf("list = %q", cfg.Other.Names)
	}
}

func TestErrorsNameTheField(t *testing.T) {
	for _, c := range []struct {
		env, want string
	}{
		{"SLUICE_QUEUE_REPLICAS=2", "queue.replicas"},
		{"SLUICE_QUEUE_LIFETIME=10ms", "queue.lifetime"},
		{"SLUICE_QUEUE_LIFETIME=soon", "SLUICE_QUEUE_LIFETIME"},
		{"SLUICE_NATS_URL=", "nats.url"},
	} {
		k, v, _ := strings.Cut(c.env, "=")
		cfg := &testConfig{NATS: DefaultNATS(), Queue: DefaultQueue()}
		err := ApplyEnv(cfg, func(s string) (string, bool) {
			if s == k {
				return v, true
			}
			return "", false
		})
		if err == nil {
			err = cfg.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v does not name %s", c.env, err, c.want)
		}
	}
}

func TestMissingFile(t *testing.T) {
	err := Load(filepath.Join(t.TempDir(), "nope.yaml"), &testConfig{NATS: DefaultNATS(), Queue: DefaultQueue()})
	if err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Fatalf("want an error naming the file, got %v", err)
	}
}
