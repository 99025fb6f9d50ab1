// Package config loads a service's typed configuration from one YAML file and
// environment overrides, and holds the parts every service shares (NATS,
// telemetry, queue layout). Each service declares its own struct, embeds these
// parts, and validates the whole once in main; library code never reads the
// environment.
package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Validator is implemented by every configuration struct.
type Validator interface {
	// Validate reports the first invalid field by its YAML path.
	Validate() error
}

// Load reads the YAML file at path (if path is not empty) into cfg, which
// must already hold the defaults, then applies environment overrides for
// every field tagged `env:"NAME"`, then validates. Decoding is strict: a key
// cfg does not have is an error naming the key and its line. The top-level
// Sections of other services are accepted unread, so that one file can
// configure the whole system.
func Load(path string, cfg Validator) error {
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("config: %w", err)
		}
		if err := Decode(b, cfg); err != nil {
			return fmt.Errorf("config %s: %w", path, err)
		}
	}
	if err := applyEnv(reflect.ValueOf(cfg), os.LookupEnv); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

// Decode decodes YAML document b into cfg strictly: an unknown key is an
// error naming it and its line, with the closest known key when one is
// near.
func Decode(b []byte, cfg any) error {
	return decode(b, cfg, true)
}

// DecodeSection decodes YAML document b, a file that holds the content of
// one section only (the shaping file of deliverer.shaping.file), as
// strictly as Decode, and without accepting the names of Sections at its
// top level: there they would be keys of the section, misplaced.
func DecodeSection(b []byte, cfg any) error {
	return decode(b, cfg, false)
}

func decode(b []byte, cfg any, top bool) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return err
	}
	if err := checkKeys(&doc, cfg, top); err != nil {
		return err
	}
	if doc.Kind == 0 {
		return nil // an empty file: the defaults
	}
	return doc.Decode(cfg)
}

// ApplyEnv applies overrides from lookup to fields tagged `env`. It is exported
// for tests, which pass their own lookup function.
func ApplyEnv(cfg any, lookup func(string) (string, bool)) error {
	return applyEnv(reflect.ValueOf(cfg), lookup)
}

var durationType = reflect.TypeOf(time.Duration(0))

func applyEnv(v reflect.Value, lookup func(string) (string, bool)) error {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return nil
		}
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return nil
	}
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		fv := v.Field(i)
		if !f.IsExported() {
			continue
		}
		name := f.Tag.Get("env")
		if name == "" {
			if fv.Kind() == reflect.Struct || fv.Kind() == reflect.Pointer {
				if err := applyEnv(fv.Addr(), lookup); err != nil {
					return err
				}
			}
			continue
		}
		s, ok := lookup(name)
		if !ok {
			continue
		}
		if err := setFromString(fv, s); err != nil {
			return fmt.Errorf("config: environment %s=%q: %w", name, s, err)
		}
	}
	return nil
}

func setFromString(fv reflect.Value, s string) error {
	if fv.Type() == durationType {
		d, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		fv.SetInt(int64(d))
		return nil
	}
	switch fv.Kind() {
	case reflect.String:
		fv.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return err
		}
		fv.SetBool(b)
	case reflect.Int, reflect.Int64, reflect.Int32:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return err
		}
		fv.SetInt(n)
	case reflect.Uint, reflect.Uint64, reflect.Uint32:
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return err
		}
		fv.SetUint(n)
	case reflect.Float64:
		n, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return err
		}
		fv.SetFloat(n)
	case reflect.Slice:
		if fv.Type().Elem().Kind() != reflect.String {
			return errors.New("unsupported list type")
		}
		var parts []string
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				parts = append(parts, p)
			}
		}
		fv.Set(reflect.ValueOf(parts))
	default:
		return fmt.Errorf("unsupported type %s", fv.Type())
	}
	return nil
}

