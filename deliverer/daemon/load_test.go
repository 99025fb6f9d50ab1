package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/deliverer/shaping"
	"github.com/sluice-mta/sluice/deliverer/worker"
	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/services/dnstest"
	"github.com/sluice-mta/sluice/services/lifecycle"
	"github.com/sluice-mta/sluice/services/natstest"
)

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

const shapingFile = `default:
  max_connections: 15
  initial_connections: 4
lease_ttl: 9s
sites:
  google.com:
    max_connections: 10
    initial_connections: 3
    slow_down_patterns: ['file-pattern']
  yahoodns.net:
    max_connections: 6
domains:
  tiny.example: {max_connections: 2}
`

// TestLoadShapingFile: deliverer.shaping.file (relative to the
// configuration file) lies under the section: the section wins key by key,
// a site both name is merged field by field, and what neither sets keeps
// its default.
func TestLoadShapingFile(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "providers.yaml"), shapingFile)
	conf := filepath.Join(dir, "sluice.yaml")
	write(t, conf, `deliverer:
  dns_server: 127.0.0.1:53
  shaping:
    file: providers.yaml
    default: {max_connections: 30}
    sites:
      google.com: {max_messages_per_connection: 7, slow_down_patterns: ['inline-pattern']}
    domains:
      small.example: {max_connections: 1}
`)
	cfg, err := Load(conf)
	if err != nil {
		t.Fatal(err)
	}
	sh := cfg.Deliverer.Shaping
	if sh.File != filepath.Join(dir, "providers.yaml") {
		t.Errorf("file %q, want it resolved against the configuration's directory", sh.File)
	}
	if sh.LeaseTTL != 9*time.Second || sh.BusyDelay != 500*time.Millisecond {
		t.Errorf("lease_ttl %s (file: 9s), busy_delay %s (default: 500ms)", sh.LeaseTTL, sh.BusyDelay)
	}
	r, err := shaping.NewRules(sh)
	if err != nil {
		t.Fatal(err)
	}
	def := r.Site("example.org", "mx.example.org").Policy
	if def.MaxConnections != 30 || def.InitialConnections != 4 || def.SuspendFor != time.Minute {
		t.Errorf("default policy %+v, want max 30 (section), initial 4 (file), suspend 1m (default)", def)
	}
	g := r.Site("gmail.com", "alt1.gmail-smtp-in.l.google.com,gmail-smtp-in.l.google.com").Policy
	if g.MaxConnections != 10 || g.InitialConnections != 3 || g.MaxMessagesPerConnection != 7 ||
		!slices.Equal(g.SlowDownPatterns, []string{"file-pattern", "inline-pattern"}) {
		t.Errorf("gmail site %+v, want max 10 and initial 3 (file), 7 messages per connection (section), both patterns", g)
	}
	if y := r.Site("yahoo.com", "mta5.am0.yahoodns.net").Policy; y.MaxConnections != 6 {
		t.Errorf("yahoo site (file only) %+v", y)
	}
	tiny := r.Site("tiny.example", "mx.shared.example")
	small := r.Site("small.example", "mx.shared.example")
	if tiny.Name != "domain:tiny.example" || tiny.Policy.MaxConnections != 2 ||
		small.Name != "domain:small.example" || small.Policy.MaxConnections != 1 {
		t.Errorf("domain overrides: file's %s %+v, section's %s %+v", tiny.Name, tiny.Policy, small.Name, small.Policy)
	}

	// The file's limits still hold the section to its own validation.
	write(t, conf, "deliverer:\n  dns_server: 127.0.0.1:53\n  shaping:\n    file: providers.yaml\n    sites:\n      google.com: {initial_connections: 12}\n")
	if _, err := Load(conf); err == nil || !strings.Contains(err.Error(), "deliverer.shaping.sites.google.com.initial_connections: 12 is more than max_connections 10") {
		t.Errorf("merged site above its limit: %v", err)
	}
}

