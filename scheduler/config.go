package scheduler

import (
	"errors"
	"fmt"
	"time"

	"github.com/sluice-mta/sluice/scheduler/policy"
	"github.com/sluice-mta/sluice/services/config"
)

// Config is the scheduler binary's view of the system's configuration file:
// the shared nats and queue sections and its own scheduler section.
type Config struct {
	NATS      config.NATS  `yaml:"nats"`
	Queue     config.Queue `yaml:"queue"`
	Scheduler Settings     `yaml:"scheduler"`
}

// Settings is the scheduler section.
type Settings struct {
	// Retry is the retry schedule of temporarily failed deliveries.
	Retry RetrySettings `yaml:"retry"`
	// PriorityRules assign delivery classes by sender and destination; the
	// first matching rule wins and rules win over MT-PRIORITY.
	PriorityRules policy.Rules `yaml:"priority_rules"`
	// Concurrency is how many messages, and separately how many results,
	// are processed at once. Each one waits mostly on JetStream round trips,
	// so this is well above the number of cores.
	Concurrency int `yaml:"concurrency" env:"SLUICE_SCHEDULER_CONCURRENCY"`
	// Batch is how many messages a consumer pulls from JetStream per request.
	Batch int `yaml:"batch" env:"SLUICE_SCHEDULER_BATCH"`
	// ShutdownTimeout bounds how long Close waits for in-flight work.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout" env:"SLUICE_SCHEDULER_SHUTDOWN_TIMEOUT"`
	// Instance names this scheduler in the admin API; main defaults it to
	// "<hostname>-<pid>".
	Instance string `yaml:"instance" env:"SLUICE_SCHEDULER_INSTANCE"`
	// DelayWarning is how long a message may wait in the queue before its
	// sender gets a "delayed" DSN (RFC 3464 Action: delayed), once, for the
	// recipients still being retried whose NOTIFY allows it (Postfix's
	// delay_warning_time). 0 sends none.
	DelayWarning time.Duration `yaml:"delay_warning" env:"SLUICE_SCHEDULER_DELAY_WARNING"`
	// StatsWindow is the recent window of the delivery delay percentiles
	// `sluice queue stats` shows.
	StatsWindow time.Duration `yaml:"stats_window" env:"SLUICE_SCHEDULER_STATS_WINDOW"`

	config.Telemetry `yaml:",inline"`
}

// RetrySettings is policy.Retry in the configuration file.
type RetrySettings struct {
	Min    time.Duration `yaml:"min" env:"SLUICE_SCHEDULER_RETRY_MIN"`
	Max    time.Duration `yaml:"max" env:"SLUICE_SCHEDULER_RETRY_MAX"`
	Jitter float64       `yaml:"jitter" env:"SLUICE_SCHEDULER_RETRY_JITTER"`
}

// Policy returns the retry schedule.
func (r RetrySettings) Policy() policy.Retry {
	return policy.Retry{Min: r.Min, Max: r.Max, Jitter: r.Jitter}
}

// DefaultSettings returns the defaults of the scheduler section.
func DefaultSettings() Settings {
	r := policy.DefaultRetry()
	return Settings{
		Retry:           RetrySettings{Min: r.Min, Max: r.Max, Jitter: r.Jitter},
		Concurrency:     64,
		Batch:           256,
		ShutdownTimeout: 5 * time.Second,
		StatsWindow:     time.Hour,
		DelayWarning:    4 * time.Hour,
		Telemetry:       config.Telemetry{MetricsListen: "127.0.0.1:9102", LogLevel: "info"},
	}
}

// Default returns the whole default configuration.
func Default() Config {
	return Config{NATS: config.DefaultNATS(), Queue: config.DefaultQueue(), Scheduler: DefaultSettings()}
}

// Validate implements config.Validator.
func (c *Config) Validate() error {
	if err := c.NATS.Validate(); err != nil {
		return err
	}
	if err := c.Queue.Validate(); err != nil {
		return err
	}
	return c.Scheduler.Validate()
}

// Validate reports the first bad field as "scheduler.<field>".
func (s Settings) Validate() error {
	if s.DelayWarning < 0 {
		return fmt.Errorf("scheduler.delay_warning: %s, want 0 (off) or a positive duration", s.DelayWarning)
	}
	if err := s.Retry.Policy().Validate(); err != nil {
		return fmt.Errorf("scheduler.%w", err)
	}
	if err := s.PriorityRules.Validate(); err != nil {
		return fmt.Errorf("scheduler.%w", err)
	}
	if s.Concurrency < 1 || s.Concurrency > 4096 {
		return fmt.Errorf("scheduler.concurrency: %d, want 1..4096", s.Concurrency)
	}
	if s.Batch < 1 || s.Batch > 4096 {
		return fmt.Errorf("scheduler.batch: %d, want 1..4096", s.Batch)
	}
	if s.ShutdownTimeout <= 0 {
		return errors.New("scheduler.shutdown_timeout: must be positive")
	}
	if s.StatsWindow < time.Minute {
		return fmt.Errorf("scheduler.stats_window: %s, want at least 1m", s.StatsWindow)
	}
	if err := s.Telemetry.Validate(); err != nil {
		return fmt.Errorf("scheduler.%w", err)
	}
	return nil
}