// NATS says how a service reaches the NATS system.
type NATS struct {
	// URL is a comma-separated list of server URLs.
	URL string `yaml:"url" env:"SLUICE_NATS_URL"`
	// Creds is a NATS credentials file (JWT + NKey seed).
	Creds string `yaml:"creds" env:"SLUICE_NATS_CREDS"`
	// NKeySeedFile authenticates with an NKey (a file holding the user's
	// seed, "SU..."), for servers configured with nkey users.
	NKeySeedFile string `yaml:"nkey_seed_file" env:"SLUICE_NATS_NKEY_SEED_FILE"`
	// User and Password authenticate with a static user.
	User     string `yaml:"user" env:"SLUICE_NATS_USER"`
	Password string `yaml:"password" env:"SLUICE_NATS_PASSWORD"`
	// CAFile, CertFile and KeyFile configure TLS to NATS.
	CAFile   string `yaml:"ca_file" env:"SLUICE_NATS_CA_FILE"`
	CertFile string `yaml:"cert_file" env:"SLUICE_NATS_CERT_FILE"`
	KeyFile  string `yaml:"key_file" env:"SLUICE_NATS_KEY_FILE"`
	// RequestTimeout bounds every JetStream API call and publish
	// acknowledgement, so a client never waits longer than this for storage.
	RequestTimeout time.Duration `yaml:"request_timeout" env:"SLUICE_NATS_REQUEST_TIMEOUT"`
	// PingInterval is how often the client checks that its server still
	// answers; after three unanswered pings it moves to another server of
	// the cluster. The NATS default (2 min) keeps a service waiting on a
	// frozen or partitioned node for up to 6 min.
	PingInterval time.Duration `yaml:"ping_interval" env:"SLUICE_NATS_PING_INTERVAL"`
}

// DefaultNATS returns the defaults: the local server of `make run`.
func DefaultNATS() NATS {
	return NATS{URL: "nats://127.0.0.1:4222", RequestTimeout: 5 * time.Second, PingInterval: 5 * time.Second}
}

// Validate implements Validator.
func (n NATS) Validate() error {
	if strings.TrimSpace(n.URL) == "" {
		return errors.New("nats.url: must not be empty")
	}
	if n.RequestTimeout <= 0 {
		return errors.New("nats.request_timeout: must be positive")
	}
	if n.PingInterval < 100*time.Millisecond {
		return errors.New("nats.ping_interval: must be at least 100ms")
	}
	if (n.CertFile == "") != (n.KeyFile == "") {
		return errors.New("nats.cert_file and nats.key_file: give both or neither")
	}
	ways := 0
	for _, v := range []string{n.Creds, n.User, n.NKeySeedFile} {
		if v != "" {
			ways++
		}
	}
	if ways > 1 {
		return errors.New("nats.creds, nats.nkey_seed_file and nats.user: give one way to authenticate, not several")
	}
	return nil
}

// Queue is the shape of the JetStream queue, shared by every service because
// every service provisions the streams it uses on start.
type Queue struct {
	// Replicas of every stream: 1 on a single node, 3 in a cluster.
	Replicas int `yaml:"replicas" env:"SLUICE_QUEUE_REPLICAS"`
	// Lifetime is how long a message may stay in the queue before it is
	// bounced (Postfix's maximal_queue_lifetime).
	Lifetime time.Duration `yaml:"lifetime" env:"SLUICE_QUEUE_LIFETIME"`
	// MaxBytes caps the message stream; when it is full the ingress answers
	// 451 4.3.0 instead of accepting mail it cannot store.
	MaxBytes int64 `yaml:"max_bytes" env:"SLUICE_QUEUE_MAX_BYTES"`
	// InlineBodyLimit is the largest body stored inline in the message; larger
	// bodies go to the object store. It must stay below the server's
	// max_payload (1 MiB by default) minus room for the envelope.
	InlineBodyLimit int `yaml:"inline_body_limit" env:"SLUICE_QUEUE_INLINE_BODY_LIMIT"`
	// EventsRetention is how long the history of every job (SLUICE_EVENTS,
	// what `sluice queue log` prints) is kept. The schedulers rebuild their
	// queue index from these events when they start, so it must be at
	// least Lifetime.
	EventsRetention time.Duration `yaml:"events_retention" env:"SLUICE_QUEUE_EVENTS_RETENTION"`
	// EventsPersist is how JetStream writes the events stream: "default"
	// writes every event to its file before acknowledging it (and fsyncs
	// it when the server syncs always), like every other stream; "async"
	// acknowledges events before they are written and flushes them in
	// batches, never fsyncing them one by one. Mail itself (messages,
	// jobs, results, bounce requests, bodies) is never affected. Empty
	// means async on a single node (replicas 1) and default otherwise;
	// JetStream supports async only without replicas, and a stream keeps
	// the mode it was created with.
	EventsPersist string `yaml:"events_persist" env:"SLUICE_QUEUE_EVENTS_PERSIST"`
	// DuplicateWindow is how long every stream remembers the message ids
	// of what was published to it, so that a publish retried after a
	// timeout, or an input handled again after a crash, is stored once.
	// Every retry loop of the services ends within a minute; a service
	// down for longer than the window while it held inputs whose outputs
	// were stored (one scheduler of one, killed and not restarted) can
	// produce a second copy of those outputs. The servers keep every id of
	// the window in memory: five ids and about 0.45 KB per message (README,
	// Performance, "Sustained load").
	DuplicateWindow time.Duration `yaml:"duplicate_window" env:"SLUICE_QUEUE_DUPLICATE_WINDOW"`
}