// TestLoadShapingFileErrors: an unknown key in the shaping file is an error
// naming the file, the key and its line; a missing file is an error.
func TestLoadShapingFileErrors(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "sluice.yaml")
	write(t, conf, "deliverer:\n  dns_server: 127.0.0.1:53\n  shaping: {file: providers.yaml}\n")
	if _, err := Load(conf); err == nil || !strings.Contains(err.Error(), "providers.yaml") {
		t.Errorf("missing file: %v", err)
	}
	write(t, filepath.Join(dir, "providers.yaml"), "sites:\n  google.com:\n    max_connection: 5\n")
	_, err := Load(conf)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "providers.yaml")) ||
		!strings.Contains(err.Error(), `line 3: unknown key "max_connection" in sites.google.com`) {
		t.Errorf("misspelt key: %v", err)
	}
}

// TestReloadReadsShapingFile: Load is what SIGHUP calls (WithReload in
// cmd/sluice-deliverer), and it reads the shaping file again: a changed
// file changes the policy; a broken one is an error, so the reload keeps
// the shaping in force.
func TestReloadReadsShapingFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "providers.yaml")
	write(t, file, shapingFile)
	conf := filepath.Join(dir, "sluice.yaml")
	write(t, conf, "deliverer:\n  dns_server: 127.0.0.1:53\n  shaping: {file: "+file+"}\n")
	site := func() shaping.Policy {
		t.Helper()
		cfg, err := Load(conf)
		if err != nil {
			t.Fatal(err)
		}
		r, err := shaping.NewRules(cfg.Deliverer.Shaping)
		if err != nil {
			t.Fatal(err)
		}
		return r.Site("gmail.com", "gmail-smtp-in.l.google.com").Policy
	}
	if p := site(); p.MaxConnections != 10 {
		t.Fatalf("before: %+v", p)
	}
	write(t, file, strings.Replace(shapingFile, "max_connections: 10", "max_connections: 4", 1))
	if p := site(); p.MaxConnections != 4 || p.InitialConnections != 3 {
		t.Errorf("after the file changed: %+v, want max 4", p)
	}
	write(t, file, "sites: [\n")
	if _, err := Load(conf); err == nil {
		t.Error("a broken file reloaded without error")
	}
}

// TestHangupReloadsShapingFile runs a deliverer as its main does, with
// WithReload(Load): after its shaping file changes, a SIGHUP puts the new
// limits in force, as `sluice shaping show` (the admin API) reports them.
func TestHangupReloadsShapingFile(t *testing.T) {
	// The test's own handler first: a SIGHUP that arrived before Run's
	// would otherwise end the test process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	ns := natstest.Start(t)
	dns := dnstest.Start(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "providers.yaml")
	write(t, file, "sites:\n  limited.test: {max_connections: 7, initial_connections: 2}\n")
	conf := filepath.Join(dir, "sluice.yaml")
	write(t, conf, fmt.Sprintf("nats: {url: %q}\ndeliverer:\n  hostname: deliverer.test\n  instance: reload-test\n  dns_server: %q\n"+
		"  metrics_listen: \"\"\n  shaping: {file: providers.yaml}\n", ns.ClientURL(), dns.Addr))
	cfg, err := Load(conf)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, cfg, lifecycle.Host{LogOutput: io.Discard}, WithReload(func() (worker.Config, error) { return Load(conf) }))
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	nc, _ := ns.Connect(t)
	maxConns := func() int {
		data, _ := json.Marshal(admin.ShapingRequest{Site: "mx1.limited.test,mx2.limited.test"})
		msg, err := nc.Request(admin.ShapingPrefix+"."+admin.ShapingShow, data, 2*time.Second)
		if err != nil {
			return -1
		}
		var resp admin.ShapingResponse
		if json.Unmarshal(msg.Data, &resp) != nil || len(resp.Sites) != 1 {
			return -1
		}
		return resp.Sites[0].MaxConnections
	}
	waitFor := func(want int, what string) {
		t.Helper()
		got := -1
		for deadline := time.Now().Add(30 * time.Second); got != want; time.Sleep(50 * time.Millisecond) {
			if got = maxConns(); got != want && time.Now().After(deadline) {
				t.Fatalf("%s: max_connections %d, want %d", what, got, want)
			}
		}
	}
	waitFor(7, "from the shaping file at start")
	write(t, file, "sites:\n  limited.test: {max_connections: 3, initial_connections: 2}\n")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(3, "after the file changed and SIGHUP")
	// A broken file is refused and the limits in force stay.
	write(t, file, "sites:\n  limited.test: {max_conections: 1}\n")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	waitFor(3, "after a broken file and SIGHUP")
}
