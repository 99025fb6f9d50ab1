package scheduler

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/scheduler/policy"
	"github.com/sluice-mta/sluice/services/config"
)

func TestDefaultIsValid(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if r := c.Scheduler.Retry; r.Min != 300*time.Second || r.Max != 4000*time.Second || r.Jitter != 0.2 {
		t.Errorf("default retry %+v, want Postfix's 300s..4000s with 0.2 jitter", r)
	}
}

func TestLoadFile(t *testing.T) {
	c := Default()
	t.Setenv("SLUICE_SCHEDULER_RETRY_MIN", "90s")
	if err := config.Load(filepath.Join("testdata", "sluice.yaml"), &c); err != nil {
		t.Fatal(err)
	}
	s := c.Scheduler
	if s.Retry.Min != 90*time.Second || s.Retry.Max != time.Hour || s.Retry.Jitter != 0.1 {
		t.Errorf("retry %+v (min from the environment)", s.Retry)
	}
	want := policy.Rules{
		{Sender: "alerts@example.com", Class: "high"},
		{SenderDomain: "news.example.com", Class: "bulk"},
		{RecipientDomain: "slow.example", SenderDomain: "example.com", Class: "bulk"},
	}
	if len(s.PriorityRules) != len(want) {
		t.Fatalf("rules %+v", s.PriorityRules)
	}
	for i := range want {
		if s.PriorityRules[i] != want[i] {
			t.Errorf("rule %d: %+v, want %+v", i, s.PriorityRules[i], want[i])
		}
	}
	if s.Concurrency != 16 || s.Batch != 128 || s.MetricsListen != "127.0.0.1:9202" || s.LogLevel != "debug" || s.ShutdownTimeout != 5*time.Second {
		t.Errorf("settings %+v", s)
	}
	if c.Queue.Lifetime != 72*time.Hour || c.Queue.Replicas != 3 || c.NATS.URL != "nats://10.0.0.1:4222" {
		t.Errorf("shared sections %+v %+v", c.Queue, c.NATS)
	}
}

func TestValidateNamesField(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Settings)
		field  string
	}{
		{"min zero", func(s *Settings) { s.Retry.Min = 0 }, "scheduler.retry.min:"},
		{"max below min", func(s *Settings) { s.Retry.Max = s.Retry.Min - time.Second }, "scheduler.retry.max:"},
		{"jitter one", func(s *Settings) { s.Retry.Jitter = 1 }, "scheduler.retry.jitter:"},
		{"jitter negative", func(s *Settings) { s.Retry.Jitter = -0.5 }, "scheduler.retry.jitter:"},
		{"unknown class", func(s *Settings) {
			s.PriorityRules = policy.Rules{{SenderDomain: "a.test", Class: "bulk"}, {SenderDomain: "b.test", Class: "urgent"}}
		}, "scheduler.priority_rules[1].class:"},
		{"rule without match", func(s *Settings) { s.PriorityRules = policy.Rules{{Class: "high"}} }, "scheduler.priority_rules[0]:"},
		{"concurrency", func(s *Settings) { s.Concurrency = 0 }, "scheduler.concurrency:"},
		{"batch", func(s *Settings) { s.Batch = 0 }, "scheduler.batch:"},
		{"shutdown timeout", func(s *Settings) { s.ShutdownTimeout = 0 }, "scheduler.shutdown_timeout:"},
		{"metrics listen", func(s *Settings) { s.MetricsListen = "nowhere" }, "scheduler.metrics_listen:"},
		{"log level", func(s *Settings) { s.LogLevel = "loud" }, "scheduler.log_level:"},
	}
	for _, tt := range tests {
		c := Default()
		tt.mutate(&c.Scheduler)
		err := c.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tt.field) {
			t.Errorf("%s: error %v, want one starting %q", tt.name, err, tt.field)
		}
	}
	c := Default()
	c.Queue.Lifetime = 0
	if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "queue.lifetime") {
		t.Errorf("queue section not validated: %v", err)
	}
}