// MinDuplicateWindow is the shortest queue.duplicate_window: the
// deliverer tries to store a result for a minute.
const MinDuplicateWindow = time.Minute

// Events persistence modes (Queue.EventsPersist).
const (
	PersistDefault = "default"
	PersistAsync   = "async"
)

// EventsPersistMode is the effective EventsPersist: the configured mode, or
// async on a single node and default with replicas.
func (q Queue) EventsPersistMode() string {
	if q.EventsPersist != "" {
		return q.EventsPersist
	}
	if q.Replicas == 1 {
		return PersistAsync
	}
	return PersistDefault
}

// DefaultQueue returns the defaults.
func DefaultQueue() Queue {
	return Queue{Replicas: 1, Lifetime: 5 * 24 * time.Hour, MaxBytes: 0, InlineBodyLimit: 768 << 10, EventsRetention: 7 * 24 * time.Hour,
		DuplicateWindow: 2 * time.Minute}
}

// Validate implements Validator.
func (q Queue) Validate() error {
	if q.Replicas != 1 && q.Replicas != 3 && q.Replicas != 5 {
		return fmt.Errorf("queue.replicas: %d, want 1, 3 or 5", q.Replicas)
	}
	if q.Lifetime < time.Second {
		return fmt.Errorf("queue.lifetime: %s, want at least 1s", q.Lifetime)
	}
	if q.MaxBytes < 0 {
		return errors.New("queue.max_bytes: must not be negative (0 is unlimited)")
	}
	if q.InlineBodyLimit < 1024 || q.InlineBodyLimit > 900<<10 {
		return fmt.Errorf("queue.inline_body_limit: %d, want 1024..921600", q.InlineBodyLimit)
	}
	switch q.EventsPersist {
	case "", PersistDefault:
	case PersistAsync:
		if q.Replicas != 1 {
			return fmt.Errorf("queue.events_persist: async needs queue.replicas 1 (JetStream does not flush replicated streams asynchronously), have %d", q.Replicas)
		}
	default:
		return fmt.Errorf("queue.events_persist: %q, want default or async", q.EventsPersist)
	}
	if q.DuplicateWindow < MinDuplicateWindow {
		return fmt.Errorf("queue.duplicate_window: %s, want at least %s (a deliverer tries to store a result for that long, with the same message id)", q.DuplicateWindow, MinDuplicateWindow)
	}
	if q.EventsRetention < q.Lifetime {
		return fmt.Errorf("queue.events_retention: %s is shorter than queue.lifetime %s; the queue index is rebuilt from events, so they must outlive every job", q.EventsRetention, q.Lifetime)
	}
	return nil
}

// Telemetry configures logs and the metrics endpoint of one service. Traces
// are configured with the standard OTEL_* environment variables.
type Telemetry struct {
	// MetricsListen is the address of /metrics and /healthz; empty disables it.
	MetricsListen string `yaml:"metrics_listen" env:"SLUICE_METRICS_LISTEN"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level" env:"SLUICE_LOG_LEVEL"`
}

// Validate implements Validator.
func (t Telemetry) Validate() error {
	if t.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(t.MetricsListen); err != nil {
			return fmt.Errorf("metrics_listen: %q: %v", t.MetricsListen, err)
		}
	}
	switch t.LogLevel {
	case "", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level: %q, want debug, info, warn or error", t.LogLevel)
	}
	return nil
}
